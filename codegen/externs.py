"""Checks that a hand-written kernel honours the kernel ABI before any backend uses it.

A kernel given as C source must define `int32_t NAME(void *const *args, const int64_t *dims,
ubq_ctx *ctx)`; one given as LLVM IR must define `i32 @NAME(ptr, ptr, ptr)`. The checks run
the target's own tools (its C compiler, LLVM's parser), so an error names the kernel's
origin and quotes what the tool said, instead of a crash at run time. A PTX kernel (GPU
targets) must be a whole PTX module (`.version`, `.target`) with `.entry NAME(...)` taking
one 64-bit device pointer per buffer (the inputs, then the output), for an architecture the
target's GPUs have; the driver compiles it when the model is loaded.
"""
from __future__ import annotations

import functools
import re

from ubique.codegen.backend import ExternKernel
from ubique.errors import PluginError, ToolchainError
from ubique.targets.target import Target

ABI_SIGNATURE = "int32_t NAME(void *const *args, const int64_t *dims, ubq_ctx *ctx)"
C_PRELUDE = '#include <stdint.h>\n#include <math.h>\n#include "ubique_runtime.h"\n'


def c_abi_check(name: str) -> str:
    """C text that fails to compile unless `name` is defined with the kernel ABI's type."""
    return f"\nubq_entry_fn ubq_abi_check_{name}(void) {{ return {name}; }}\n"


@functools.lru_cache(maxsize=64)
def compile_c_kernel(ext: ExternKernel, target: Target) -> bytes:
    """The object of a hand-written C kernel (-O3), compiled once with the ABI check in it:
    the check (check_extern) and the backend that links the kernel share this compile."""
    from ubique.runtime.toolchain import compile_c_object

    try:
        return compile_c_object(C_PRELUDE + ext.source + c_abi_check(ext.name), target,
                                ("-O3", "-Werror=incompatible-pointer-types", "-Werror=implicit-function-declaration"))
    except ToolchainError as e:
        raise PluginError(f"{ext.origin}: the C kernel {ext.name!r} for target {target.name!r} does not "
                          f"compile as a kernel of the ABI signature {ABI_SIGNATURE.replace('NAME', ext.name)}"
                          f"\n{str(e).split(chr(10), 2)[-1]}") from None


def check_extern(ext: ExternKernel, target: Target) -> None:
    """Raises PluginError naming `ext.origin` if the kernel does not honour the ABI."""
    if ext.language == "c":
        compile_c_kernel(ext, target)
    elif ext.language == "llvm":
        _check_llvm(ext, target)
    elif ext.language == "ptx":
        _check_ptx(ext, target)
    else:
        raise PluginError(f"{ext.origin}: unknown kernel language {ext.language!r} (use 'c', 'llvm' or 'ptx')")


def _check_llvm(ext: ExternKernel, target: Target) -> None:
    import llvmlite.binding as llvm

    from ubique.codegen.cpu import init_llvm

    init_llvm()
    try:
        mod = llvm.parse_assembly(ext.source)
        mod.verify()
    except RuntimeError as e:
        raise PluginError(f"{ext.origin}: the LLVM IR kernel {ext.name!r} does not parse: {e}") from None
    try:
        fn = mod.get_function(ext.name)
    except NameError:
        fn = None
    if fn is None or fn.is_declaration:
        raise PluginError(f"{ext.origin}: the LLVM IR defines no function @{ext.name}")
    fn_type = str(fn.global_value_type)
    if fn_type.replace(" ", "") != "i32(ptr,ptr,ptr)":
        raise PluginError(f"{ext.origin}: @{ext.name} has type {fn_type}; the kernel ABI needs i32 (ptr, ptr, ptr): "
                          f"{ABI_SIGNATURE.replace('NAME', ext.name)}")


# `.param .u64 name`, also with the pointer attributes: `.param .u64 .ptr .global .align 16 name`
_PTX_POINTER_PARAM = re.compile(r"^\.param\s+\.[usb]64(\s+\.ptr(\s*\.(global|const|local|shared))?"
                                r"(\s*\.align\s+\d+)?)?\s+[A-Za-z_$%][\w$]*$")


def _check_ptx(ext: ExternKernel, target: Target) -> None:
    text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", ext.source, flags=re.S)  # (comments may hold anything)
    signature = f"the kernel ABI on GPUs: .visible .entry {ext.name}(" + ", ".join(
        [f".param .u64 in{k}" for k in range(ext.buffers - 1)] + [".param .u64 out"]) + ")"
    if not re.search(r"^\s*\.version\s+\d+\.\d+", text, re.M) or not re.search(r"^\s*\.target\s", text, re.M):
        raise PluginError(f"{ext.origin}: the PTX kernel {ext.name!r} is not a whole PTX module: it needs its "
                          "`.version` and `.target` directives")
    entry = re.search(rf"\.entry\s+{re.escape(ext.name)}\s*\(([^)]*)\)", text)
    if entry is None:
        raise PluginError(f"{ext.origin}: the PTX defines no `.entry {ext.name}(...)`; {signature}")
    params = [p.strip() for p in entry.group(1).split(",") if p.strip()]
    if len(params) != ext.buffers or not all(_PTX_POINTER_PARAM.match(p) for p in params):
        raise PluginError(f"{ext.origin}: `.entry {ext.name}` takes ({', '.join(params)}); {signature}")
    wanted = re.search(r"^\s*\.target\s+sm_(\d+)([af]?)\b", text, re.M)
    have = re.fullmatch(r"sm_(\d+)", target.cpu)
    if wanted and have:
        arch, specific = int(wanted.group(1)), wanted.group(2)
        if arch > int(have.group(1)) or (specific and arch != int(have.group(1))):
            raise PluginError(f"{ext.origin}: the PTX kernel {ext.name!r} is for sm_{arch}{specific}, which target "
                              f"{target.name!r} ({target.cpu}) cannot run; write it for {target.cpu} or register it "
                              "for the targets of that architecture only")
