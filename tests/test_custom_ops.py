"""Custom operators (`ub.op.define`): a compute in the loop-IR expression language that runs
on every target with the same results (x86-64 here, AArch64 under qemu, the C backend when
its plug-in is installed); hand-written kernels per target (C, LLVM IR) used where given and
checked against the generated kernel; ABI violations named; custom ONNX domains; .ubq files
keeping the op by name; the compile cache following the op's definition."""
from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ubique as ub
from ubique import op
from ubique.compiler.pipeline import compile_graph
from ubique.ir import loop as L
from ubique.ir.graph import TensorType
from ubique.runtime.executable import load_program
from ubique.targets import get_target, host_target

from tolerances import assert_close as _assert_close


def assert_close(got, want, **kw):
    """Within the tolerance of `got`'s dtype, against a (float64) reference."""
    _assert_close(got, np.asarray(want).astype(np.asarray(got).dtype), **kw)

_names = (f"test_op_{k}" for k in itertools.count())


def fresh(name_hint=""):
    return next(_names) + name_hint


def swish_def(name):
    @op.define(name, attrs={"beta": 1.0})
    def swish(x, beta):
        return x * op.sigmoid(x * beta)
    return swish


def swish_ref(x, beta=1.0):
    x = x.astype(np.float64)
    return x / (1 + np.exp(-beta * x))


def run_on(target, fn, *args, hand_kernels=True):
    graph, _ = ub.jit(fn).trace(*args)
    t = get_target(target)
    program = compile_graph(graph, t, hand_kernels=hand_kernels)
    if t.runs_natively:
        return load_program(program).run(*args), program
    from ubique.runtime.emulator import run_program

    return run_program(program, *args), program


AARCH64 = get_target("aarch64")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
                                reason="qemu-aarch64 / aarch64-linux-gnu-gcc not installed "
                                       "(scripts/install-system-deps.sh installs them)")


def _has_dist(name):
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


needs_c_backend = pytest.mark.skipif(not _has_dist("ubique-c-backend"),
                                     reason="plug-in ubique-c-backend not installed (scripts/test.sh installs it "
                                            "from examples/plugins/ubique-c-backend)")


# ---------------------------------------------------------------------------------------------
# defining and running
# ---------------------------------------------------------------------------------------------
@given(shape=st.lists(st.integers(1, 9), min_size=0, max_size=3), beta=st.floats(-3, 3),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_elementwise_op_matches_numpy(shape, beta, dtype):
    name = fresh()
    swish = swish_def(name)
    try:
        x = np.random.default_rng(len(shape)).normal(size=shape).astype(dtype)
        got = ub.jit(lambda a: swish(a, beta=beta))(x)
        assert got.dtype == dtype and got.shape == x.shape
        assert_close(got, swish_ref(x, beta))
    finally:
        op.undefine(name)


def test_eager_call_on_numpy_and_two_inputs_broadcast():
    name = fresh()

    @op.define(name)
    def lerp(a, b, w):
        return a + (b - a) * w
    try:
        a, b = np.random.rand(4, 5).astype(np.float32), np.random.rand(5).astype(np.float32)
        w = np.random.rand(4, 1).astype(np.float32)
        assert_close(lerp(a, b, w), a + (b - a) * w)
        assert ub.op.custom_op_names(ub.jit(lambda *x: lerp(*x)).trace(a, b, w)[0]) == [name]
    finally:
        op.undefine(name)


def test_float16_is_computed_in_float32():
    name = fresh()
    swish = swish_def(name)
    try:
        x = np.linspace(-4, 4, 37).astype(np.float16)
        got = ub.jit(lambda a: swish(a))(x)
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), swish_ref(x.astype(np.float32)).astype(np.float16),
                                   rtol=1e-3, atol=1e-3)
    finally:
        op.undefine(name)


def test_reduce_kind_with_its_own_type_rule():
    name = fresh()

    def infer(types, attrs):
        (t,) = types
        return TensorType(t.shape[:-1], t.dtype)

    @op.define(name, kind="reduce", infer=infer)
    def sum_of_squares(ctx, index):
        n = ctx.in_types[0].shape[-1]
        k = ctx.fresh("k")
        x = ctx.input(0, tuple(index) + (k,))
        return L.Reduce("sum", [(k, L.Const(n, L.I64))], x * x)
    try:
        x = np.random.rand(3, 7).astype(np.float32)
        assert_close(ub.jit(lambda a: sum_of_squares(a) + 1.0)(x), (x.astype(np.float64) ** 2).sum(-1) + 1, n=7)
    finally:
        op.undefine(name)


def test_definition_errors_are_clear():
    with pytest.raises(ub.PluginError, match="already registered.*built-in"):
        op.define("exp")(lambda x: x)
    with pytest.raises(ub.PluginError, match="needs infer="):
        op.define(fresh(), kind="reduce")(lambda ctx, i: None)
    with pytest.raises(ub.PluginError, match="kind must be"):
        op.define(fresh(), kind="weird")(lambda x: x)
    name = fresh()

    @op.define(name)
    def broken(x):
        return x + undefined_name  # noqa: F821
    try:
        with pytest.raises(ub.PluginError, match=f"custom op '{name}'.*NameError"):
            ub.jit(lambda a: broken(a))(np.ones(3, np.float32))
    finally:
        op.undefine(name)


def _has_riscv():
    return _has_dist("ubique-riscv") and shutil.which("qemu-riscv64") and shutil.which("riscv64-linux-gnu-gcc")


@pytest.mark.parametrize("target,language", [
    pytest.param("aarch64", "llvm", marks=needs_qemu),
    pytest.param("c", "c", marks=needs_c_backend),
    pytest.param("riscv64", "llvm", marks=pytest.mark.skipif(not _has_riscv(), reason="ubique-riscv plug-in, "
                                                             "qemu-riscv64 or riscv64-linux-gnu-gcc missing")),
])
def test_same_results_on_every_target(target, language):
    """The compute alone, no target code: the same results as on this host (x86-64)."""
    name = fresh()
    swish = swish_def(name)
    try:
        x = np.random.default_rng(1).normal(size=(6, 21)).astype(np.float32)
        fn = lambda a: swish(a, beta=1.5) * 2.0 + a  # noqa: E731
        host, _ = run_on(host_target(), fn, x)
        other, program = run_on(target, fn, x)
        assert program.code.language == language
        assert_close(other[0], swish_ref(x, 1.5) * 2 + x)
        assert_close(host[0], other[0])
    finally:
        op.undefine(name)


# ---------------------------------------------------------------------------------------------
# hand-written kernels
# ---------------------------------------------------------------------------------------------
C_SWISH = """#include <math.h>
int32_t {name}(void *const *args, const int64_t *dims, ubq_ctx *ctx) {{
    const float *x = (const float *)args[0];
    float *y = (float *)args[1];
    for (int64_t i = 0; i < {n}; i++) y[i] = x[i] / (1.0f + expf(-{beta}f * x[i]));
    return 0;
}}
"""

LLVM_TWICE = """define i32 @{name}(ptr %args, ptr %dims, ptr %ctx) {{
entry:
  %xp = load ptr, ptr %args
  %yslot = getelementptr ptr, ptr %args, i64 1
  %yp = load ptr, ptr %yslot
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %next, %loop ]
  %xa = getelementptr float, ptr %xp, i64 %i
  %x = load float, ptr %xa
  %y = fmul float %x, 2.0
  %ya = getelementptr float, ptr %yp, i64 %i
  store float %y, ptr %ya
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, {n}
  br i1 %done, label %exit, label %loop
exit:
  ret i32 0
}}
"""


def test_hand_written_c_kernel_is_used_and_matches_the_generated_one():
    name = fresh()
    swish = swish_def(name)
    calls = []

    @swish.kernel(target=host_target().arch, language="c")
    def _(spec):
        calls.append(spec)
        return C_SWISH.format(name=spec.name, n=spec.output.size, beta=spec.attrs["beta"])
    try:
        x = np.random.default_rng(3).normal(size=(7, 9)).astype(np.float32)
        fn = lambda a: swish(a, beta=1.25) + 1.0  # noqa: E731
        (hand,), program = run_on(host_target(), fn, x)
        assert calls and calls[-1].output.shape == (7, 9) and calls[-1].attrs["beta"] == 1.25
        assert f"declare i32 @{calls[-1].name}(" in program.llvm_ir  # called, not generated
        assert program.num_kernels == 2  # the hand kernel stays alone: the +1 is not fused into it
        (generated,), program2 = run_on(host_target(), fn, x, hand_kernels=False)
        assert f"declare i32 @{calls[-1].name}(" not in program2.llvm_ir
        assert_close(hand, generated)
        assert_close(hand, swish_ref(x, 1.25) + 1)
    finally:
        op.undefine(name)


C_ADD = """int32_t {name}(void *const *args, const int64_t *dims, ubq_ctx *ctx) {{
    const float *a = (const float *)args[0], *b = (const float *)args[1];
    float *y = (float *)args[2];
    for (int64_t i = 0; i < {n}; i++) y[i] = a[i] + b[{b_index}] * 10.0f;
    return 0;
}}
"""


def test_hand_kernel_gets_exactly_its_nodes_inputs():
    """Repeated inputs and scalar constants reach a hand kernel as its node has them (the
    generated kernel would inline or share them)."""
    name = fresh()

    @op.define(name)
    def add10(a, b):
        return a + b * 10.0

    @add10.kernel(target=host_target().arch, language="c")
    def _(spec):
        assert len(spec.inputs) == 2
        return C_ADD.format(name=spec.name, n=spec.output.size, b_index="0" if spec.inputs[1].size == 1 else "i")
    try:
        x = np.random.rand(6, 5).astype(np.float32)
        for fn, want in ((lambda a: add10(a, a), x * 11), (lambda a: add10(a, np.float32(0.5)), x + 5),
                         (lambda a: add10(a, a * 2.0) + add10(a, a), x * 21 + x * 11)):
            (got,), program = run_on(host_target(), fn, x)
            assert "declare i32 @ubq_k" in program.llvm_ir  # the hand kernel ran
            assert_close(got, want)
    finally:
        op.undefine(name)


def test_hand_written_llvm_kernel_is_linked_into_the_module():
    name = fresh()

    @op.define(name)
    def twice(x):
        return x * 2.0

    twice.kernel(host_target().arch, "llvm", source=None)(
        lambda spec: LLVM_TWICE.format(name=spec.name, n=spec.output.size))
    try:
        x = np.random.rand(4, 8).astype(np.float32)
        (got,), program = run_on(host_target(), lambda a: twice(a), x)
        assert re.search(rf"define [^@]*@{program.kernels[0].kernel.name}\(", program.llvm_ir)
        (want,), _ = run_on(host_target(), lambda a: twice(a), x, hand_kernels=False)
        np.testing.assert_array_equal(got, want)
    finally:
        op.undefine(name)


def test_hand_kernel_is_only_for_its_target_and_static_shapes():
    name = fresh()
    swish = swish_def(name)
    swish.kernel("riscv-nonexistent", "c", source="this is not C")
    try:
        x = np.random.rand(3, 3).astype(np.float32)
        (got,), program = run_on(host_target(), lambda a: swish(a), x)
        assert "declare i32 @ubq_k" not in program.llvm_ir  # no hand kernel for this target: generated
        assert_close(got, swish_ref(x))
    finally:
        op.undefine(name)


@pytest.mark.parametrize("language,source,message", [
    ("c", "int32_t {name}(float *x, int n) { return 0; }", "does not compile as a kernel of the ABI signature"),
    ("c", "int32_t other_name(void *const *a, const int64_t *d, ubq_ctx *c) { return 0; }", "does not compile"),
    ("llvm", "define i64 @{name}(ptr %a) {\n  ret i64 0\n}", r"has type i64 \(ptr\); the kernel ABI needs"),
    ("llvm", "define i32 @unrelated(ptr %a, ptr %b, ptr %c) {\n  ret i32 0\n}", "defines no function"),
    ("llvm", "this is not IR", "does not parse"),
])
def test_kernel_breaking_the_abi_is_named(language, source, message):
    name = fresh()
    swish = swish_def(name)
    swish.kernel(host_target().arch, language, source=source)
    try:
        with pytest.raises(ub.PluginError, match=message) as e:
            run_on(host_target(), lambda a: swish(a), np.ones((2, 2), np.float32))
        assert f"{language} kernel of op '{name}'" in str(e.value) and "test_custom_ops.py" in str(e.value)
    finally:
        op.undefine(name)


# ---------------------------------------------------------------------------------------------
# ONNX custom domains, .ubq files, the cache
# ---------------------------------------------------------------------------------------------
OP_MODULE = """
import ubique as ub
from ubique import op

@op.define("plugin_swish", attrs={"beta": 1.0}, onnx="com.example::MySwish")
def plugin_swish(x, beta):
    return x * op.sigmoid(x * beta)
"""


def _onnx_model(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MySwish", ["x"], ["s"], domain="com.example", beta=2.0),
             helper.make_node("Relu", ["s"], ["y"])]
    g = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, path)
    return path


def _run(code, cwd, *args):
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    import os

    env = {**os.environ, **env}
    return subprocess.run([sys.executable, *args] if args else [sys.executable, "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_onnx_custom_domain_and_ubq_keep_the_op_by_name(tmp_path):
    model = _onnx_model(tmp_path / "custom.onnx")
    (tmp_path / "myops.py").write_text(OP_MODULE)
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    want = np.maximum(swish_ref(x, 2.0), 0)
    # without the definition: a clear error naming the custom domain
    r = _run("", tmp_path, "-m", "ubique.cli", "compile", str(model), "-o", "m.ubq")
    assert r.returncode == 2 and "com.example::MySwish" in r.stderr and "ub.op.define" in r.stderr
    # with it (--import): compiled, stored by name, run
    r = _run("", tmp_path, "-m", "ubique.cli", "compile", str(model), "-o", "m.ubq", "--target", "host",
             "--import", "myops")
    assert r.returncode == 0, r.stderr
    r = _run("", tmp_path, "-m", "ubique.cli", "run", "m.ubq", "--input", "x=x.npy", "--output", ".",
             "--import", "myops")
    assert r.returncode == 0, r.stderr
    assert_close(np.load(tmp_path / "y.npy"), want)
    # loading the file without the op's module: a ModelError naming the op, no crash
    r = _run("import ubique as ub\nub.load('m.ubq')", tmp_path)
    assert r.returncode == 1 and "ModelError" in r.stderr and "plugin_swish" in r.stderr \
        and "import the module that defines" in r.stderr, r.stderr
    r = _run("import myops, ubique as ub, numpy as np\n"
             "m = ub.load('m.ubq')\nprint(m.graph.nodes[0].op if m.graph.nodes[0].op != 'constant' else '')\n"
             "np.save('y2.npy', m.run({'x': np.load('x.npy')})[0])", tmp_path)
    assert r.returncode == 0, r.stderr
    assert_close(np.load(tmp_path / "y2.npy"), want)


def test_redefining_an_op_is_not_served_stale_code():
    name = fresh()
    x = np.random.rand(5).astype(np.float32)

    def define(scale):
        op.define(name)(eval(f"lambda x: x * {scale}"))  # a different compute each time

    define(2.0)
    first = ub.op.fingerprint(ub.jit(lambda a: op.get(name)(a)).trace(x)[0])
    a = ub.jit(lambda v: op.get(name)(v))(x)
    op.undefine(name)
    define(3.0)
    try:
        second = ub.op.fingerprint(ub.jit(lambda a: op.get(name)(a)).trace(x)[0])
        b = ub.jit(lambda v: op.get(name)(v))(x)
        assert first != second
        assert_close(a, x * 2)
        assert_close(b, x * 3)
    finally:
        op.undefine(name)


def test_cache_follows_closures_and_kernel_text():
    """A compute reading a closure variable, and a kernel given as text: changing either
    compiles anew (the cache key holds their values, not only the function's source)."""
    x = np.random.rand(5).astype(np.float32)
    name = fresh()
    results = []
    for scale in (5.0, 7.0):
        op.define(name, replace=True)(lambda v: v * scale)
        results.append(ub.jit(lambda a: op.get(name)(a))(x))
    op.undefine(name)
    assert_close(results[0], x * 5)
    assert_close(results[1], x * 7)
    swish = swish_def(name)
    try:
        prints = []
        for constant in ("1.0f", "2.0f"):
            swish.opdef.kernels.kernels.clear()
            text = C_SWISH.format(name="{name}", n=6, beta="1.0").replace("x[i] / ", f"{constant} * x[i] / ")
            swish.kernel(host_target().arch, "c", source=text)
            prints.append(ub.op.fingerprint(ub.jit(lambda a: swish(a)).trace(x[:6])[0]))
            got = ub.jit(lambda a: swish(a))(x[:6])
            assert_close(got, float(constant[:-1]) * swish_ref(x[:6]))
        assert prints[0] != prints[1]
    finally:
        op.undefine(name)


C_WITH_HELPER = """static float twice(float v) {{ return 2.0f * v; }}
int32_t {name}(void *const *args, const int64_t *dims, ubq_ctx *ctx) {{
    const float *x = (const float *)args[0];
    float *y = (float *)args[1];
    for (int64_t i = 0; i < {n}; i++) y[i] = twice(x[i]);
    return 0;
}}
"""


def test_two_uses_of_a_c_kernel_with_a_static_helper():
    name = fresh()
    twice = op.define(name)(lambda v: v * 2.0)
    twice.kernel(host_target().arch, "c")(lambda spec: C_WITH_HELPER.format(name=spec.name, n=spec.output.size))
    try:
        x = np.random.rand(4, 3).astype(np.float32)
        (got,), program = run_on(host_target(), lambda a: twice(a) + twice(a * 3.0), x)
        assert program.llvm_ir.count("declare i32 @ubq_k") == 2
        assert_close(got, x * 2 + x * 6)
    finally:
        op.undefine(name)


def test_a_ptx_kernel_leaves_cpu_targets_on_the_generated_kernel():
    """PTX kernels are for the GPU backend (tests/test_gpu.py runs them); a CPU target, whose
    backend takes C and LLVM IR, compiles the op's compute as before."""
    name = fresh()
    swish = swish_def(name)
    try:
        swish.kernel("cuda", "ptx", source=".entry {name}() { ret; }")
        swish.kernel(host_target().arch, "ptx", source="not even PTX")
        with pytest.raises(ub.PluginError, match="unknown kernel language 'cuda-c'"):
            swish.kernel("cuda", "cuda-c", source="")
        x = np.random.rand(40).astype(np.float32) - 0.5
        (got,), program = run_on(host_target(), lambda a: swish(a), x)
        assert "declare i32 @ubq_k" not in program.llvm_ir
        assert_close(got, swish_ref(x))
    finally:
        op.undefine(name)


def test_dtypes_a_compute_cannot_take_are_named():
    name, name2 = fresh(), fresh()
    swish = swish_def(name)                      # x * sigmoid(x * beta): beta is a float
    strict = op.define(name2, dtypes=("f32", "f64"))(lambda x: x * 2.0)
    try:
        ints = np.arange(6, dtype=np.int32)
        with pytest.raises(ub.DTypeError, match=f"custom op '{name}'.*inputs of dtype i32.*mixes i32 and f64"):
            ub.jit(lambda a: swish(a))(ints)
        with pytest.raises(ub.DTypeError, match=f"{name2}: takes f32, f64 inputs, got i32"):
            ub.jit(lambda a: strict(a))(ints)
        assert_close(ub.jit(lambda a: strict(a))(ints.astype(np.float64)), ints * 2.0)
    finally:
        op.undefine(name)
        op.undefine(name2)
