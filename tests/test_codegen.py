"""CPU code generation: vector width follows the target (LLVM IR vector types and the
registers in the assembly), for the host and for explicitly narrower x86-64 targets."""
from __future__ import annotations

import re

import numpy as np
import pytest

import ubique as ub
from ubique.targets import Target, host_target

HOST = host_target()
IS_X86 = HOST.triple.startswith("x86_64")
HAS_AVX2 = "+avx2" in HOST.features.split(",")
VECTOR_REGS = {512: "zmm", 256: "ymm", 128: "xmm"}


def elementwise(x):
    return ub.exp(x) * 2.0 + x


def vector_types(llvm_ir: str) -> set[str]:
    return set(re.findall(r"<\d+ x [a-z0-9]+>", llvm_ir))


def registers(asm: str) -> set[str]:
    return set(re.findall(r"%([xyz]mm)\d+", asm))


def lowered(fn, dtype, target=None, shape=(64, 64)):
    x = (np.arange(np.prod(shape)).reshape(shape) % 7).astype(dtype)
    f = ub.jit(fn, target=target)
    low = f.lower(x)
    return low, f, x


def _expected_lanes(bits, elem_bits):
    return bits // elem_bits


needs_wide_host = pytest.mark.skipif(HOST.vector_bits not in (256, 512),
                                     reason=f"host has {HOST.vector_bits}-bit vectors (no AVX2/AVX-512)")


def test_host_vector_bits_match_features():
    feats = HOST.features.split(",")
    if not IS_X86:
        pytest.skip("x86-64 feature detection only")
    if "+avx512f" in feats:
        assert HOST.vector_bits == 512
    elif "+avx2" in feats or "+avx" in feats:
        assert HOST.vector_bits == 256
    else:
        assert HOST.vector_bits == 128


@needs_wide_host
def test_host_float32_elementwise_uses_full_width_vectors():
    low, f, x = lowered(elementwise, np.float32)
    lanes = HOST.vector_bits // 32
    assert f"<{lanes} x float>" in low.llvm_ir, sorted(vector_types(low.llvm_ir))
    assert VECTOR_REGS[HOST.vector_bits] in registers(low.asm)
    np.testing.assert_allclose(f(x), np.exp(x) * 2 + x, rtol=1e-6)


@needs_wide_host
def test_host_float64_elementwise_uses_full_width_vectors():
    low, f, x = lowered(elementwise, np.float64)
    lanes = HOST.vector_bits // 64
    assert f"<{lanes} x double>" in low.llvm_ir, sorted(vector_types(low.llvm_ir))
    assert VECTOR_REGS[HOST.vector_bits] in registers(low.asm)
    np.testing.assert_allclose(f(x), np.exp(x) * 2 + x, rtol=1e-12)


@pytest.mark.skipif(HOST.vector_bits != 512, reason="host has no AVX-512")
def test_avx512_vector_types():
    f32, _, _ = lowered(elementwise, np.float32)
    f64, _, _ = lowered(elementwise, np.float64)
    assert "<16 x float>" in f32.llvm_ir and "zmm" in registers(f32.asm)
    assert "<8 x double>" in f64.llvm_ir and "zmm" in registers(f64.asm)


@needs_wide_host
def test_host_int32_and_float16_vectors():
    def add_mul(x):
        return x * x + x

    low, f, x = lowered(add_mul, np.int32)
    assert f"<{HOST.vector_bits // 32} x i32>" in low.llvm_ir, sorted(vector_types(low.llvm_ir))
    np.testing.assert_array_equal(f(x), x * x + x)
    # float16 is loaded as half, computed in float32, with float32-wide vectors
    low, f, x = lowered(add_mul, np.float16)
    lanes = HOST.vector_bits // 32
    assert f"<{lanes} x half>" in low.llvm_ir and f"<{lanes} x float>" in low.llvm_ir, \
        sorted(vector_types(low.llvm_ir))
    np.testing.assert_array_equal(f(x), x * x + x)


def _narrow_target(bits: int) -> Target:
    if bits == 128:
        return Target(name="x86_64", triple=HOST.triple, cpu="x86-64", features="", vector_bits=128)
    return Target(name="x86_64", triple=HOST.triple, cpu="haswell", features="+avx,+avx2,+fma,+f16c",
                  vector_bits=256)


@pytest.mark.skipif(not IS_X86, reason="x86-64 targets")
@pytest.mark.parametrize("bits", [128, 256])
@pytest.mark.parametrize("dtype,elem,bits_per", [(np.float32, "float", 32), (np.float64, "double", 64)])
def test_explicit_target_sets_vector_width(bits, dtype, elem, bits_per):
    if bits == 256 and not HAS_AVX2:
        pytest.skip("host cannot run AVX2 code")
    target = _narrow_target(bits)
    low, f, x = lowered(elementwise, dtype, target=target)
    types = vector_types(low.llvm_ir)
    assert f"<{bits // bits_per} x {elem}>" in types, sorted(types)
    wider = [t for t in types if int(t[1:].split(" x ")[0]) * bits_per > bits and elem in t]
    assert not wider, f"vectors wider than the {bits}-bit target: {wider}"
    regs = registers(low.asm)
    assert VECTOR_REGS[bits] in regs
    assert "zmm" not in regs and (bits == 256 or "ymm" not in regs)
    np.testing.assert_allclose(f(x), np.exp(x) * 2 + x, rtol=1e-6)


def test_kernels_and_entry_are_defined():
    @ub.jit
    def two_kernels(x, w):
        return ub.exp(x) @ w

    x, w = np.ones((4, 8), np.float32), np.ones((8, 3), np.float32)
    low = two_kernels.lower(x, w)
    assert low.num_kernels == 2
    defined = set(re.findall(r"define\s[^@]*@\"?([\w.]+)\"?\(", low.llvm_ir))
    kernels = set(re.findall(r"^kernel (\w+)\(", low.loop_ir, re.M))
    assert len(kernels) == 2 and kernels <= defined, (kernels, defined)
    assert any(name.endswith("_run") for name in defined)
    for name in kernels:
        assert re.search(rf"^\"?{re.escape(name)}\"?:", low.asm, re.M), name


_ONE_LANE_STORES = """
define void @f(ptr %x, ptr %out, <4 x i1> %m) {
  %v = load <4 x i64>, ptr %x, align 8
  %t = trunc <4 x i64> %v to <4 x i8>
  %o3 = getelementptr i8, ptr %out, i64 3
  call void @llvm.masked.store.v4i8.p0(<4 x i8> %t, ptr align 1 %out, <4 x i1> <i1 true, i1 false, i1 false, i1 false>)
  tail call void @llvm.masked.store.v4i8.p0(<4 x i8> %t, ptr align 1 %o3, <4 x i1> <i1 false, i1 false, i1 false, i1 true>), !noalias !0
  call void @llvm.masked.store.v4i8.p0(<4 x i8> %t, ptr align 1 %out, <4 x i1> <i1 true, i1 true, i1 false, i1 false>)
  call void @llvm.masked.store.v4i8.p0(<4 x i8> %t, ptr align 1 %out, <4 x i1> %m)
  %f = sitofp <4 x i64> %v to <4 x float>
  call void @llvm.masked.store.v4f32.p0(<4 x float> %f, ptr nonnull align 4 %out, <4 x i1> <i1 false, i1 true, i1 false, i1 false>)
  call void @llvm.masked.store.v4i1.p0(<4 x i1> %m, ptr align 1 %out, <4 x i1> <i1 true, i1 false, i1 false, i1 false>)
  ret void
}
declare void @llvm.masked.store.v4i8.p0(<4 x i8>, ptr, <4 x i1>)
declare void @llvm.masked.store.v4f32.p0(<4 x float>, ptr, <4 x i1>)
declare void @llvm.masked.store.v4i1.p0(<4 x i1>, ptr, <4 x i1>)
!0 = !{!1}
!1 = distinct !{!1, !2}
!2 = distinct !{!2}
"""


def test_one_lane_masked_stores_become_plain_stores():
    """codegen/llvm_workarounds.py: masked stores with one constant lane are spelled as an
    extract and a store of that lane; others stay; on AVX-512 the result stores single bytes."""
    import llvmlite.binding as llvm

    from ubique.codegen.cpu import init_llvm
    from ubique.codegen.llvm_workarounds import split_single_lane_masked_stores

    fixed = split_single_lane_masked_stores(_ONE_LANE_STORES)
    assert fixed.count("@llvm.masked.store.v4i8.p0(") == 3  # the declaration and the two stores kept
    assert "extractelement <4 x i8> %t, i64 0" in fixed and "extractelement <4 x i8> %t, i64 3" in fixed
    assert "getelementptr i8, ptr %o3, i64 3" in fixed
    assert "extractelement <4 x float> %f, i64 1" in fixed and "getelementptr float, ptr %out, i64 1" in fixed
    assert fixed.count("@llvm.masked.store.v4i1.p0(") == 2  # bit-packed lanes: left as they are
    assert split_single_lane_masked_stores("define void @g() {\n  ret void\n}\n") == "define void @g() {\n  ret void\n}\n"
    init_llvm()
    tm = llvm.Target.from_triple("x86_64-unknown-linux-gnu").create_target_machine(
        cpu="x86-64", features="+avx512f,+avx512bw,+avx512vl", opt=3)
    mod = llvm.parse_assembly(fixed)
    mod.verify()
    asm = tm.emit_assembly(mod)
    wide_scalar_stores = re.findall(r"mov[lq]\s+%\w+, \d*\(%rsi\)", asm)
    assert not wide_scalar_stores, asm
