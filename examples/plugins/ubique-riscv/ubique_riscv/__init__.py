"""ubique targets for 64-bit RISC-V Linux, compiled by ubique's built-in LLVM CPU backend
(codegen "llvm-cpu": LLVM has a RISC-V backend), linked by the GNU cross toolchain and run
here under qemu-riscv64.

    riscv64       plain RV64GC, no vectors: the portable baseline, like ubique's aarch64
                  (generic ARMv8-A). Every RISC-V Linux board runs it, including the many
                  without RVV 1.0: SiFive U74 (StarFive VisionFive 2, HiFive Unmatched), T-Head
                  C910/C920 (whose vectors are the older 0.7.1 draft, not RVV 1.0).
    riscv64-rvv   RV64GCV: RV64GC + the V extension (RVV 1.0), VLEN >= 128: fixed-width vectors
                  of 128 bits that LLVM lowers to RVV (vsetivli/vle32/vfmacc...). The code is
                  correct on any VLEN >= 128 (it sets its own vector length); a core without V
                  stops on an illegal instruction. Boards: SpacemiT K1/M1 (Banana Pi BPI-F3,
                  Milk-V Jupiter), Kendryte K230, RVA23 cores.

riscv64-rvv under emulation needs qemu >= 8 for casts from float to a narrower integer
(float32 -> int8/uint8, float64 -> int32; also avg_pool2d and resize on integer tensors, which
narrow float64 back to int32): LLVM emits the RVV 1.0 narrowing conversions vfncvt.rtz.x.f.w /
vfncvt.rtz.xu.f.w for them, valid code on which qemu 7.2 (Debian bookworm) aborts (an assertion
in target/riscv/translate.c, decode_save_opc) -- a qemu bug. The scalar riscv64 target passes
the whole conformance suite under qemu 7.2.

Both use the standard Linux ABI lp64d (hard double float): LLVM picks it by default for a
riscv64 triple with +d, and riscv64-linux-gnu-gcc links only lp64d objects.

Only public ubique names are used: a plug-in is an ordinary package, registered through the
entry-point group "ubique.targets" (see pyproject.toml).
"""
from __future__ import annotations

from ubique.targets import Target

__all__ = ["target", "rvv_target", "TRIPLE", "RV64GC", "RV64GCV", "QEMU_VECTOR_CPU"]

TRIPLE = "riscv64-unknown-linux-gnu"
RV64GC = "+m,+a,+f,+d,+c"                    # G = IMAFD (+Zicsr, +Zifencei), C = compressed
RV64GCV = RV64GC + ",+v,+zvl128b"            # V = RVV 1.0; zvl128b: VLEN is at least 128 bits
# qemu-user's default rv64 CPU has no V extension: turn it on (RVV 1.0, 128-bit registers)
QEMU_VECTOR_CPU = ("-cpu", "rv64,v=true,vlen=128")

_COMMON = dict(triple=TRIPLE, cpu="generic-rv64", codegen="llvm-cpu", device="cpu",
               vector_math="",                 # glibc has no vector math ABI for RISC-V: libm per lane
               cc="riscv64-linux-gnu-gcc", cc_package="gcc-riscv64-linux-gnu",
               emulator_package="qemu-user")
_QEMU = ("qemu-riscv64", "-L", "/usr/riscv64-linux-gnu")


def target() -> Target:
    """64-bit RISC-V Linux, plain RV64GC (no vectors): runs on every RISC-V Linux board.
    vector_bits=64: the schedules' register tiles then fit RISC-V's 32 floating-point
    registers (LLVM splits wider vectors into scalars; at 128 bits the matmul kernel spills
    3.6x more)."""
    return Target(name="riscv64", features=RV64GC, vector_bits=64, emulator=_QEMU, **_COMMON)


def rvv_target() -> Target:
    """64-bit RISC-V Linux with RVV 1.0 (RV64GCV, VLEN >= 128): 128-bit vectors, run under
    `qemu-riscv64 -cpu rv64,v=true,vlen=128` (qemu >= 8 for float -> narrower int casts)."""
    return Target(name="riscv64-rvv", features=RV64GCV, vector_bits=128, emulator=(*_QEMU, *QEMU_VECTOR_CPU),
                  **_COMMON)
