"""The AArch64 target: graphs compiled on this host for aarch64 (cross-compiled objects, linked
by the cross toolchain) and run under qemu-aarch64 through runtime/emulator.py, compared with
numpy. Also: the target's description and cache key, NEON in the assembly, the object's ELF
machine, and the errors for missing tools and failed runs."""
from __future__ import annotations

import dataclasses
import math
import shutil
import struct

import numpy as np
import pytest

import ubique as ub
from ubique.compiler.pipeline import compile_graph
from ubique.errors import RuntimeFailure, ToolchainError
from ubique.ir.graph import Graph, TensorType
from ubique.runtime.emulator import EmulatedProgram, build_driver, run_program
from ubique.runtime.toolchain import link_shared_for_target
from ubique.targets import get_target, host_target

AARCH64 = get_target("aarch64")
EM_AARCH64 = 183

_missing = [tool for tool in ("qemu-aarch64", "aarch64-linux-gnu-gcc") if shutil.which(tool) is None]
needs_cross = pytest.mark.skipif(
    bool(_missing) and not AARCH64.runs_natively,
    reason=f"{' and '.join(_missing)} not installed (Debian: qemu-user, gcc-aarch64-linux-gnu; "
           "scripts/install-system-deps.sh installs them)")

RNG = np.random.default_rng(0)


def rand(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def compile_fn(fn, *args, target=AARCH64):
    graph, _ = ub.jit(fn).trace(*args)
    return compile_graph(graph, target)


def check(fn, ref, *args, rtol=2e-5, atol=2e-5, threads=2):
    """Compiles fn for aarch64, runs it under qemu, compares with ref (numpy, float64)."""
    program = compile_fn(fn, *args)
    got = run_program(program, *(a for a in args if isinstance(a, np.ndarray)), threads=threads)
    want = ref(*(a.astype(np.float64) for a in args))
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return program


# ---------------------------------------------------------------------------------------------
# the target description
# ---------------------------------------------------------------------------------------------
def test_target_description():
    t = AARCH64
    assert (t.name, t.triple, t.arch, t.vector_bits, t.vector_math) == (
        "aarch64", "aarch64-unknown-linux-gnu", "aarch64", 128, "")
    assert "+neon" in t.features and t.cc == "aarch64-linux-gnu-gcc" and t.emulator[0] == "qemu-aarch64"
    assert t.link_libs == ("m",)
    assert host_target().cc == "" and host_target().runs_natively
    assert t.runs_natively == host_target().triple.startswith("aarch64")


def test_target_key_covers_code_fields_only():
    t = AARCH64
    assert t.key != host_target().key
    for change in (dict(cpu="cortex-a72"), dict(features="+neon,+fullfp16"), dict(vector_bits=256),
                   dict(num_cores=4), dict(vector_math="libmvec"), dict(cc="clang --target=aarch64-linux-gnu"),
                   dict(triple="aarch64-unknown-linux-musl")):
        assert dataclasses.replace(t, **change).key != t.key, change
    # how to install or emulate it does not change the code
    assert dataclasses.replace(t, emulator=("qemu-aarch64-static",), cc_package="x").key == t.key


def test_assembly_uses_neon():
    program = compile_fn(lambda x, w: x @ w, rand(8, 32), rand(32, 16))
    asm = program.asm
    fmla = [line for line in asm.splitlines() if "fmla" in line and ".4s" in line]
    assert fmla, "no NEON fmla on 4 x f32 in:\n" + asm[:2000]
    assert "xmm" not in asm and "ymm" not in asm and "zmm" not in asm


def test_vector_math_uses_the_aarch64_vector_abi():
    # opt-in libmvec on aarch64 calls AdvSIMD variants (_ZGVn...), never x86 ones (_ZGVb/d/e...)
    target = dataclasses.replace(AARCH64, vector_math="libmvec")
    ir = compile_fn(lambda x: ub.tanh(x), rand(4, 16), target=target).llvm_ir
    assert "_ZGVnN4v_tanhf" in ir and not any(f"_ZGV{isa}N" in ir for isa in "bde")
    assert "_ZGV" not in compile_fn(lambda x: ub.tanh(x), rand(4, 16)).llvm_ir  # the default: libm


def test_object_is_aarch64_elf():
    obj = compile_fn(lambda x: ub.exp(x) + 1.0, rand(5, 7)).obj
    assert obj[:4] == b"\x7fELF" and obj[4] == 2 and obj[5] == 1  # 64-bit, little-endian
    e_type, e_machine = struct.unpack_from("<HH", obj, 16)
    assert (e_type, e_machine) == (1, EM_AARCH64)  # ET_REL for AArch64


# ---------------------------------------------------------------------------------------------
# compiled for aarch64, run under qemu, compared with numpy
# ---------------------------------------------------------------------------------------------
_erf = np.vectorize(math.erf)


@needs_cross
def test_elementwise_chain_with_libm():
    # 7 x 13: rows of 13 run 3 vectors of 4 lanes and a scalar tail
    def f(x, y):
        h = ub.exp(x) * y - ub.tanh(x * 2.0) + ub.erf(y)
        return ub.sqrt(ub.abs(h)) + ub.sigmoid(x) / (ub.log(y + 2.0) + 1.0), ub.maximum(x, y) * ub.cos(x)

    def ref(x, y):
        h = np.exp(x) * y - np.tanh(x * 2) + _erf(y)
        return np.sqrt(np.abs(h)) + 1 / (1 + np.exp(-x)) / (np.log(y + 2) + 1), np.maximum(x, y) * np.cos(x)

    check(f, ref, rand(7, 13), rand(7, 13))


@needs_cross
def test_matmul_bias_relu():
    def f(x, w, b):
        return ub.relu(x @ w + b)

    program = check(f, lambda x, w, b: np.maximum(x @ w + b, 0), rand(13, 29), rand(29, 37), rand(37),
                    rtol=1e-4, atol=1e-5)
    assert program.num_kernels == 1  # fused: matmul + bias + relu is one kernel


@needs_cross
def test_reductions():
    def f(x):
        return ub.sum(x, axis=1), ub.max(x, axis=0), ub.mean(x), ub.min(x, axis=(0, 2), keepdims=True)

    def ref(x):
        return x.sum(1), x.max(0), x.mean(), x.min(axis=(0, 2), keepdims=True)

    check(f, ref, rand(5, 11, 9), rtol=1e-5, atol=1e-5)


@needs_cross
def test_softmax():
    def ref(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    check(lambda x: ub.softmax(x, axis=-1), ref, rand(6, 19, lo=-4, hi=4))


def _conv2d_ref(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - r) // stride + 1, (wd + 2 * pad - s) // stride + 1
    out = np.zeros((n, k, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + r, j * stride:j * stride + s]
            out[:, :, i, j] = np.einsum("ncrs,kcrs->nk", patch, w)
    return out + b[None, :, None, None]


@needs_cross
def test_conv2d_padding_stride():
    def f(x, w, b):
        return ub.conv2d(x, w, b, stride=2, padding=1)

    check(f, lambda x, w, b: _conv2d_ref(x, w, b, 2, 1), rand(2, 3, 11, 10), rand(5, 3, 3, 3), rand(5),
          rtol=1e-4, atol=1e-5)


@needs_cross
def test_mlp_with_weights():
    w1, b1, w2, b2 = rand(20, 48), rand(48), rand(48, 10), rand(10)

    def f(x):  # the weights are constants: entry arguments after the inputs and outputs
        h = ub.relu(x @ w1 + b1)
        return ub.softmax(h @ w2 + b2, axis=-1)

    def ref(x):
        h = np.maximum(x @ w1 + b1, 0)
        z = h @ w2 + b2
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    program = check(f, ref, rand(9, 20), rtol=1e-4, atol=1e-6, threads=4)
    assert len(program.weights) >= 2 and program.memory.workspace_size > 0


@needs_cross
def test_symbolic_batch():
    w = rand(16, 5)
    g = Graph("sym")
    x = g.add_input(TensorType(("batch", 16), "f32"), "x")
    g.outputs = [g.op("softmax", g.op("matmul", x, g.constant(w)), axis=-1)]
    program = compile_graph(g, AARCH64, dims={"batch": (1, 64)})
    with EmulatedProgram(program) as p:
        for n in (1, 6, 17):
            xs = rand(n, 16)
            z = xs.astype(np.float64) @ w
            e = np.exp(z - z.max(-1, keepdims=True))
            (got,) = p.run(xs)
            np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_driver_runs_host_code_natively():
    # the same runner without an emulator: the host target runs the driver directly
    x = rand(4, 9)
    program = compile_fn(lambda x: ub.tanh(x) * 3.0, x, target=host_target())
    (got,) = run_program(program, x)
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)) * 3, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_missing_cross_compiler_names_the_package():
    target = dataclasses.replace(AARCH64, cc="ubique-no-such-gcc")
    if target.runs_natively:
        pytest.skip("a native aarch64 host falls back to its own compiler")
    with pytest.raises(ToolchainError, match="apt-get install gcc-aarch64-linux-gnu"):
        build_driver(target)
    with pytest.raises(ToolchainError, match="UBIQUE_CC_AARCH64"):
        link_shared_for_target([], "unused.so", target)


def test_missing_emulator_names_the_package():
    program = compile_fn(lambda x: x + 1.0, rand(3))
    program.target = dataclasses.replace(AARCH64, emulator=("ubique-no-such-qemu", "-L", "/nowhere"))
    if program.target.runs_natively:
        pytest.skip("a native aarch64 host needs no emulator")
    with pytest.raises(ToolchainError, match="install qemu-user"):
        run_program(program, rand(3))


@needs_cross
def test_failed_run_reports_the_drivers_stderr():
    program = compile_fn(lambda x: x + 1.0, rand(3))
    program.entry = "ubq_no_such_entry"
    with pytest.raises(RuntimeFailure, match="has no entry: ubq_no_such_entry"):
        run_program(program, rand(3))
