"""`Target`: what a compilation is for (triple, CPU, features, vector width, codegen, device)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str              # registry name: "x86_64", "aarch64", ...
    triple: str            # LLVM target triple
    cpu: str               # LLVM CPU name ("znver4", "generic", ...)
    features: str          # LLVM feature string ("+avx2,+fma,...")
    vector_bits: int       # SIMD register width the schedules vectorize for
    codegen: str = "llvm-cpu"   # which codegen backend compiles for it
    device: str = "cpu"         # which runtime device runs it
    num_cores: int = 0          # 0: ask the runtime
    vector_math: str = ""       # vector math library calls may use: "libmvec" (glibc) or ""

    @property
    def key(self) -> str:
        """Identifies the code this target produces (part of every cache key)."""
        text = "|".join([self.name, self.triple, self.cpu, self.features, str(self.vector_bits), self.codegen,
                         self.vector_math])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def link_libs(self) -> tuple[str, ...]:
        """Libraries the emitted code calls into (math functions the CPU has no instruction for)."""
        return ("m", "mvec") if self.vector_math == "libmvec" else ("m",)

    def describe(self) -> str:
        return f"{self.name} ({self.triple}, cpu={self.cpu}, {self.vector_bits}-bit vectors)"
