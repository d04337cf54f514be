"""Symbolic dimensions, end to end: the dims algebra (ir/dims.py), graphs whose input shapes
name sizes compiled once and run at many sizes against numpy, the `dims=` contract (ranges,
specialisation, refusals), the on-disk cache round trip of a symbolic module, and the
memory plan made per binding of the sizes."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ubique as ub
from ubique.errors import ShapeError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.dims import Sym, evaluate, substitute
from ubique.ir.graph import Graph, TensorType

# sizes around the vector width: 1, odd, a multiple of 8, one past it
SIZES = (1, 3, 8, 17)


# ---------------------------------------------------------------------------------------------
# 1. the dims algebra
# ---------------------------------------------------------------------------------------------
SYMS = ("a", "b", "c")

_leaves = st.one_of(st.sampled_from(SYMS).map(lambda s: ("sym", s)), st.integers(-4, 6).map(lambda k: ("int", k)))
# ("+"|"-"|"*", left, right) or ("//", left, positive int)
trees = st.recursive(
    _leaves,
    lambda kids: st.one_of(st.tuples(st.sampled_from(("+", "-", "*")), kids, kids),
                           st.tuples(st.just("//"), kids, st.integers(1, 5))),
    max_leaves=8)
envs = st.fixed_dictionaries({s: st.integers(0, 40) for s in SYMS})


def to_sym(t) -> Sym:
    if t[0] == "sym":
        return Sym.of(t[1])
    if t[0] == "int":
        return Sym.of(t[1])
    op, a, b = t
    a = to_sym(a)
    if op == "//":
        return a // b
    b = to_sym(b)
    return a + b if op == "+" else a - b if op == "-" else a * b


def to_int(t, env) -> int:
    if t[0] == "sym":
        return env[t[1]]
    if t[0] == "int":
        return t[1]
    op, a, b = t
    a = to_int(a, env)
    if op == "//":
        return a // b
    b = to_int(b, env)
    return a + b if op == "+" else a - b if op == "-" else a * b


def expr_value(text: str, env: dict) -> int:
    """The loop-IR expression of a dimension (what kernels compute), folded for `env`."""
    e = L.substitute(D.to_expr(text), {L.Var(s): L.Const(v, L.I64) for s, v in env.items()})
    assert isinstance(e, L.Const), e
    return e.value


ALGEBRA = settings(max_examples=300)  # pure Python: many examples cost little


@ALGEBRA
@given(trees, envs)
def test_sym_arithmetic_evaluates_like_int_arithmetic(tree, env):
    s = to_sym(tree)
    want = to_int(tree, env)
    text = str(s)
    assert evaluate(text, env) == want, (tree, text, env)
    assert expr_value(text, env) == want, (tree, text, env)
    # the canonical string is a fixed point: parsing it gives back the same polynomial
    assert str(Sym.of(text)) == text, (tree, text)
    assert Sym.of(text) == s
    assert D.norm(text) == s.dim()
    # and a constant polynomial is an int dimension
    if not s.atoms():
        assert s.dim() == want


@ALGEBRA
@given(trees, envs, st.sets(st.sampled_from(SYMS)))
def test_substitute_partially_then_evaluate(tree, env, names):
    s = to_sym(tree)
    d = s.dim()
    part = substitute(d, {k: env[k] for k in names})
    # what is left depends only on the symbols not substituted
    assert D.symbols(part) <= set(SYMS) - names
    assert evaluate(part, env) == to_int(tree, env)
    if names == set(SYMS):
        assert isinstance(part, int)


@pytest.mark.parametrize("a, b", [
    ("seq*batch", "batch*seq"),
    ("batch*seq*2", "2*seq*batch"),
    ("b + a", "a + b"),
    ("1 + a", "a + 1"),
    ("2*(a + b)", "2*a + 2*b"),
    ("a*(b + c)", "c*a + b*a"),
    ("(a + 1)*(a - 1)", "a*a - 1"),
    ("(2*a + 4)//2", "a + 2"),
    ("a*b//b", "a"),
    ("a - a + 3", "3"),
    ("(a + 1)//2*b", "b*((a + 1)//2)"),
    ("2*((a + 1)//2)", "((1 + a)//2)*2"),
])
def test_equal_polynomials_have_equal_canonical_strings(a, b):
    assert D.norm(a) == D.norm(b)
    assert str(Sym.of(a)) == str(Sym.of(b))
    assert Sym.of(a) == Sym.of(b)
    assert TensorType((a, 4), "f32") == TensorType((b, 4), "f32")


def test_canonical_strings():
    assert D.norm("seq*batch") == "batch*seq"
    assert D.norm("batch") == "batch"
    assert D.norm("3*4") == 12 and D.norm(7) == 7
    assert D.prod(["batch", "seq", 8]) == "8*batch*seq"
    assert D.prod([2, 3]) == 6
    assert D.add("n", 1) == "n + 1" and D.sub("n", "n") == 0
    assert D.mul("n", 0) == 0
    assert D.floordiv("2*n", 2) == "n"
    assert D.floordiv("n + 1", 2) == "(n + 1)//2"
    assert D.symbols("(batch + 1)//2*seq") == {"batch", "seq"}
    assert TensorType(("seq*batch", 3), "f32").shape == ("batch*seq", 3)


def test_substitute_examples():
    assert substitute("batch*seq", {"batch": 2}) == "2*seq"
    assert substitute("batch*seq", {"batch": 2, "seq": 5}) == 10
    assert substitute("(n + 1)//2*m", {"n": 4}) == "2*m"
    assert substitute("(n + 1)//2*m", {"m": 3}) == "3*((n + 1)//2)" == D.norm("3*((n+1)//2)")
    assert substitute("batch", {}) == "batch"
    assert substitute(5, {"batch": 3}) == 5


@pytest.mark.parametrize("bad", ["", "a +", "a/2", "a**2", "2.5", "f(a)", "a.b", "a[0]", "a if b else c",
                                 "a < b", "'a'", "True", "lambda: 1", "(1 + 2", "+a", "a % 2"])
def test_invalid_dimension_strings_raise_shape_error(bad):
    with pytest.raises(ShapeError, match="invalid dimension"):
        Sym.of(bad)
    with pytest.raises(ShapeError):
        D.norm(bad)
    with pytest.raises(ShapeError):
        TensorType((bad, 3), "f32")


def test_non_integer_dimensions_raise_shape_error():
    for bad in (2.5, True):
        with pytest.raises(ShapeError):
            Sym.of(bad)
    with pytest.raises(ShapeError, match="division by zero"):
        Sym.of("a") // 0
    with pytest.raises(ShapeError, match="needs a value for 'b'"):
        evaluate("a*b", {"a": 1})
    with pytest.raises(ShapeError, match="symbolic"):
        int(Sym.of("a"))
    with pytest.raises(ShapeError, match="must be static"):
        D.static_size(("a", 3))


# ---------------------------------------------------------------------------------------------
# 2. graphs with symbolic input shapes, compiled once, run at many sizes
# ---------------------------------------------------------------------------------------------
RNG = np.random.default_rng(20240611)


def rand(shape, dtype=np.float32, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


def compiled():
    return ub.cache_info()["compiled"]


class Case:
    """A graph built once (compiled on first use) with a numpy reference."""

    def __init__(self, build, reference, make_inputs, *, dims=None):
        self.build, self.reference, self.make_inputs, self.dims = build, reference, make_inputs, dims

    @functools.cached_property
    def model(self):
        return ub.compile(self.build(), dims=self.dims)


def _w(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


W16x5 = _w((16, 5), 1)
B16 = _w((16,), 2)
W8x4 = _w((8, 4), 3)


def g_elementwise():
    g = Graph("elementwise")
    x = g.add_input(TensorType(("batch", 16), "f32"), "x")
    y = g.add_input(TensorType(("batch", 16), "f32"), "y")
    h = g.op("relu", g.op("add", g.op("mul", x, g.constant(np.float32(2))), y))
    t = g.op("tanh", g.op("sub", h, g.op("exp", y)))
    g.outputs = [g.op("maximum", t, g.op("neg", x)), g.op("sigmoid", h)]
    return g


def ref_elementwise(x, y):
    h = np.maximum(x.astype(np.float64) * 2 + y, 0)
    t = np.tanh(h - np.exp(y.astype(np.float64)))
    return [np.maximum(t, -x), 1 / (1 + np.exp(-h))]


def g_matmul():
    g = Graph("matmul")
    x = g.add_input(TensorType(("batch", 16), "f32"), "x")
    h = g.op("add", g.op("matmul", x, g.constant(W16x5)), g.constant(np.float32(0.5)))
    g.outputs = [h]
    return g


def g_matmul_symbolic_k():
    """Both operands symbolic, and the contracted axis too."""
    g = Graph("matmul_k")
    a = g.add_input(TensorType(("m", "k"), "f32"), "a")
    b = g.add_input(TensorType(("k", 7), "f32"), "b")
    g.outputs = [g.op("matmul", a, b)]
    return g


def g_reduce():
    g = Graph("reduce")
    x = g.add_input(TensorType(("n", 6), "f32"), "x")
    g.outputs = [g.op("sum", x, axes=(0,)),               # over the symbolic axis
                 g.op("sum", x, axes=(1,)),               # over the static axis
                 g.op("max", x, axes=(0,), keepdims=True),
                 g.op("min", x, axes=(1,), keepdims=True),
                 g.op("mean", x, axes=(1,)),              # divides by a static count
                 g.op("sum", x)]                          # everything
    return g


def ref_reduce(x):
    x = x.astype(np.float64)
    return [x.sum(0), x.sum(1), x.max(0, keepdims=True), x.min(1, keepdims=True), x.mean(1), x.sum()]


def g_softmax():
    g = Graph("softmax")
    x = g.add_input(TensorType(("n", 5), "f32"), "x")
    g.outputs = [g.op("softmax", x, axis=0), g.op("softmax", x, axis=-1), g.op("log_softmax", x, axis=0)]
    return g


def _softmax(x, axis):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_softmax(x):
    return [_softmax(x, 0), _softmax(x, -1), np.log(_softmax(x, 0))]


def g_concat():
    g = Graph("concat")
    x = g.add_input(TensorType(("a", 3), "f32"), "x")
    y = g.add_input(TensorType(("b", 3), "f32"), "y")
    g.outputs = [g.op("concat", x, y, axis=0),                      # a + b
                 g.op("concat", x, g.constant(np.ones((4, 3), np.float32)), x, axis=0),  # 2*a + 4
                 g.op("concat", g.op("transpose", x), g.op("transpose", y), axis=1)]     # (3, a + b)
    return g


def ref_concat(x, y):
    return [np.concatenate([x, y]), np.concatenate([x, np.ones((4, 3), np.float32), x]),
            np.concatenate([x.T, y.T], axis=1)]


def g_reshape():
    g = Graph("reshape")
    x = g.add_input(TensorType(("batch", "seq", 8), "f32"), "x")
    flat = g.op("reshape", x, shape=("batch*seq", 8))
    h = g.op("matmul", flat, g.constant(W8x4))                      # ("batch*seq", 4)
    back = g.op("reshape", h, shape=("batch", "seq", 4))
    wide = g.op("reshape", x, shape=("batch", "8*seq"))
    g.outputs = [flat, back, g.op("sum", wide, axes=(1,)), g.op("reshape", flat, shape=("seq*batch*8",))]
    return g


def ref_reshape(x):
    b, s, _ = x.shape
    flat = x.reshape(b * s, 8)
    return [flat, (flat.astype(np.float64) @ W8x4).reshape(b, s, 4), x.reshape(b, 8 * s).astype(np.float64).sum(1),
            x.reshape(-1)]


def g_slice():
    g = Graph("slice")
    x = g.add_input(TensorType(("n", 4), "f32"), "x")
    g.outputs = [g.op("slice", x, begin=(1, 0), end=("n", 4), step=(1, 1)),          # x[1:]
                 g.op("slice", x, begin=(0, 1), end=("n - 1", 3), step=(1, 1)),      # x[:-1, 1:3]
                 g.op("slice", x, begin=("n - 1", 3), end=(-1, -1), step=(-1, -1)),  # x[::-1, ::-1]
                 g.op("relu", g.op("slice", x, begin=(0, 0), end=("n", 2), step=(1, 2)))]  # relu(x[:, 0:2:2])
    return g


def ref_slice(x):
    return [x[1:], x[:-1, 1:3], x[::-1, ::-1], np.maximum(x[:, 0:2:2], 0)]


def g_transpose():
    g = Graph("transpose")
    x = g.add_input(TensorType(("batch", 3, "seq"), "f32"), "x")
    t = g.op("transpose", x, perm=(2, 0, 1))                        # (seq, batch, 3)
    g.outputs = [t, g.op("add", g.op("transpose", x), g.constant(np.float32(1))),
                 g.op("sum", t, axes=(1,))]
    return g


def ref_transpose(x):
    t = x.transpose(2, 0, 1)
    return [t, x.T + np.float32(1), t.astype(np.float64).sum(1)]


def g_broadcast():
    g = Graph("broadcast")
    x = g.add_input(TensorType(("batch", 1), "f32"), "x")
    y = g.add_input(TensorType((1, 16), "f32"), "y")
    z = g.add_input(TensorType(("batch", 16), "f32"), "z")
    outer = g.op("mul", x, y)                                       # ("batch", 16)
    g.outputs = [outer,
                 g.op("add", z, g.constant(B16)),                  # static bias on a symbolic batch
                 g.op("broadcast_to", x, shape=(2, "batch", 16)),
                 g.op("where", g.op("greater", z, x), z, y)]       # three-way broadcast
    return g


def ref_broadcast(x, y, z):
    return [x * y, z + B16, np.broadcast_to(x, (2, x.shape[0], 16)), np.where(z > x, z, y)]


def _sizes1(make):
    return [make(n) for n in SIZES]


CASES = {
    "elementwise": Case(g_elementwise, ref_elementwise,
                        _sizes1(lambda n: {"x": rand((n, 16)), "y": rand((n, 16))})),
    "matmul": Case(g_matmul, lambda x: [x.astype(np.float64) @ W16x5 + 0.5], _sizes1(lambda n: {"x": rand((n, 16))})),
    "matmul_k": Case(g_matmul_symbolic_k, lambda a, b: [a.astype(np.float64) @ b],
                     [{"a": rand((m, k)), "b": rand((k, 7))} for m, k in [(1, 1), (3, 17), (17, 3), (8, 8), (2, 33)]]),
    "reduce": Case(g_reduce, ref_reduce, _sizes1(lambda n: {"x": rand((n, 6))}) + [{"x": rand((100, 6))}]),
    "softmax": Case(g_softmax, ref_softmax, _sizes1(lambda n: {"x": rand((n, 5), lo=-4, hi=4)})),
    "concat": Case(g_concat, ref_concat,
                   [{"x": rand((a, 3)), "y": rand((b, 3))} for a, b in [(1, 1), (3, 17), (8, 1), (17, 8)]]),
    "reshape": Case(g_reshape, ref_reshape, [{"x": rand((b, s, 8))} for b, s in [(1, 1), (3, 17), (8, 1), (2, 5)]]),
    "slice": Case(g_slice, ref_slice, _sizes1(lambda n: {"x": rand((n, 4))})),
    "transpose": Case(g_transpose, ref_transpose,
                      [{"x": rand((b, 3, s))} for b, s in [(1, 1), (3, 17), (8, 2), (17, 9)]]),
    "broadcast": Case(g_broadcast, ref_broadcast,
                      _sizes1(lambda n: {"x": rand((n, 1)), "y": rand((1, 16)), "z": rand((n, 16))})),
}


def check_outputs(outs, refs, what):
    assert len(outs) == len(refs), what
    for k, (got, want) in enumerate(zip(outs, refs)):
        want = np.asarray(want)
        assert got.shape == want.shape, f"{what} output {k}: shape {got.shape} != {want.shape}"
        assert got.dtype == np.float32, f"{what} output {k}: dtype {got.dtype}"
        # float64 references; float32 results (sums of up to a few hundred terms)
        scale = 1.0 + (float(np.abs(want).max()) if want.size else 0.0)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=3e-5, atol=3e-5 * scale,
                                   err_msg=f"{what} output {k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_symbolic_graph_runs_at_many_sizes_without_recompiling(name):
    case = CASES[name]
    model = case.model
    assert any(isinstance(d, str) for spec in model.inputs for d in spec.shape), model.inputs
    assert "symbolic" in model.contract
    before = compiled()
    for inputs in case.make_inputs:
        outs = model.run(inputs)
        what = f"{name} at {[a.shape for a in inputs.values()]}"
        check_outputs(outs, case.reference(*inputs.values()), what)
        # the list form of run agrees
        again = model.run(list(inputs.values()))
        for a, b in zip(outs, again):
            np.testing.assert_array_equal(a, b)
    assert compiled() == before, "a symbolic model compiled again for a new size"
    # compiling the same graph again is a cache hit, not a compile
    assert ub.compile(case.build()) is not None
    assert compiled() == before


def test_output_specs_name_symbolic_sizes():
    m = CASES["concat"].model
    assert [s.shape for s in m.inputs] == [("a", 3), ("b", 3)]
    assert [s.shape for s in m.outputs] == [("a + b", 3), ("2*a + 4", 3), (3, "a + b")]
    m = CASES["reshape"].model
    assert m.outputs[0].shape == ("batch*seq", 8)
    assert m.outputs[1].shape == ("batch", "seq", 4)
    assert m.outputs[3].shape == ("8*batch*seq",)


@settings(max_examples=10)
@given(n=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_sizes_elementwise_and_softmax(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, (n, 16)).astype(np.float32)
    y = rng.uniform(-3, 3, (n, 16)).astype(np.float32)
    models = [CASES[k].model for k in ("elementwise", "softmax", "slice")]
    before = compiled()
    check_outputs(models[0].run({"x": x, "y": y}), ref_elementwise(x, y), f"elementwise n={n}")
    check_outputs(models[1].run({"x": x[:, :5]}), ref_softmax(x[:, :5]), f"softmax n={n}")
    check_outputs(models[2].run({"x": x[:, :4]}), ref_slice(x[:, :4]), f"slice n={n}")
    assert compiled() == before


def test_symbolic_f64_and_int_dtypes():
    g = Graph("dtypes")
    x = g.add_input(TensorType(("n", 3), "f64"), "x")
    i = g.add_input(TensorType(("n", 3), "i32"), "i")
    g.outputs = [g.op("sum", g.op("mul", x, x), axes=(0,)), g.op("add", i, g.op("concat", i, axis=0)),
                 g.op("max", i, axes=(0,))]
    m = ub.compile(g)
    before = compiled()
    for n in SIZES:
        xs = RNG.standard_normal((n, 3))
        iv = RNG.integers(-1000, 1000, (n, 3)).astype(np.int32)
        s, a, mx = m.run({"x": xs, "i": iv})
        np.testing.assert_allclose(s, (xs * xs).sum(0), rtol=1e-12)
        np.testing.assert_array_equal(a, iv + iv)
        np.testing.assert_array_equal(mx, iv.max(0))
        assert s.dtype == np.float64 and a.dtype == np.int32
    assert compiled() == before


def test_zero_sized_intermediate_and_output():
    """n = 1 makes x[1:] empty: the empty output and the reduction of nothing are fine."""
    g = Graph("empty")
    x = g.add_input(TensorType(("n", 4), "f32"), "x")
    tail = g.op("slice", x, begin=(1, 0), end=("n", 4), step=(1, 1))
    g.outputs = [tail, g.op("sum", g.op("exp", tail), axes=(0,))]
    m = ub.compile(g)
    for n in (1, 2, 9, 1):
        x = rand((n, 4))
        tail, s = m.run([x])
        np.testing.assert_array_equal(tail, x[1:])
        np.testing.assert_allclose(s, np.exp(x[1:].astype(np.float64)).sum(0), rtol=1e-5)


def test_mean_and_layer_norm_over_a_symbolic_axis():
    g = Graph("mean")
    x = g.add_input(TensorType(("n", 6), "f32"), "x")
    i = g.add_input(TensorType(("n", "m"), "i32"), "i")
    g.outputs = [g.op("mean", x, axes=(0,)), g.op("mean", x, axes=(0, 1), keepdims=True),
                 g.op("mean", i, axes=(1,)), g.op("layer_norm", x, axis=0)]
    m = ub.compile(g)
    assert m.outputs[2].dtype == "f64"
    for n, k in [(1, 1), (3, 5), (8, 2), (17, 9)]:
        x, i = rand((n, 6)), RNG.integers(-9, 9, (n, k)).astype(np.int32)
        x64 = x.astype(np.float64)
        a, b, c, d = m.run([x, i])
        check_outputs([a, b, d], [x64.mean(0), x64.mean(keepdims=True), (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5)],
                      f"mean n={n}")
        np.testing.assert_allclose(c, i.mean(1), rtol=1e-12)


def test_sizes_down_to_zero_when_the_range_allows_it():
    g = Graph("zero")
    x = g.add_input(TensorType(("n", 4), "f32"), "x")
    h = g.op("matmul", x, g.constant(W16x5[:4]))
    g.outputs = [g.op("sum", h, axes=(0,)), g.op("softmax", h, axis=0), g.op("concat", h, h, axis=0),
                 g.op("sum", h, axes=(1,))]
    m = ub.compile(g, dims={"n": (0, 50)})
    for n in (0, 5, 0, 50, 1):
        x = rand((n, 4))
        h = x.astype(np.float64) @ W16x5[:4]
        check_outputs(m.run([x]), [h.sum(0), _softmax(h, 0) if n else h, np.concatenate([h, h]), h.sum(1)],
                      f"zero n={n}")


def test_build_api_directly():
    g = g_matmul()
    ex = ub.build(g)
    assert ex.contract.symbols == ["batch"]
    for n in (1, 17):
        x = rand((n, 16))
        (y,) = ex.run(x)
        np.testing.assert_allclose(y, x.astype(np.float64) @ W16x5 + 0.5, rtol=1e-5, atol=1e-5)
    assert ex.bind([(5, 16)]) == {"batch": 5}


# ---------------------------------------------------------------------------------------------
# 3. the contract: ranges, specialisation, refusals
# ---------------------------------------------------------------------------------------------
def test_range_is_enforced_with_a_message_naming_the_dimension():
    m = ub.compile(g_matmul(), dims={"batch": (2, 8)})
    assert "batch: symbolic, 2 <= batch <= 8" in m.contract
    before = compiled()
    for n in (2, 5, 8):
        x = rand((n, 16))
        np.testing.assert_allclose(m.run([x])[0], x.astype(np.float64) @ W16x5 + 0.5, rtol=1e-5, atol=1e-5)
    for n in (1, 9, 100):
        with pytest.raises(ShapeError, match=r"'batch' = %d is outside the compiled range \[2, 8\]" % n):
            m.run([rand((n, 16))])
    assert compiled() == before


def test_unbounded_range():
    m = ub.compile(g_matmul(), dims={"batch": (3, None)})
    assert "3 <= batch <= any" in m.contract
    m.run([rand((300, 16))])
    with pytest.raises(ShapeError, match=r"outside the compiled range \[3, any\]"):
        m.run([rand((2, 16))])


def test_specialised_dimension():
    from ubique.build import compile_program

    m = ub.compile(g_matmul(), dims={"batch": 4})
    assert "batch: specialised to 4" in m.contract
    assert "symbolic" not in m.contract
    assert m.inputs[0].shape == (4, 16) and m.outputs[0].shape == (4, 5)
    assert m._ex.contract.symbols == [] and m._ex._dynamic_memory is None
    x = rand((4, 16))
    np.testing.assert_allclose(m.run([x])[0], x.astype(np.float64) @ W16x5 + 0.5, rtol=1e-5, atol=1e-5)
    for n in (1, 5):
        with pytest.raises(ShapeError, match=r"expected shape \(4, 16\)"):
            m.run([rand((n, 16))])
    program = compile_program(g_matmul(), dims={"batch": 4})
    assert all(isinstance(d, int) for v in program.graph.values() for d in v.shape)
    assert program.contract.specialized == {"batch": 4}
    # lo == hi specialises too
    m2 = ub.compile(g_matmul(), dims={"batch": (6, 6)})
    assert m2.inputs[0].shape == (6, 16) and "specialised to 6" in m2.contract


def test_partial_specialisation_keeps_the_other_symbol():
    m = ub.compile(g_reshape(), dims={"seq": 3})
    assert m.inputs[0].shape == ("batch", 3, 8)
    assert m.outputs[0].shape == ("3*batch", 8)
    assert "seq: specialised to 3" in m.contract and "batch: symbolic" in m.contract
    for b in (1, 5):
        x = rand((b, 3, 8))
        check_outputs(m.run([x]), ref_reshape(x), f"reshape seq=3 batch={b}")
    with pytest.raises(ShapeError):
        m.run([rand((2, 4, 8))])


@pytest.mark.parametrize("dims, match", [
    ({"nope": 3}, r"dims= names \['nope'\], which the graph does not use; its symbolic dimensions are \['batch'\]"),
    ({"batch": (8, 2)}, "not a valid range"),
    ({"batch": (-1, 2)}, "not a valid range"),
    ({"batch": "big"}, "must be an int or a"),
    ({"batch": (1, 2, 3)}, "must be an int or a"),
])
def test_bad_dims_declarations(dims, match):
    with pytest.raises(ShapeError, match=match):
        ub.compile(g_matmul(), dims=dims)


def test_dims_on_a_static_graph():
    g = Graph("static")
    x = g.add_input(TensorType((2, 3), "f32"), "x")
    g.outputs = [g.op("relu", x)]
    with pytest.raises(ShapeError, match="its symbolic dimensions are none"):
        ub.compile(g, dims={"batch": 2})
    assert ub.compile(g).contract == "all dimensions static"


def test_inconsistent_and_wrong_rank_inputs():
    m = CASES["elementwise"].model
    with pytest.raises(ShapeError, match=r"input 'y' axis 0: 'batch' = 4, but another input set 'batch' = 3"):
        m.run({"x": rand((3, 16)), "y": rand((4, 16))})
    with pytest.raises(ShapeError, match=r"input 'x': expected rank 2 \(batch, 16\), got shape \(3,\)"):
        m.run({"x": rand((3,)), "y": rand((3, 16))})
    with pytest.raises(ShapeError, match="expected rank 2"):
        m.run({"x": rand((3, 16, 1)), "y": rand((3, 16))})
    with pytest.raises(ShapeError, match=r"input 'x': expected shape \(3, 16\), got \(3, 15\)"):
        m.run({"x": rand((3, 15)), "y": rand((3, 16))})
    with pytest.raises(ShapeError, match="missing"):
        m.run({"x": rand((3, 16))})
    with pytest.raises(ShapeError, match="expected 2 input"):
        m.run([rand((3, 16))])


def test_derived_dimensions_of_inputs_are_checked():
    g = Graph("derived")
    x = g.add_input(TensorType(("n", 2), "f32"), "x")
    y = g.add_input(TensorType(("2*n", 2), "f32"), "y")
    g.outputs = [g.op("concat", x, y, axis=0)]
    m = ub.compile(g)
    assert m.outputs[0].shape == ("3*n", 2)
    x, y = rand((3, 2)), rand((6, 2))
    np.testing.assert_array_equal(m.run([x, y])[0], np.concatenate([x, y]))
    with pytest.raises(ShapeError, match=r"input 'y': expected shape \(6, 2\), got \(5, 2\)"):
        m.run([x, rand((5, 2))])


def test_symbol_not_given_by_any_input():
    """A size that no input shape names cannot be bound at run time: a ShapeError, never a KeyError."""
    g = Graph("unbound")
    x = g.add_input(TensorType((1, 4), "f32"), "x")
    g.outputs = [g.op("broadcast_to", x, shape=("batch", 4))]
    with pytest.raises(ShapeError, match="batch"):
        ub.compile(g).run([rand((1, 4))])
    # specialising it makes the graph static and runnable
    m = ub.compile(g, dims={"batch": 3})
    x = rand((1, 4))
    np.testing.assert_array_equal(m.run([x])[0], np.broadcast_to(x, (3, 4)))

    g = Graph("compound")
    x = g.add_input(TensorType(("n + 1", 4), "f32"), "x")
    g.outputs = [g.op("relu", x)]
    with pytest.raises(ShapeError, match="cannot tell the value of 'n \\+ 1'"):
        ub.compile(g).run([rand((3, 4))])
    m = ub.compile(g, dims={"n": 2})
    x = rand((3, 4))
    np.testing.assert_array_equal(m.run([x])[0], np.maximum(x, 0))


# ---------------------------------------------------------------------------------------------
# 4. the disk cache round trip of a symbolic module
# ---------------------------------------------------------------------------------------------
CACHE_SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    import ubique as ub
    from ubique.ir.graph import Graph, TensorType

    W = np.linspace(-1, 1, 16 * 12, dtype=np.float32).reshape(16, 12)
    g = Graph("cached")
    x = g.add_input(TensorType(("batch", 16), "f32"), "x")
    h = g.op("relu", g.op("matmul", x, g.constant(W)))
    p = g.op("softmax", h, axis=0)
    g.outputs = [g.op("concat", p, h, axis=0), g.op("sum", p, axes=(1,))]
    m = ub.compile(g, dims={"batch": (1, 64)})
    errs, digests = [], []
    for n in (1, 3, 17, 64, 2):
        x = np.random.default_rng(n).uniform(-1, 1, (n, 16)).astype(np.float32)
        out, s = m.run({"x": x})
        hr = np.maximum(x.astype(np.float64) @ W, 0)
        e = np.exp(hr - hr.max(0))
        pr = e / e.sum(0)
        errs.append(float(max(np.abs(out - np.concatenate([pr, hr])).max(), np.abs(s - pr.sum(1)).max())))
        digests.append(out.tobytes().hex()[:64] + s.tobytes().hex()[:64])
    try:
        m.run({"x": np.zeros((65, 16), np.float32)})
        refused = None
    except ub.ShapeError as e:
        refused = str(e)
    print("RESULT " + json.dumps({"info": ub.cache_info(), "errs": errs, "digests": digests, "refused": refused,
                                  "contract": m.contract, "outputs": [list(o.shape) for o in m.outputs]}))
''')


def _run_script(path, cache_dir):
    env = dict(os.environ, UBIQUE_CACHE_DIR=str(cache_dir))
    proc = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"script failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len("RESULT "):])


def test_symbolic_module_round_trips_through_the_disk_cache(tmp_path):
    script = tmp_path / "cached_model.py"
    script.write_text(CACHE_SCRIPT)
    cache = tmp_path / "cache"
    first = _run_script(script, cache)
    assert first["info"]["compiled"] == 1 and first["info"]["disk_hits"] == 0, first["info"]
    second = _run_script(script, cache)
    assert second["info"]["compiled"] == 0 and second["info"]["disk_hits"] == 1, second["info"]
    for r in (first, second):
        assert max(r["errs"]) < 1e-5, r["errs"]
        assert r["refused"] is not None and "'batch' = 65" in r["refused"] and "[1, 64]" in r["refused"]
        assert "1 <= batch <= 64" in r["contract"]
        assert r["outputs"] == [["2*batch", 12], ["batch"]]
    assert second["digests"] == first["digests"]
    (manifest,) = (cache / "modules").glob("*/*/manifest.json")
    meta = json.loads(manifest.read_text())["meta"]
    assert meta["contract"]["symbols"] == ["batch"] and meta["contract"]["ranges"] == {"batch": [1, 64]}
    assert meta["dynamic_memory"] is not None


def test_reloaded_executable_in_process(tmp_path):
    """The same round trip without a subprocess: the manifest's contract and dynamic memory
    load into an Executable that runs like the original."""
    from ubique.build import _load_entry, graph_key
    from ubique.runtime.cache import DiskCache
    from ubique.targets.registry import get_target

    g = g_reduce()
    ub.build(g, dims={"n": (1, 1000)})
    entry = DiskCache("modules").get(graph_key(g, get_target(None), {"n": (1, 1000)}))
    assert entry is not None
    ex = _load_entry(entry)
    assert ex.contract.ranges == {"n": (1, 1000)}
    for n in SIZES:
        x = rand((n, 6))
        check_outputs(ex.run(x), ref_reduce(x), f"reloaded reduce n={n}")
    with pytest.raises(ShapeError, match=r"\[1, 1000\]"):
        ex.run(rand((1001, 6)))


# ---------------------------------------------------------------------------------------------
# 5. memory planned per binding
# ---------------------------------------------------------------------------------------------
W1 = _w((32, 48), 4)
W2 = _w((48, 32), 5)


def g_chain():
    """Several intermediates whose sizes depend on n, held in the workspace between kernels."""
    g = Graph("chain")
    x = g.add_input(TensorType(("n", 32), "f32"), "x")
    h1 = g.op("relu", g.op("matmul", x, g.constant(W1)))           # (n, 48)
    p = g.op("softmax", h1, axis=0)                                 # (n, 48), reduces over n
    h2 = g.op("matmul", p, g.constant(W2))                          # (n, 32)
    c = g.op("concat", h2, x, axis=0)                               # (2n, 32)
    t = g.op("transpose", c)                                        # (32, 2n)
    s = g.op("sum", g.op("mul", t, t), axes=(0,), keepdims=True)    # (1, 2n)
    r = g.op("reshape", g.op("add", t, s), shape=("64*n",))          # (64n,)
    g.outputs = [r, g.op("max", h2, axes=(1,))]
    return g


def ref_chain(x):
    x = x.astype(np.float64)
    h1 = np.maximum(x @ W1, 0)
    p = _softmax(h1, 0)
    h2 = p @ W2
    t = np.concatenate([h2, x]).T
    s = (t * t).sum(0, keepdims=True)
    return [(t + s).reshape(-1), h2.max(1)]


@functools.lru_cache(maxsize=None)
def chain_model():
    return ub.compile(g_chain())


def test_chain_has_a_dynamic_memory_plan():
    ex = chain_model()._ex
    assert ex._dynamic_memory is not None and len(ex._dynamic_memory.slots) >= 3
    small, ws_small = ex._dynamic_memory.plan({"n": 1})
    big, ws_big = ex._dynamic_memory.plan({"n": 1000})
    assert ws_big > ws_small > 0
    # each binding's plan keeps buffers that are live together apart
    dm = ex._dynamic_memory
    for env in ({"n": 1}, {"n": 7}, {"n": 1000}):
        offsets, ws = dm.plan(env)
        sizes = {v: evaluate(dm.sizes[v], env) for v in dm.slots}
        at = dict(zip(dm.slots, offsets.tolist()))
        live = {}
        for k, (reads, write) in enumerate(dm.steps):
            for v in list(reads) + [write]:
                if v in at:
                    lo, hi = live.get(v, (k, k))
                    live[v] = (min(lo, k), max(hi, k))
        for u in dm.slots:
            assert at[u] % 64 == 0 and at[u] + sizes[u] <= ws
            for v in dm.slots:
                if u < v and not (live[u][1] < live[v][0] or live[v][1] < live[u][0]):
                    assert at[u] + sizes[u] <= at[v] or at[v] + sizes[v] <= at[u], (env, u, v)


@pytest.mark.parametrize("order", [(2, 300, 1, 1000, 5, 300, 2), (1000, 1, 17, 1000, 3)])
def test_large_after_small_and_small_after_large(order):
    m = chain_model()
    before = compiled()
    for n in order:
        x = rand((n, 32))
        check_outputs(m.run({"x": x}), ref_chain(x), f"chain n={n}")
    assert compiled() == before


def test_many_bindings_evict_old_plans_and_stay_correct():
    m = chain_model()
    ex = m._ex
    for n in list(range(1, 80)) + [1, 40, 79]:
        x = rand((n, 32))
        check_outputs(m.run([x]), ref_chain(x), f"chain n={n}")
        assert len(ex._plans) <= 64


def test_threads_share_a_symbolic_model():
    """Calls at different sizes from several threads at once: each gets its own plan and workspace."""
    from concurrent.futures import ThreadPoolExecutor

    m = chain_model()
    sizes = [1, 500, 3, 250, 17, 64, 2, 400] * 2
    inputs = [rand((n, 32)) for n in sizes]

    def one(x):
        return m.run([x])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, inputs))
    for x, outs in zip(inputs, results):
        check_outputs(outs, ref_chain(x), f"threaded chain n={x.shape[0]}")


def test_threads_at_more_sizes_than_the_plan_cache_holds():
    """Many threads calling at new sizes evict and insert plans concurrently; no call may fail
    (this raised KeyError when two threads evicted the same oldest plan)."""
    import threading

    g = Graph("plans")
    x = g.add_input(TensorType(("n", 4), "f32"), "x")
    g.outputs = [g.op("sum", g.op("exp", g.op("softmax", g.op("relu", x), axis=0)), axes=(0,))]
    m = ub.compile(g)
    assert m._ex._dynamic_memory is not None
    errors = []

    def work(t):
        try:
            for i in range(1500):
                n = 1 + (i * 7 + t * 13) % 200
                (s,) = m.run([np.ones((n, 4), np.float32)])
                if i % 97 == 0:
                    np.testing.assert_allclose(s, np.full(4, n * np.exp(1.0 / n)), rtol=1e-5)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, to make races likely
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert len(m._ex._plans) <= 64
