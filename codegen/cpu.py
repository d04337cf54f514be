"""CPU backend: LLVM IR text -> optimised module -> object code and assembly for a Target.

Any triple LLVM has a backend for works, not only the host's: the target machine is made from
the Target's triple, cpu and features (PIC, for shared libraries), so an x86-64 host emits
AArch64 objects for get_target("aarch64"); linking them is the target's toolchain's job
(runtime/toolchain.py)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as llvm

from ubique.errors import UnsupportedOpError
from ubique.targets.target import Target


@functools.lru_cache(maxsize=None)
def init_llvm() -> None:
    """Registers every backend built into llvmlite's LLVM (x86, AArch64, RISC-V, NVPTX, ...)."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


@functools.lru_cache(maxsize=None)
def target_machine(target: Target):
    init_llvm()
    try:
        llvm_target = llvm.Target.from_triple(target.triple)
    except RuntimeError as e:
        raise UnsupportedOpError(f"LLVM has no backend for target triple {target.triple}: {e}") from None
    return llvm_target.create_target_machine(cpu=target.cpu, features=target.features, opt=3,
                                             reloc="pic", codemodel="default")


@dataclass
class MachineCode:
    llvm_ir: str      # after optimisation
    obj: bytes


def compile_llvm_ir(text: str, target: Target) -> MachineCode:
    """Parses, verifies and optimises (O3) LLVM IR, then emits object code."""
    tm = target_machine(target)
    mod = llvm.parse_assembly(text)
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return MachineCode(llvm_ir=str(mod), obj=tm.emit_object(mod))


def emit_assembly(optimised_ir: str, target: Target) -> str:
    """Assembly text for already optimised LLVM IR (done on request: it costs as much as codegen)."""
    return target_machine(target).emit_assembly(llvm.parse_assembly(optimised_ir))
