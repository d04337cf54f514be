"""ubique-c-backend: a plug-in that adds the target `c`, whose backend writes portable C99
and builds it with the host's C compiler.

    pip install -e examples/plugins/ubique-c-backend
    ub.compile(graph, target="c")      # or ub.jit(fn, target="c")

Entry points (pyproject.toml): `ubique.targets` c = ubique_c_backend:target and
`ubique.backends` c = ubique_c_backend:CBackend. Only public ubique modules are used.
"""
from __future__ import annotations

import dataclasses
import re

from ubique.codegen.backend import Backend, GeneratedCode, KernelModule, ScheduleHints
from ubique.ir import loop as L
from ubique.runtime.toolchain import compile_c_object
from ubique.targets import Target, host_target

from ubique_c_backend.emit import module_source

__all__ = ["CBackend", "target", "CFLAGS"]
__version__ = "0.1.0"

# -fwrapv: signed integer arithmetic wraps, as LLVM's add/mul do; -ffp-contract=off: no FMA
# contraction, so float results do not depend on the C compiler's mood; -fno-math-errno
# lets sqrt be an instruction (errno is not part of ubique's semantics).
CFLAGS = ("-O2", "-fwrapv", "-ffp-contract=off", "-fno-math-errno")


def target() -> Target:
    """The `c` target: this host's triple, one float32 lane (no SIMD layouts), scalar loops."""
    return Target(name="c", triple=host_target().triple, cpu="generic", features="", vector_bits=32,
                  codegen="c", device="cpu")


class CBackend(Backend):
    """Loop IR -> C99 source (emit.py) -> an object file built by the target's C compiler."""

    name = "c"
    extern_languages = ("c",)

    def schedule(self, kernel: L.Kernel, hints: ScheduleHints, target: Target) -> L.Kernel:
        # plain loops: no vector tiles, no threads; the C compiler optimises them
        return super().schedule(kernel, dataclasses.replace(hints, lanes=1, threads=1), target)

    def generate(self, module: KernelModule, target: Target) -> GeneratedCode:
        source = module_source(module, self.kernel_names(module))
        return GeneratedCode("c", source, compile_c_object(source, target, CFLAGS))

    def assembly(self, code: GeneratedCode, target: Target) -> str:
        # `-S` after compile_c_object's `-c` makes the compiler stop at assembly text
        return compile_c_object(code.source, target, (*CFLAGS, "-S")).decode(errors="replace")

    @staticmethod
    def kernel_names(module: KernelModule) -> dict[str, str]:
        """Loop-IR kernel name -> a unique C identifier (extern kernels keep theirs)."""
        taken = {module.entry} | {x.name for x in module.externs}
        names = {}
        for k in module.kernels:
            base = ident = re.sub(r"\W", "_", k.name)
            n = 1
            while ident in taken or ident[:1].isdigit():
                ident, n = f"k_{base}_{n}", n + 1
            taken.add(ident)
            names[k.name] = ident
        return names
