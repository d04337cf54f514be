"""Graph passes (constant folding, DCE, CSE), fusion into kernels, and static memory planning."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ubique as ub
from ubique.build import compile_program
from ubique.compiler import passes
from ubique.compiler.fusion import fuse
from ubique.compiler.memory_plan import ALIGN, plan_memory
from ubique.compiler.pipeline import optimize_graph
from ubique.ir import Graph, TensorType
from ubique.ir.dtypes import DType
from ubique.ir.verify import verify_graph


def f32(*shape):
    return TensorType(shape, DType.float32)


def ops_of(graph_ir: str) -> list[str]:
    """Op names in printed graph IR, in order."""
    out = []
    for line in graph_ir.splitlines():
        if " = " in line:
            out.append(line.split(" = ", 1)[1].split("(", 1)[0])
    return out


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# constant folding
# ---------------------------------------------------------------------------------------------
def test_constant_folding_removes_ops_on_constants():
    g = Graph("cf")
    x = g.add_input(f32(4), "x")
    c = g.constant(np.array([1.0, 4.0, 9.0, 16.0], np.float32))
    s = g.op("sqrt", c)
    t = g.op("mul", s, g.constant(np.float32(2.0)))
    g.outputs = [g.op("add", x, t)]
    program = compile_program(g)
    assert ops_of(program.graph_ir) == ["constant", "add"], program.graph_ir
    assert program.num_kernels == 1
    x_val = rand(4)
    np.testing.assert_array_equal(ub.build(g).run(x_val)[0], x_val + np.array([2, 4, 6, 8], np.float32))


def test_constant_folding_of_constant_only_graph():
    g = Graph("only")
    c = g.constant(np.arange(6, dtype=np.int32).reshape(2, 3))
    g.outputs = [g.op("sum", g.op("mul", c, c), axes=(1,))]
    opt = optimize_graph(g)
    assert [n.op for n in opt.nodes] == ["constant", "identity"]  # folded; output copied
    np.testing.assert_array_equal(opt.nodes[0].attrs["value"], [5, 50])
    (out,) = ub.build(g).run()
    assert out.dtype == np.int64  # sum of int32 accumulates in int64 (documented)
    np.testing.assert_array_equal(out, [5, 50])


def test_constant_folding_keeps_dtype_and_shape():
    g = Graph("dt")
    x = g.add_input(TensorType((2, 2), "f16"), "x")
    c = g.op("cast", g.constant(np.array([[1, 2], [3, 4]], np.int8)), dtype="f16")
    g.outputs = [g.op("add", x, c)]
    opt = optimize_graph(g)
    const = [n for n in opt.nodes if n.op == "constant"]
    assert len(const) == 1 and "cast" not in [n.op for n in opt.nodes]
    assert const[0].attrs["value"].dtype == np.float16 and const[0].output.type == TensorType((2, 2), "f16")
    xv = np.ones((2, 2), np.float16)
    np.testing.assert_array_equal(ub.build(g).run(xv)[0], xv + np.array([[1, 2], [3, 4]], np.float16))


def test_constant_folding_does_not_inflate_weights():
    """broadcast_to of a scalar to a big shape is left in the graph (not folded into a huge weight)."""
    g = Graph("big")
    x = g.add_input(f32(512, 512), "x")
    b = g.op("broadcast_to", g.constant(np.float32(3.0)), shape=(512, 512))
    g.outputs = [g.op("mul", x, b)]
    opt = optimize_graph(g)
    assert "broadcast_to" in [n.op for n in opt.nodes]
    assert all(n.attrs["value"].size == 1 for n in opt.nodes if n.op == "constant")
    xv = rand((512, 512))
    np.testing.assert_array_equal(ub.build(g).run(xv)[0], xv * np.float32(3))


def test_constant_folding_inside_traced_function():
    """mean decomposes into sum / count: the count is a constant and x.mean() stays right."""
    @ub.jit
    def f(x):
        return x.mean(axis=1) + 1.0

    xv = rand((3, 8))
    low = f.lower(xv)
    assert "mean" not in ops_of(low.graph_ir)
    np.testing.assert_allclose(f(xv), xv.mean(axis=1) + 1, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# dead code elimination
# ---------------------------------------------------------------------------------------------
def test_dce_removes_unused_nodes_in_traced_function():
    @ub.jit
    def f(x):
        unused = ub.exp(x) @ x.T      # noqa: F841  never reaches the output
        ub.sum(ub.sin(x))             # result dropped
        return ub.tanh(x) + 1.0

    xv = rand((4, 4))
    low = f.lower(xv)
    ops = ops_of(low.graph_ir)
    assert "exp" not in ops and "matmul" not in ops and "sin" not in ops and "sum" not in ops
    assert "tanh" in ops and low.num_kernels == 1
    np.testing.assert_allclose(f(xv), np.tanh(xv) + 1, rtol=1e-6)


def test_dce_pass_on_graph():
    g = Graph("dce")
    x = g.add_input(f32(3), "x")
    dead = g.op("exp", x)
    g.op("neg", dead)
    live = g.op("abs", x)
    g.outputs = [live]
    out = passes.dead_code_elimination(g)
    verify_graph(out)
    assert [n.op for n in out.nodes] == ["abs"]
    assert [v.name for v in out.inputs] == ["x"]  # unused inputs stay: they are the signature
    g2 = Graph("keep")
    y = g2.add_input(f32(3), "y")
    g2.outputs = [g2.op("exp", y)]
    assert passes.dead_code_elimination(g2) is g2  # nothing to do: same graph


# ---------------------------------------------------------------------------------------------
# common subexpression elimination
# ---------------------------------------------------------------------------------------------
def test_cse_merges_duplicate_subexpressions():
    @ub.jit
    def f(x):
        a = ub.exp(x) * 2.0
        b = ub.exp(x) * 2.0
        return a + b + (x.sum(axis=0) + x.sum(axis=0))

    xv = rand((5, 6))
    low = f.lower(xv)
    ops = ops_of(low.graph_ir)
    assert ops.count("exp") == 1 and ops.count("sum") == 1
    assert ops.count("constant") == 1  # the two weak 2.0 constants are one
    np.testing.assert_allclose(f(xv), 4 * np.exp(xv) + 2 * xv.sum(axis=0), rtol=1e-5)


def test_cse_keeps_different_attributes_and_constants_apart():
    g = Graph("cse")
    x = g.add_input(f32(2, 3), "x")
    s0, s1 = g.op("sum", x, axes=(0,)), g.op("sum", x, axes=(1,))
    bits = np.array([1065353216], np.int32)          # the bit pattern of 1.0f
    c_int, c_flt = g.constant(bits), g.constant(bits.view(np.float32))
    c23, c32 = g.constant(np.zeros((2, 3), np.float32)), g.constant(np.zeros((3, 2), np.float32))
    g.outputs = [s0, s1, c_int, c_flt, c23, c32]
    out = passes.common_subexpression_elimination(g)
    assert len(out.nodes) == len(g.nodes)
    assert len({v.id for v in out.outputs}) == 6
    results = ub.build(g).run(np.ones((2, 3), np.float32))
    assert results[2].dtype == np.int32 and results[2][0] == 1065353216
    assert results[3].dtype == np.float32 and results[3][0] == 1.0
    assert results[4].shape == (2, 3) and results[5].shape == (3, 2)


def test_cse_merged_output_is_returned_twice():
    @ub.jit
    def f(x):
        return ub.exp(x), ub.exp(x)

    xv = rand((3,))
    a, b = f(xv)
    np.testing.assert_allclose(a, np.exp(xv), rtol=1e-6)
    np.testing.assert_array_equal(a, b)
    assert a is not b and not np.shares_memory(a, b)
    a[0] = 123.0
    assert b[0] != 123.0


# ---------------------------------------------------------------------------------------------
# fusion
# ---------------------------------------------------------------------------------------------
def test_fusion_matmul_bias_relu_is_one_kernel():
    @ub.jit
    def f(x, w, b):
        return ub.relu(x @ w + b)

    args = (rand((8, 16)), rand((16, 32), 1), rand((32,), 2))
    low = f.lower(*args)
    assert low.num_kernels == 1
    np.testing.assert_allclose(f(*args), np.maximum(args[0] @ args[1] + args[2], 0), rtol=1e-5, atol=1e-5)


def test_fusion_elementwise_chain_is_one_kernel():
    @ub.jit
    def f(a, b, c):
        y = ub.exp(a) * b - c
        y = ub.tanh(y) / (c + 3.0)
        return ub.maximum(ub.sigmoid(y), 0.25 * a)

    args = (rand((4, 1, 8)), rand((3, 8), 1), rand((8,), 2))
    low = f.lower(*args)
    assert low.num_kernels == 1
    a, b, c = args
    y = np.exp(a) * b - c
    y = np.tanh(y) / (c + 3)
    np.testing.assert_allclose(f(*args), np.maximum(1 / (1 + np.exp(-y)), 0.25 * a), rtol=1e-5, atol=1e-6)


def test_fusion_injective_ops_fuse_into_consumers():
    @ub.jit
    def f(x):
        return ub.exp(x.T[1:, ::2].reshape(-1)) + 1.0

    xv = rand((6, 5))
    low = f.lower(xv)
    assert low.num_kernels == 1
    np.testing.assert_allclose(f(xv), np.exp(xv.T[1:, ::2].reshape(-1)) + 1, rtol=1e-6)


def test_fusion_stops_at_value_with_two_consumers():
    @ub.jit
    def f(x):
        e = ub.exp(x)
        return (e + 1.0) * (e * 2.0)

    xv = rand((4, 8))
    low = f.lower(xv)
    assert low.num_kernels == 2
    assert "ubq_k0_exp(" in low.loop_ir  # e is materialised by its own kernel
    e = np.exp(xv)
    np.testing.assert_allclose(f(xv), (e + 1) * (e * 2), rtol=1e-6)


def test_fusion_stops_at_graph_output():
    @ub.jit
    def f(x):
        e = ub.exp(x)
        return e, e + 1.0

    xv = rand((4, 8))
    low = f.lower(xv)
    assert low.num_kernels == 2
    e, e1 = f(xv)
    np.testing.assert_allclose(e, np.exp(xv), rtol=1e-6)
    np.testing.assert_allclose(e1, np.exp(xv) + 1, rtol=1e-6)


def test_fusion_does_not_inline_into_contractions():
    """An elementwise producer of a matmul operand is its own kernel (not recomputed per use)."""
    @ub.jit
    def f(x, w):
        return ub.exp(x) @ w

    args = (rand((4, 8)), rand((8, 3), 1))
    low = f.lower(*args)
    assert low.num_kernels == 2
    np.testing.assert_allclose(f(*args), np.exp(args[0]) @ args[1], rtol=1e-5)


def test_fusion_groups_cover_every_node_once():
    @ub.jit
    def f(x, w):
        h = ub.relu(x @ w)
        s = ub.softmax(h, axis=-1)
        return s + h.mean(axis=0), s.max()

    graph, _ = f.trace(rand((5, 4)), rand((4, 6), 1))
    g = optimize_graph(graph)
    groups = fuse(g)
    members = [id(n) for grp in groups for n in grp.members]
    non_const = [id(n) for n in g.nodes if n.op != "constant"]
    assert sorted(members) == sorted(non_const) and len(set(members)) == len(members)
    for grp in groups:
        assert grp.members[-1] is grp.root


# ---------------------------------------------------------------------------------------------
# memory planning
# ---------------------------------------------------------------------------------------------
def _intervals(steps, external):
    first, last = {}, {}
    for k, (reads, write) in enumerate(steps):
        if write not in external:
            first.setdefault(write, k)
            last.setdefault(write, k)
        for r in reads:
            if r not in external:
                last[r] = max(last.get(r, k), k)
    return first, last


def _round(n):
    return (max(n, 1) + ALIGN - 1) // ALIGN * ALIGN


def check_plan(steps, sizes, external):
    plan = plan_memory(steps, sizes, external)
    first, last = _intervals(steps, external)
    assert set(plan.offsets) == set(first)
    for v, off in plan.offsets.items():
        assert off % ALIGN == 0 and off >= 0
        assert off + sizes[v] <= plan.workspace_size
    ids = sorted(plan.offsets)
    for a_i, a in enumerate(ids):
        for b in ids[a_i + 1:]:
            overlap_in_time = not (last[a] < first[b] or last[b] < first[a])
            if overlap_in_time:
                a0, a1 = plan.offsets[a], plan.offsets[a] + _round(sizes[a])
                b0, b1 = plan.offsets[b], plan.offsets[b] + _round(sizes[b])
                assert a1 <= b0 or b1 <= a0, (a, b, plan)
    assert plan.unshared_size == sum(_round(sizes[v]) for v in first)
    assert plan.workspace_size <= plan.unshared_size
    # never below the peak of simultaneously live bytes
    peak = max((sum(_round(sizes[v]) for v in first if first[v] <= k <= last[v])
                for k in range(len(steps))), default=0)
    assert plan.workspace_size >= peak
    return plan


def test_memory_plan_disjoint_lifetimes_share_offsets():
    # x(ext) -> 1 -> 2 -> 3 -> 4 -> out(ext): each intermediate dies when the next is made
    steps = [([0], 1), ([1], 2), ([2], 3), ([3], 4), ([4], 9)]
    sizes = {1: 1000, 2: 1000, 3: 1000, 4: 1000, 9: 1000}
    plan = check_plan(steps, sizes, {0, 9})
    assert plan.offsets[1] == plan.offsets[3] and plan.offsets[2] == plan.offsets[4]
    assert plan.offsets[1] != plan.offsets[2]           # 1 is read while 2 is written
    assert plan.workspace_size == 2 * _round(1000) < plan.unshared_size == 4 * _round(1000)


def test_memory_plan_overlapping_lifetimes_do_not_share():
    # 1 and 2 are both read by the last step: all of 1, 2, 3 are live together at step 2
    steps = [([0], 1), ([0], 2), ([1, 2], 3), ([3, 1], 9)]
    sizes = {1: 256, 2: 100, 3: 64, 9: 8}
    plan = check_plan(steps, sizes, {0, 9})
    spans = sorted((plan.offsets[v], plan.offsets[v] + _round(sizes[v])) for v in (1, 2, 3))
    assert all(e <= s for (_, e), (s, _) in zip(spans, spans[1:]))
    assert plan.workspace_size == plan.unshared_size


def test_memory_plan_external_values_take_no_workspace():
    plan = check_plan([([0], 5), ([5], 6)], {5: 10, 6: 10}, {0, 5, 6})
    assert plan.offsets == {} and plan.workspace_size == 0 and plan.unshared_size == 0


def test_memory_plan_dead_intermediate_and_zero_size():
    steps = [([0], 1), ([0], 2), ([2], 3), ([3], 9)]   # 1 is written and never read
    sizes = {1: 0, 2: 4096, 3: 4096, 9: 4}
    check_plan(steps, sizes, {0, 9})


@st.composite
def programs(draw):
    n = draw(st.integers(1, 12))
    external = {0, 1}
    steps, sizes = [], {}
    for k in range(n):
        vid = 10 + k
        earlier = [0, 1] + [10 + j for j in range(k)]
        reads = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3))
        steps.append((reads, vid))
        sizes[vid] = draw(st.integers(0, 5000))
    outs = draw(st.sets(st.sampled_from([10 + k for k in range(n)]), max_size=2))
    return steps, sizes, external | outs


@settings(max_examples=100, deadline=None)
@given(programs())
def test_memory_plan_properties(prog):
    steps, sizes, external = prog
    check_plan(steps, sizes, external)


def test_long_chain_of_non_fusible_ops_reuses_memory():
    @ub.jit
    def chain(x, w):
        for _ in range(8):
            x = ub.tanh(x @ w)   # tanh fuses into the matmul; the next matmul cannot fuse
        return x

    xv = rand((32, 32)) * 0.5
    wv = rand((32, 32), 1) * 0.2
    low = chain.lower(xv, wv)
    plan = low.program.memory
    assert low.num_kernels == 8
    one = 32 * 32 * 4
    assert plan.unshared_size == 7 * one                 # 7 intermediates + the output
    assert plan.workspace_size == 2 * one < plan.unshared_size
    ref = xv
    for _ in range(8):
        ref = np.tanh(ref @ wv)
    np.testing.assert_allclose(chain(xv, wv), ref, rtol=1e-4, atol=1e-5)


def test_memory_plan_in_diamond_graph_gives_right_results():
    """Two consumers of a shared intermediate, both contractions: reuse must not clobber."""
    @ub.jit
    def diamond(x, w1, w2):
        h = ub.exp(x * 0.1)
        a = h @ w1
        b = h @ w2
        c = ub.relu(a) @ w2.T
        return c + b @ w1.T + h

    x, w1, w2 = rand((16, 16)), rand((16, 16), 1), rand((16, 16), 2)
    low = diamond.lower(x, w1, w2)
    assert low.program.memory.workspace_size <= low.program.memory.unshared_size
    h = np.exp(x * np.float32(0.1))
    ref = np.maximum(h @ w1, 0) @ w2.T + (h @ w2) @ w1.T + h
    np.testing.assert_allclose(diamond(x, w1, w2), ref, rtol=1e-4, atol=1e-4)


def test_fusion_does_not_recompute_math_in_overlapping_windows_or_big_broadcasts():
    x = rand((1, 4, 16, 16))
    pool = ub.jit(lambda a: ub.max_pool2d(ub.gelu(a), 3, 1))
    assert pool.lower(x).num_kernels == 2  # gelu is computed once per element, then pooled
    v = rand((64,))
    bsum = ub.jit(lambda a: ub.broadcast_to(ub.exp(a), (256, 64)).sum(axis=1))
    assert bsum.lower(v).num_kernels == 2
    np.testing.assert_allclose(bsum(v), np.broadcast_to(np.exp(v), (256, 64)).sum(1), rtol=1e-5)
    cheap = ub.jit(lambda a: ub.max_pool2d(a * 2.0 + 1.0, 3, 1))
    assert cheap.lower(x).num_kernels == 1  # cheap arithmetic is still fused into the window


# ---------------------------------------------------------------------------------------------
# batch normalisation folded into the convolution before it
def _conv_bn_graph(with_bias: bool, scale_shape, seed=0):
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input(f32("n", 3, 9, 9), "x")
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal((8, 1, 1)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    mean, var = rng.standard_normal(8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32)
    y = g.op("conv2d", x, g.constant(w), padding=(1, 1, 1, 1))
    if with_bias:
        y = g.op("add", y, g.constant(b))
    y = g.op("batch_norm", y, *(g.constant(a) for a in (gamma, beta, mean, var)), epsilon=1e-3)
    g.outputs = [g.op("relu", y)]

    def reference(xv):
        import scipy.signal  # noqa: F401  (the test extra installs scipy; numpy suffices below)

        xp = np.pad(xv.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((xv.shape[0], 8, 9, 9))
        for i in range(3):
            for j in range(3):
                out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 9, j:j + 9], w[:, :, i, j].astype(np.float64))
        if with_bias:
            out += b
        a = gamma / np.sqrt(var.astype(np.float64) + 1e-3)
        out = (out - mean[:, None, None]) * a[:, None, None] + beta[:, None, None]
        return np.maximum(out, 0)
    return g, reference


def test_batch_norm_after_conv_is_folded_into_the_weights():
    for with_bias in (False, True):
        g, reference = _conv_bn_graph(with_bias, (8, 1, 1))
        opt = optimize_graph(g)
        ops = [n.op for n in opt.nodes if n.op != "constant"]
        assert ops[0] == "conv2d" and "mul" not in ops, ops   # the scale went into the weights
        model = ub.compile(g)
        xv = rand((2, 3, 9, 9))
        np.testing.assert_allclose(model.run([xv])[0], reference(xv), rtol=1e-4, atol=1e-4)


def test_scale_is_not_folded_into_a_conv_with_other_users():
    g = Graph()
    x = g.add_input(f32(1, 2, 4, 4), "x")
    c = g.op("conv2d", x, g.constant(rand((2, 2, 1, 1))))
    s = g.op("mul", c, g.constant(rand((2, 1, 1), seed=1)))
    g.outputs = [s, g.op("relu", c)]
    ops = [n.op for n in optimize_graph(g).nodes if n.op != "constant"]
    assert "mul" in ops
