"""ubique targets for 64-bit RISC-V Linux, compiled by ubique's built-in LLVM CPU backend
(codegen "llvm-cpu": LLVM has a RISC-V backend), linked by the GNU cross toolchain and run
here under qemu-riscv64.

    riscv64     RV64GC + the V extension (RVV 1.0), VLEN >= 128: fixed-width vectors of
                128 bits that LLVM lowers to RVV (vsetivli/vle32/vfmacc...). The code is
                correct on any VLEN >= 128 (it sets its own vector length). Boards: SpacemiT
                K1/M1 (Banana Pi BPI-F3, Milk-V Jupiter), Kendryte K230, RVA23 cores.
    riscv64gc   plain RV64GC, no vectors: for cores without RVV 1.0 (SiFive U74: VisionFive 2,
                HiFive Unmatched; T-Head C910/C920, whose vectors are the older 0.7.1 draft).

Both use the standard Linux ABI lp64d (hard double float): LLVM picks it by default for a
riscv64 triple with +d, and riscv64-linux-gnu-gcc links only lp64d objects.

Only public ubique names are used: a plug-in is an ordinary package, registered through the
entry-point group "ubique.targets" (see pyproject.toml).
"""
from __future__ import annotations

from ubique.targets import Target

__all__ = ["target", "scalar_target", "TRIPLE", "RV64GC", "QEMU_VECTOR_CPU"]

TRIPLE = "riscv64-unknown-linux-gnu"
RV64GC = "+m,+a,+f,+d,+c"                    # G = IMAFD (+Zicsr, +Zifencei), C = compressed
RVV = RV64GC + ",+v,+zvl128b"                # V = RVV 1.0; zvl128b: VLEN is at least 128 bits
# qemu-user's default rv64 CPU has no V extension: turn it on (RVV 1.0, 128-bit registers)
QEMU_VECTOR_CPU = ("-cpu", "rv64,v=true,vlen=128")

_COMMON = dict(triple=TRIPLE, cpu="generic-rv64", codegen="llvm-cpu", device="cpu",
               vector_math="",                 # glibc has no vector math ABI for RISC-V: libm per lane
               cc="riscv64-linux-gnu-gcc", cc_package="gcc-riscv64-linux-gnu",
               emulator_package="qemu-user")
_QEMU = ("qemu-riscv64", "-L", "/usr/riscv64-linux-gnu")


def target() -> Target:
    """64-bit RISC-V Linux with RVV 1.0 (VLEN >= 128): 128-bit vectors, run under
    `qemu-riscv64 -cpu rv64,v=true,vlen=128`."""
    return Target(name="riscv64", features=RVV, vector_bits=128, emulator=(*_QEMU, *QEMU_VECTOR_CPU), **_COMMON)


def scalar_target() -> Target:
    """64-bit RISC-V Linux without vectors (RV64GC). vector_bits=64: the schedules' register
    tiles then fit RISC-V's 32 floating-point registers (LLVM splits wider vectors into
    scalars; at 128 bits the matmul kernel spills 3.6x more)."""
    return Target(name="riscv64gc", features=RV64GC, vector_bits=64, emulator=_QEMU, **_COMMON)
