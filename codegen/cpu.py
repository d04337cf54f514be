"""CPU backend: LLVM IR text -> optimised module -> object code and assembly for a Target.

Any triple LLVM has a backend for works, not only the host's: the target machine is made from
the Target's triple, cpu and features (PIC, for shared libraries), so an x86-64 host emits
AArch64 objects for get_target("aarch64"); linking them is the target's toolchain's job
(runtime/toolchain.py)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as llvm

from ubique.codegen.backend import Backend, GeneratedCode, KernelModule, register_backend
from ubique.codegen.llvm_workarounds import split_single_lane_masked_stores
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


def compile_llvm_ir(text: str, target: Target, link: list[str] = ()) -> MachineCode:
    """Parses, verifies and optimises (O3) LLVM IR, then emits object code. `link`: more
    modules (LLVM IR text) linked in before optimisation."""
    tm = target_machine(target)
    mod = llvm.parse_assembly(text)
    for other in link:
        mod.link_in(llvm.parse_assembly(other))
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    text = str(mod)
    safe = split_single_lane_masked_stores(text)
    if safe is not text:  # (an LLVM bug's trigger was rewritten: codegen/llvm_workarounds.py)
        mod = llvm.parse_assembly(safe)
        mod.verify()
    return MachineCode(llvm_ir=safe, obj=tm.emit_object(mod))


def emit_assembly(optimised_ir: str, target: Target) -> str:
    """Assembly text for already optimised LLVM IR (done on request: it costs as much as codegen)."""
    return target_machine(target).emit_assembly(llvm.parse_assembly(optimised_ir))


class LLVMCPUBackend(Backend):
    """Loop IR -> LLVM IR (codegen/llvm_emit.py) -> O3 -> an object file for the target's triple,
    CPU and features: x86-64, AArch64 and any other CPU LLVM has a backend for (RISC-V...).
    Hand-written kernels in LLVM IR are linked into the module before optimisation; those
    in C are compiled with the target's C compiler and merged into the object."""

    name = "llvm-cpu"
    extern_languages = ("llvm", "c")

    def generate(self, module: KernelModule, target: Target) -> GeneratedCode:
        from ubique.codegen.llvm_emit import ModuleEmitter

        emitter = ModuleEmitter(module.name, target.vector_bits, target.triple, vector_math=target.vector_math,
                                soft_half=not native_half_conversions(target))
        functions = {k.name: emitter.add_kernel(k) for k in module.kernels}
        for ext in module.externs:
            functions[ext.name] = emitter.declare_kernel(ext.name)
        steps = [(functions[s.kernel], [(_REF_KINDS[b.kind], b.index) for b in s.buffers]) for s in module.steps]
        emitter.add_entry(module.entry, steps, module.num_args)
        code = compile_llvm_ir(str(emitter.module), target,
                               [e.source for e in module.externs if e.language == "llvm"])
        c_kernels = [e for e in module.externs if e.language == "c"]
        if c_kernels:  # one object each: their static helpers may share names
            from ubique.codegen.externs import compile_c_kernel
            from ubique.runtime.toolchain import merge_objects

            obj = merge_objects([code.obj, *(compile_c_kernel(e, target) for e in c_kernels)], target)
        else:
            obj = code.obj
        return GeneratedCode("llvm", code.llvm_ir, obj)

    def assembly(self, code: GeneratedCode, target: Target) -> str:
        return emit_assembly(code.source, target)


_REF_KINDS = {"arg": "io", "workspace": "ws", "table": "wsdyn"}


def native_half_conversions(target: Target) -> bool:
    """Whether LLVM's float16 conversions work on the target without runtime routines that
    its C library may lack: x86-64 (F16C, or libgcc's __truncsfhf2 since GCC 12), AArch64
    (FCVT), RISC-V with Zfh/Zfhmin. Elsewhere ubique converts with integer operations."""
    if target.arch in ("x86_64", "aarch64"):
        return True
    features = target.features.split(",")
    return target.arch.startswith("riscv") and ("+zfh" in features or "+zfhmin" in features)
register_backend(LLVMCPUBackend, "built-in")
