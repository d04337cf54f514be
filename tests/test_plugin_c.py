"""The out-of-tree C backend plug-in (examples/plugins/ubique-c-backend, target "c"): its outputs
match the host (LLVM) backend's on small end-to-end models, on hypothesis-generated
elementwise / reduction / matmul graphs of several dtypes and on a graph with a symbolic
batch run at two sizes; float16/bfloat16 conversions are exact; Program.source is C; and
the package imports only public ubique modules.

Install the plug-in first: pip install -e examples/plugins/ubique-c-backend --no-deps
"""
from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

try:
    importlib.metadata.distribution("ubique-c-backend")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("the ubique-c-backend plug-in is not installed "
                "(pip install -e examples/plugins/ubique-c-backend --no-deps)", allow_module_level=True)

import ubique as ub  # noqa: E402
from strategies import arrays, broadcastable_shapes, is_float, np_dtype  # noqa: E402
from tolerances import BF16, assert_close, assert_same  # noqa: E402
from ubique.compiler.pipeline import compile_graph  # noqa: E402
from ubique.ir.graph import Graph, TensorType  # noqa: E402
from ubique.targets import get_target  # noqa: E402

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "ubique-c-backend"
FEW = settings(max_examples=8)   # every example compiles two programs


def both(fn, *args):
    """fn jitted for the host and for "c", run on args: (c outputs, host outputs) as tuples."""
    with np.errstate(all="ignore"):
        host, c = ub.jit(fn)(*args), ub.jit(fn, target="c")(*args)
    as_tuple = lambda r: tuple(r) if isinstance(r, (tuple, list)) else (r,)  # noqa: E731
    return as_tuple(c), as_tuple(host)


# -- the target, the backend, the source -------------------------------------------------------
def test_target_and_backend_come_from_the_plugin():
    from ubique.codegen.backend import available_backends, get_backend

    t = get_target("c")
    assert (t.name, t.codegen, t.device, t.vector_bits, t.cpu) == ("c", "c", "cpu", 32, "generic")
    assert t.triple == ub.targets.host_target().triple and t.runs_natively
    assert "ubique-c-backend" in ub.targets.origins()["c"]
    assert get_backend("c").extern_languages == ("c",) and "ubique-c-backend" in available_backends()["c"]


def test_program_source_is_c_with_the_entry():
    g, _ = ub.jit(lambda x, y: ub.tanh(x @ y).sum(axis=1)).trace(np.ones((4, 5), np.float32),
                                                                 np.ones((5, 3), np.float32))
    program = compile_graph(g, get_target("c"), name="cdemo")
    src = program.source
    assert program.code.language == "c" and program.obj
    assert '#include "ubique_runtime.h"' in src and "#include <math.h>" in src
    assert f"int32_t {program.entry}(void *const *args, const int64_t *dims, ubq_ctx *ctx)" in src
    assert "tanhf(" in src and "parallel_for" not in src.split("ubq_ctx *ctx) {", 1)[1]
    assert program.entry in program.asm  # cc -S


# -- models ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from torch_models import BasicBlock, BertEncoder, LeNet, MLP, export, randomize_batchnorm

    nn = torch.nn
    torch.manual_seed(0)
    resnetish = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                              BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    rng = np.random.default_rng(0)
    bert = BertEncoder(vocab=50, hidden=32, heads=2, layers=1, ffn=64, max_len=16)
    return {
        "mlp": (export(MLP((64, 48, 32, 10)), (torch.randn(2, 64),), ["x"], ["y"]),
                [rng.standard_normal((2, 64), np.float32)]),
        "lenet": (export(LeNet(), (torch.randn(2, 1, 28, 28),), ["x"], ["y"]),
                  [rng.standard_normal((2, 1, 28, 28), np.float32)]),
        "resnet_block": (export(randomize_batchnorm(resnetish), (torch.randn(2, 3, 16, 16),), ["x"], ["y"]),
                         [rng.standard_normal((2, 3, 16, 16), np.float32)]),
        "bert": (export(bert, (torch.randint(0, 50, (2, 8)), torch.ones(2, 8, dtype=torch.int64)),
                        ["ids", "mask"], ["hidden", "pooled"]),
                 [rng.integers(0, 50, (2, 8)), np.array([[1] * 8, [1] * 5 + [0] * 3], np.int64)]),
    }


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet_block", "bert"])
def test_models_match_the_host_backend(models, name):
    data, feeds = models[name]
    graph = ub.import_onnx(data)
    got, expected = ub.compile(graph, target="c").run(feeds), ub.compile(graph).run(feeds)
    for k, (c, host) in enumerate(zip(got, expected)):
        # summation order differs (the host vectorizes and contracts FMAs): a float32 elementwise
        # tolerance plus accumulated rounding relative to the output's magnitude
        assert_close(c, host, atol_extra=1e-5 * float(np.max(np.abs(host))), msg=f"{name} output {k}")


# -- hypothesis-generated graphs ---------------------------------------------------------------
DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int8", "uint8", "int64")


def float_ops(x, y):
    return (x + y, x - y, x * y, x / y, ub.maximum(x, y), ub.minimum(x, y), ub.relu(x), ub.abs(x), -x,
            ub.exp(x), ub.log(ub.abs(x)), ub.tanh(x), ub.sqrt(ub.abs(y)), ub.sigmoid(y), ub.erf(x),
            ub.apply("mod", [x, y]), ub.apply("floor", [x]), ub.apply("round", [y]), ub.apply("sign", [x]),
            x < y, x != y, ub.where(x >= y, x, y), x.astype(ub.int32), x.astype(ub.uint8), x.astype(ub.int64),
            x.astype(ub.float16), x.astype(ub.bfloat16), x.astype(ub.float64), x.astype(ub.bool_))


def int_ops(x, y):
    return (x + y, x - y, x * y, ub.maximum(x, y), ub.minimum(x, y), ub.abs(x), x < y, x == y,
            ub.apply("mod", [x, y]), ub.apply("mod", [x, y], fmod=1), ub.apply("bitwise_and", [x, y]),
            ub.apply("bitwise_xor", [x, y]), ub.apply("bitwise_not", [x]), ub.apply("pow", [x, y]), x / y,
            x.astype(ub.float32), x.astype(ub.float16), x.astype(ub.int8), x.astype(ub.uint8), x.astype(ub.int64))


def compare(c, host, msg):
    assert len(c) == len(host), msg
    for k, (a, b) in enumerate(zip(c, host)):
        assert_close(a, b, msg=f"{msg} output {k}")


@FEW
@given(data=st.data())
def test_elementwise_graphs_match_the_host_backend(data):
    dt = data.draw(st.sampled_from(DTYPES), "dtype")
    sx, sy = data.draw(broadcastable_shapes(2, max_dims=3, max_side=6), "shapes")
    x, y = data.draw(arrays(dt, sx), "x"), data.draw(arrays(dt, sy), "y")
    compare(*both(float_ops if is_float(dt) else int_ops, x, y), f"{dt} {sx} {sy}")


@FEW
@given(data=st.data())
def test_reduction_and_matmul_graphs_match_the_host_backend(data):
    dt = data.draw(st.sampled_from(DTYPES), "dtype")
    m, k, n = (data.draw(st.integers(1, 9), name) for name in "mkn")
    # bounded values: float sums that overflow in one order and not in another are not a bug
    a = data.draw(arrays(dt, (m, k), lo=-100, hi=100), "a")
    b = data.draw(arrays(dt, (k, n), lo=-100, hi=100), "b")
    (mm, s0, s1, mx, mn, am), host = both(lambda a, b: (a @ b, a.sum(axis=0), a.sum(axis=1), a.max(axis=1),
                                                         a.min(axis=0), a.argmax(axis=1)), a, b)
    msg = f"{dt} ({m}, {k}) @ ({k}, {n})"
    if is_float(dt):
        a64, b64 = np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64))
        with np.errstate(invalid="ignore"):
            assert_close(mm, host[0], n=k, scale=a64 @ b64, msg="matmul " + msg)
        assert_close(s0, host[1], n=m, scale=a64.sum(0), msg="sum(0) " + msg)
        assert_close(s1, host[2], n=k, scale=a64.sum(1), msg="sum(1) " + msg)
    else:
        for got, want, what in zip((mm, s0, s1), host, ("matmul", "sum(0)", "sum(1)")):
            assert_same(got, want, f"{what} {msg}")
    for got, want, what in zip((mx, mn, am), host[3:], ("max", "min", "argmax")):
        assert_same(got, want, f"{what} {msg}")


# -- float16 / bfloat16 conversions, exhaustively --------------------------------------------
def test_float16_and_bfloat16_conversions_are_exact():
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].astype(np.float64)
    up = np.nextafter(finite, np.inf)
    # float32/float64 values at, between and beside every float16 (ties round to even)
    f64 = np.concatenate([finite, (finite[:-1] + finite[1:]) / 2, np.nextafter((finite[:-1] + finite[1:]) / 2, up[:-1]),
                          [65519.99, 65520.0, 1e6, np.inf, -np.inf, np.nan, 2.0 ** -25, 2.0 ** -26, 1e-40]])
    f32 = f64.astype(np.float32)
    out = both(lambda h, s, d: (h.astype(ub.float32), s.astype(ub.float16), d.astype(ub.float16),
                                s.astype(ub.bfloat16)), halves, f32, f64)[0]
    with np.errstate(all="ignore"):
        assert_same(out[0], halves.astype(np.float32), "float16 -> float32")
        assert_same(out[1], f32.astype(np.float16), "float32 -> float16")
        assert_same(out[2], f64.astype(np.float16), "float64 -> float16 (one rounding)")
        if BF16 is not None:
            assert_same(out[3], f32.astype(BF16), "float32 -> bfloat16")


# -- symbolic shapes ---------------------------------------------------------------------------
def test_symbolic_batch_runs_at_two_sizes():
    w = np.random.default_rng(1).uniform(-1, 1, (16, 5)).astype(np.float32)
    g = Graph("symbolic")
    x = g.add_input(TensorType(("batch", 16), "f32"), "x")
    h = g.op("relu", g.op("add", g.op("matmul", x, g.constant(w)), g.constant(np.float32(0.5))))
    g.outputs = [g.op("softmax", h, axis=-1), g.op("sum", g.op("tanh", x), axes=(0,))]
    program = compile_graph(g, get_target("c"), dims={"batch": (1, 8)})
    assert "offsets[" in program.source  # intermediates placed by the run-time memory plan
    c, host = ub.compile(g, target="c", dims={"batch": (1, 8)}), ub.compile(g, dims={"batch": (1, 8)})
    rng = np.random.default_rng(2)
    for batch in (1, 8):
        feed = [rng.standard_normal((batch, 16)).astype(np.float32)]
        for k, (a, b) in enumerate(zip(c.run(feed), host.run(feed))):
            assert_close(a, b, n=max(batch, 16), scale=np.abs(b) + 1, msg=f"batch {batch} output {k}")


# -- hand-written C kernels -------------------------------------------------------------------
def test_hand_written_c_kernel_is_included():
    op = ub.op

    @op.define("c_plugin_test_twice")
    def twice(x):
        return x + x

    # deliberately x * 3, not 2: the result shows which kernel ran
    twice.kernel(target="c", language="c", source="""
        int32_t {name}(void *const *args, const int64_t *dims, ubq_ctx *ctx) {
            const float *x = args[0]; float *y = args[1];
            for (int i = 0; i < 6; i++) y[i] = x[i] * 3.0f;
            (void)dims; (void)ctx; return 0; }""")
    try:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        c, host = both(lambda t: twice(t) + 1, x)
        assert_same(c[0], x * 3 + 1, "hand-written kernel on c")
        assert_same(host[0], x * 2 + 1, "generated kernel on the host")
    finally:
        if hasattr(op, "undefine"):
            op.undefine("c_plugin_test_twice")


# -- the package uses public ubique only -------------------------------------------------------
def test_plugin_imports_no_private_ubique_module():
    sources = sorted((PLUGIN / "ubique_c_backend").glob("*.py"))
    assert sources
    seen = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                paths = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                paths = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for p in paths:
                if p.split(".")[0] == "ubique":
                    seen.add(p)
                    private = [part for part in p.split(".") if part.startswith("_")]
                    assert not private, f"{path.name}:{node.lineno} imports private {p}"
    assert "ubique.codegen.backend.Backend" in seen
