"""The RISC-V plug-in (examples/plugins/ubique-riscv): targets `riscv64` (plain RV64GC, the
portable baseline) and `riscv64-rvv` (RV64GC + RVV 1.0) registered through the "ubique.targets"
entry points, compiled by the built-in LLVM CPU backend, linked by riscv64-linux-gnu-gcc and run
under qemu-riscv64; every model is compared with the host build of the same graph, on both targets.

Skipped unless the plug-in is installed (pip install -e examples/plugins/ubique-riscv --no-deps)
and the cross compiler and qemu are (scripts/install-riscv-deps.sh)."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ubique as ub
from ubique.compiler.pipeline import compile_graph
from ubique.errors import ModelError, RuntimeFailure
from ubique.ir.graph import Graph, TensorType
from ubique.runtime.emulator import run_program
from ubique.targets import get_target, origins

from tolerances import assert_close

ubique_riscv = pytest.importorskip(
    "ubique_riscv", reason="the ubique-riscv plug-in is not installed "
                           "(pip install -e examples/plugins/ubique-riscv --no-deps --no-build-isolation)")
_missing = [tool for tool in ("riscv64-linux-gnu-gcc", "qemu-riscv64") if shutil.which(tool) is None]
if not Path("/usr/riscv64-linux-gnu/include/stdint.h").is_file():  # the C library linked and run under qemu -L
    _missing.append("the riscv64 C library")
if _missing:
    pytest.skip(f"{' and '.join(_missing)} not installed (Debian: gcc-riscv64-linux-gnu, libc6-dev-riscv64-cross, "
                "qemu-user; scripts/install-riscv-deps.sh installs them)", allow_module_level=True)

if not {"riscv64", "riscv64-rvv"} <= set(origins()):
    pytest.skip("ubique_riscv is importable but its entry points are not registered: install it with pip "
                "(pip install -e examples/plugins/ubique-riscv --no-deps --no-build-isolation)",
                allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "c"  # run_model.c
RV = get_target("riscv64")          # RV64GC, no vectors
RVV = get_target("riscv64-rvv")     # RV64GCV, VLEN >= 128
TARGETS = ("riscv64", "riscv64-rvv")
EM_RISCV = 243
EF_RISCV_RVC, EF_RISCV_FLOAT_ABI_DOUBLE = 0x1, 0x4

RNG = np.random.default_rng(0)


def rand(*shape, scale=1.0):
    return (RNG.uniform(-1, 1, size=shape) * scale).astype(np.float32)


def trace(fn, *args) -> Graph:
    return ub.jit(fn).trace(*args)[0]


def check_vs_host(graph, inputs, target="riscv64", n=1, dims=None):
    """Runs `graph` compiled for `target` under qemu and compiled for this host; the outputs
    agree within float32 tolerance: one rounding per elementwise op (tolerances.ELEMENTWISE)
    plus, for `n` terms summed per output, n * eps * scale, where scale (the sum of |terms|)
    is taken as |result| + 1: inputs are O(1) and weights scaled by 1/sqrt(fan-in)."""
    got = ub.compile(graph, target=target, dims=dims).run(inputs)
    want = ub.compile(graph, dims=dims).run(inputs)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, n=n, scale=np.abs(w.astype(np.float64)) + 1 if w.dtype.kind == "f" else None,
                     msg=f"{graph.name} output {k} on {target}")
    return got


def elf_header(data: bytes) -> tuple[int, int, int]:
    """(e_type, e_machine, e_flags) of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    (e_flags,) = struct.unpack_from("<I", data, 48)
    return e_type, e_machine, e_flags


# ---------------------------------------------------------------------------------------------
# the plug-in and its targets
# ---------------------------------------------------------------------------------------------
def test_targets_come_from_the_plugin():
    where = origins()
    for name, attr in (("riscv64", "target"), ("riscv64-rvv", "rvv_target")):
        assert where[name].startswith("plug-in ubique-riscv "), where[name]
        assert f"entry point {name} = ubique_riscv:{attr}" in where[name]
    assert "riscv64gc" not in where and not hasattr(ubique_riscv, "scalar_target")  # the old names are gone
    for t, bits in ((RV, 64), (RVV, 128)):
        assert (t.triple, t.arch, t.codegen, t.device, t.vector_bits) == (
            "riscv64-unknown-linux-gnu", "riscv64", "llvm-cpu", "cpu", bits), t.name
        assert {"+m", "+a", "+f", "+d", "+c"} <= set(t.features.split(","))
        assert t.cc == "riscv64-linux-gnu-gcc" and t.emulator[:3] == ("qemu-riscv64", "-L", "/usr/riscv64-linux-gnu")
        assert not t.runs_natively
    # the baseline is plain RV64GC, run by qemu's default rv64 CPU; the vector target asks for V
    assert not {"+v", "+zvl128b"} & set(RV.features.split(",")) and RV.emulator == RV.emulator[:3]
    assert {"+v", "+zvl128b"} <= set(RVV.features.split(",")) and "v=true" in " ".join(RVV.emulator)
    assert len({RV.key, RVV.key, ub.targets.host_target().key}) == 3


def test_plugin_uses_only_public_ubique_names():
    tree = ast.parse(inspect.getsource(ubique_riscv))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ubique"):
            names = [*node.module.split("."), *(a.name for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [part for a in node.names for part in a.name.split(".")]
        else:
            continue
        assert not any(n.startswith("_") for n in names), ast.unparse(node)


# ---------------------------------------------------------------------------------------------
# code: a RISC-V object in the Linux ABI; RVV instructions only in the vector target
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [RV, RVV], ids=TARGETS)
def test_object_is_riscv_elf_lp64d(target):
    obj = compile_graph(trace(lambda x: ub.exp(x) + 1.0, rand(5, 7)), target).obj
    e_type, e_machine, e_flags = elf_header(obj)
    assert (e_type, e_machine) == (1, EM_RISCV)  # ET_REL
    # lp64d (hard double float, what riscv64-linux-gnu's glibc is built for) and compressed code
    assert e_flags & 0x6 == EF_RISCV_FLOAT_ABI_DOUBLE and e_flags & EF_RISCV_RVC, hex(e_flags)


def test_vector_target_emits_rvv_scalar_does_not():
    g = trace(lambda x, w: x @ w, rand(8, 32), rand(32, 16))
    rvv, scalar = compile_graph(g, RVV).asm, compile_graph(g, RV).asm
    assert "vsetivli" in rvv or "vsetvli" in rvv
    assert "vfmacc" in rvv or "vfmadd" in rvv, rvv[:2000]
    assert "vsetvli" not in scalar and "vsetivli" not in scalar and "fmadd.s" in scalar


# ---------------------------------------------------------------------------------------------
# models compiled for riscv64 and riscv64-rvv, run under qemu, compared with the host build
# ---------------------------------------------------------------------------------------------
riscv_targets = pytest.mark.parametrize("target", TARGETS)


@riscv_targets
def test_mlp(target):
    w1, b1, w2, b2 = rand(32, 64, scale=32 ** -0.5), rand(64), rand(64, 10, scale=64 ** -0.5), rand(10)

    def mlp(x):
        h = ub.gelu(x @ w1 + b1)
        return ub.softmax(h @ w2 + b2, axis=-1), ub.layer_norm(h)

    check_vs_host(trace(mlp, rand(9, 32)), [rand(9, 32)], target=target, n=64)


@riscv_targets
def test_cnn_conv_pool_residual(target):
    w1, b1 = rand(8, 3, 3, 3, scale=27 ** -0.5), rand(8)
    w2, b2 = rand(8, 8, 3, 3, scale=72 ** -0.5), rand(8)
    wf, bf = rand(8, 5, scale=8 ** -0.5), rand(5)

    def cnn(x):
        h = ub.relu(ub.conv2d(x, w1, b1, padding=1))
        h = ub.relu(ub.conv2d(h, w2, b2, padding=1) + h)            # residual block
        h = ub.max_pool2d(h, 2)                                     # 14x13 -> 7x6 (floor)
        h = ub.avg_pool2d(ub.conv2d(h, w2, b2, stride=2, padding=1), 2, ceil_mode=True)
        return ub.global_avg_pool(h).reshape(2, 8) @ wf + bf

    x = rand(2, 3, 14, 13)
    check_vs_host(trace(cnn, x), [x], target=target, n=3 * 72)


@riscv_targets
def test_transcendental_math(target):
    def f(x, y):
        h = ub.exp(x) * y - ub.tanh(x * 2.0) + ub.erf(y)
        return ub.sqrt(ub.abs(h)) + ub.sigmoid(x) / (ub.log(y + 2.0) + 1.0), ub.sin(x) * ub.cos(y) + x ** 3.0

    x, y = rand(7, 13) * 3, rand(7, 13)
    # libm per lane on both: scalar calls on riscv64, vector lanes extracted on riscv64-rvv
    check_vs_host(trace(f, x, y), [x, y], target=target)


@riscv_targets
def test_int32(target):
    def f(a, b):
        return (ub.sum(a * b + 3, axis=1), ub.where(a > b, a - b, ub.maximum(a, b) * 7),
                ub.cast(ub.max(a, axis=0), "f32") / 3.0)

    a = RNG.integers(-50000, 50000, (6, 11)).astype(np.int32)  # a * b wraps modulo 2**32 alike
    b = RNG.integers(-50000, 50000, (6, 11)).astype(np.int32)
    got = check_vs_host(trace(f, a, b), [a, b], target=target)
    assert got[0].dtype.kind == "i" and got[1].dtype == np.int32  # sum widens like numpy


def test_float16_round_trips_exactly_on_riscv64():
    """float32 -> float16 -> float32 on plain RV64GC (no Zfh/Zfhmin: ubique converts with integer
    ops, no libgcc __truncsfhf2/__extendhfsf2), bit for bit like numpy's astype: every float16
    value, every midpoint between neighbours (ties to even, in the subnormal range too), float32
    subnormals, overflow to inf, +-inf, +-0, NaN and random bit patterns."""
    specials = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 65504.0, 65519.996, 65520.0,
                           -65520.0, 1e9, -3.4e38, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25, 2.0 ** -26,
                           2.0 ** -14 - 2.0 ** -25, 1e-45, -1e-45, 1e-40, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11,
                           -(1 + 2.0 ** -11), 2049.0, 2051.0])
    halves = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    ties = (halves.view(np.uint32) + np.uint32(1 << 12)).view(np.float32)  # halfway to the next float16 up
    noise = np.random.default_rng(1).integers(0, 2 ** 32, 4096, dtype=np.uint32).view(np.float32)
    x = np.concatenate([specials, halves, ties, noise])
    g = trace(lambda a: (ub.cast(a, "f16"), ub.cast(ub.cast(a, "f16"), "f32")), x)
    half, back = ub.compile(g, target="riscv64").run([x])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert half.dtype == np.float16 and back.dtype == np.float32
    # NaN stays NaN; its payload is not portable (numpy keeps the top bits, ubique returns the quiet NaN)
    nan = np.isnan(x)
    assert np.isnan(half[nan]).all() and np.isnan(back[nan]).all() and nan.sum() > 4000
    ok = ~nan
    bad = np.nonzero(half.view(np.uint16)[ok] != want.view(np.uint16)[ok])[0]
    assert bad.size == 0, [(hex(x[ok].view(np.uint32)[i]), hex(half[ok].view(np.uint16)[i]),
                            hex(want[ok].view(np.uint16)[i])) for i in bad[:10]]
    np.testing.assert_array_equal(back.view(np.uint32)[ok], want.astype(np.float32).view(np.uint32)[ok])


@riscv_targets
def test_symbolic_batch(target):
    w = rand(16, 5, scale=0.25)
    g = Graph("sym")
    x = g.add_input(TensorType(("batch", 16), "f32"), "x")
    g.outputs = [g.op("softmax", g.op("tanh", g.op("matmul", x, g.constant(w))), axis=-1)]
    model, host = ub.compile(g, target=target, dims={"batch": (1, 8)}), ub.compile(g, dims={"batch": (1, 8)})
    for n in (1, 7):
        xs = rand(n, 16)
        (got,), (want,) = model.run([xs]), host.run([xs])
        assert got.shape == (n, 5)
        assert_close(got, want, n=16, scale=np.abs(want.astype(np.float64)) + 1, msg=f"batch {n}")


def test_rvv_code_runs_on_any_vlen_and_needs_the_v_extension():
    g = trace(lambda x, w: ub.relu(x @ w), rand(13, 29), rand(29, 37))
    x, w = rand(13, 29), rand(29, 37)
    program = compile_graph(g, RVV)
    (want,) = ub.compile(g).run([x, w])
    # VLEN 256: the fixed-width code sets its own vector length, so a wider machine runs it alike
    program.target = dataclasses.replace(RVV, emulator=(*RVV.emulator[:3], "-cpu", "rv64,v=true,vlen=256"))
    assert_close(run_program(program, x, w)[0], want, n=29, scale=np.abs(want) + 1)
    # a core without V: the vector instructions are illegal (hence the portable riscv64 target)
    program.target = dataclasses.replace(RVV, emulator=RVV.emulator[:3])
    with pytest.raises(RuntimeFailure, match="exit status -4"):  # SIGILL
        run_program(program, x, w)


# ---------------------------------------------------------------------------------------------
# ahead of time: `ubique build --target riscv64`, run by the C example under qemu
# ---------------------------------------------------------------------------------------------
def test_ubique_build_makes_a_riscv_library(tmp_path, capsys):
    from ubique.cli import main
    from ubique.runtime.aot import include_dir

    w, b = rand(12, 6, scale=12 ** -0.5), rand(6)
    g = trace(lambda x: ub.tanh(x @ w + b), rand(3, 12))
    ub.save(g, tmp_path / "m.ubq")
    lib = tmp_path / "libm-riscv64.so"
    assert main(["build", str(tmp_path / "m.ubq"), "--target", "riscv64", "-o", str(lib)]) == 0
    assert "weights embedded" in capsys.readouterr().out
    e_type, e_machine, e_flags = elf_header(lib.read_bytes()[:64])
    assert (e_type, e_machine) == (3, EM_RISCV) and e_flags & 0x6 == EF_RISCV_FLOAT_ABI_DOUBLE  # ET_DYN
    with pytest.raises(ModelError, match="built for riscv64"):
        ub.load(lib)  # not on this host

    # examples/c/run_model.c, cross-compiled, runs the library under qemu through the C API
    exe = tmp_path / "run_model"
    subprocess.run([RV.cc, "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{include_dir()}", "-o", exe,
                    EXAMPLE / "run_model.c", "-ldl"], check=True)
    x = rand(3, 12)
    x.tofile(tmp_path / "x.bin")
    (tmp_path / "out").mkdir()
    proc = subprocess.run([*RV.emulator, exe, lib, tmp_path / "x.bin", "3x12", "-o", tmp_path / "out"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = np.fromfile(tmp_path / "out" / "out0.bin", np.float32).reshape(3, 6)
    (want,) = ub.compile(g).run([x])
    assert_close(got, want, n=12, scale=np.abs(want) + 1)
