"""`Target`: what a compilation is for (triple, CPU, features, vector width, codegen, device),
and how its code is built and run (which C toolchain links it, whether this host runs it)."""
from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field, fields

# Fields marked NOT_CODE only say how to build tools or run code on this host: they do not
# change the code or library a target produces, so they stay out of `Target.key`.
NOT_CODE = {"key": False}

_MACHINE_ARCH = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """This machine's architecture, spelled like the first word of an LLVM triple."""
    machine = platform.machine().lower()
    return _MACHINE_ARCH.get(machine, machine)


@dataclass(frozen=True)
class Target:
    """A compilation target. Only the first five fields are required; the defaults describe
    native code for this host, linked by the host C compiler.

    name          registry name: "host", "x86_64", "aarch64", ...
    triple        LLVM target triple ("aarch64-unknown-linux-gnu")
    cpu           LLVM CPU name ("znver4", "generic", "cortex-a72", ...)
    features      LLVM feature string ("+avx2,+fma", "+neon", ...)
    vector_bits   SIMD register width the schedules vectorize for
    codegen       which codegen backend compiles for it ("llvm-cpu")
    device        which runtime device runs it ("cpu")
    num_cores     cores the schedules plan parallel work for; 0: a default (the runtime's pool
                  decides the actual thread count)
    vector_math   vector math library the emitted code may call: "libmvec" (glibc's vector
                  ABI functions; needs a glibc that has them for the triple's architecture)
                  or "" (scalar libm calls per lane)
    cc            C compiler driver, as a command line, that builds the native runtime and
                  links objects for this target; "" means the host's (runtime.toolchain.find_cc:
                  $CC, cc, gcc or clang). A cross target names its cross compiler, e.g.
                  "aarch64-linux-gnu-gcc". $UBIQUE_CC_<NAME> (e.g. UBIQUE_CC_AARCH64)
                  overrides it.
    cc_package    Debian package that provides `cc`, named in the error when it is missing
    emulator      command prefix that runs this target's Linux executables on a host of
                  another architecture, e.g. ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu");
                  () when there is none. Not used where the target runs natively.
    emulator_package  Debian package that provides the emulator, named in errors
    """
    name: str
    triple: str
    cpu: str
    features: str
    vector_bits: int
    codegen: str = "llvm-cpu"
    device: str = "cpu"
    num_cores: int = 0
    vector_math: str = ""
    cc: str = ""
    cc_package: str = field(default="", metadata=NOT_CODE)
    emulator: tuple[str, ...] = field(default=(), metadata=NOT_CODE)
    emulator_package: str = field(default="", metadata=NOT_CODE)

    @property
    def key(self) -> str:
        """Identifies the code this target produces (part of every cache key): every field
        except those marked NOT_CODE, so a field a plug-in adds is covered by default."""
        text = "|".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                        if f.metadata.get("key", True))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def arch(self) -> str:
        """The architecture: the triple's first word ("x86_64", "aarch64", "riscv64", ...)."""
        return self.triple.split("-", 1)[0]

    @property
    def runs_natively(self) -> bool:
        """Whether this host's CPU runs the target's code directly (same architecture; CPU
        features are not checked). Otherwise it runs only under `emulator`, if any."""
        return self.device == "cpu" and self.arch == host_arch()

    @property
    def vector_registers(self) -> int:
        """Architectural vector registers: 32 with AVX-512, on AArch64 and RISC-V; 16 on
        other x86-64. Register tiles keep a few free for operands."""
        if self.arch == "x86_64":
            return 32 if self.vector_bits >= 512 else 16
        return 32

    @property
    def link_libs(self) -> tuple[str, ...]:
        """Libraries the emitted code calls into (math functions the CPU has no instruction for)."""
        return ("m", "mvec") if self.vector_math == "libmvec" else ("m",)

    def describe(self) -> str:
        return f"{self.name} ({self.triple}, cpu={self.cpu}, {self.vector_bits}-bit vectors)"
