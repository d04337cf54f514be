"""The backend interface: what a code generator implements to compile for a target.

A compilation for a `Target` runs the graph passes, fuses the graph into kernels and lowers
each kernel to loop IR (compiler/pipeline.py). Then the backend the target names
(`Target.codegen`) takes over:

1. `schedule(kernel, hints, target) -> kernel`, once per kernel: loop-IR schedule
   primitives (compiler/schedule.py) applied for this hardware. The default is the CPU
   schedule (vectorize, register tiles, parallel outer loops); a backend without SIMD or
   threads passes `lanes=1, threads=1` to it; a GPU backend binds loops to blocks and threads.
2. `generate(module, target) -> GeneratedCode`, once per model: code for every kernel of
   `module` plus its entry, a function that runs the kernels in order on the buffers
   `module.steps` name. Every kernel and the entry follow the kernel ABI
   (runtime/native/ubique_runtime.h): `int32_t f(void *const *args, const int64_t *dims,
   ubq_ctx *ctx)`.

What `generate` returns is run by the runtime device the target names (`Target.device`):
for "cpu" that is a relocatable object file (`GeneratedCode.obj`) for the target's triple,
which the runtime links with the target's C compiler into a shared library and loads (or
runs under the target's emulator, or builds into an AOT library). A device with another
kind of code (PTX text for "cuda") reads `source` and `extras` instead.

Backends register by name (`register_backend`) or through the `ubique.backends`
entry-point group of an installed package; see docs/writing-a-backend.md.
"""
from __future__ import annotations

import abc
import functools
import importlib
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ubique.errors import PluginError, UnsupportedOpError
from ubique.ir import loop as L
from ubique.targets import plugins
from ubique.targets.target import Target

__all__ = ["Backend", "BufferRef", "ExternKernel", "GeneratedCode", "KernelModule", "ScheduleHints", "Step",
           "available_backends", "get_backend", "register_backend"]


@dataclass(frozen=True)
class ScheduleHints:
    """What the compiler knows about a kernel when it asks for a schedule.

    out_rank      rank of the kernel's output (its outer loops are named i0, i1, ...)
    work          estimated scalar operations of one run (parallelise only large kernels)
    lanes         vector lanes of the target for the kernel's widest element type
    threads       threads the runtime plans for
    accumulators  vector registers a register tile may keep live
    knobs         tuning choices for this kernel (compiler/tuning.TileKnobs) or None
    """
    out_rank: int
    work: int
    lanes: int
    threads: int
    accumulators: int
    knobs: object = None


@dataclass(frozen=True)
class BufferRef:
    """Where a step's buffer lives, as the entry computes its address:

    "arg"        args[index]: a model input, output or weight
    "workspace"  (char *)ctx->workspace + index bytes (static memory plan)
    "table"      (char *)ctx->workspace + ((int64_t *)args[module.num_args])[index] bytes
                 (offsets planned at run time when sizes are symbolic)
    """
    kind: str
    index: int


@dataclass(frozen=True)
class Step:
    """One kernel call of the entry: `buffers` are the kernel's args (inputs, then output)."""
    kernel: str
    buffers: tuple[BufferRef, ...]


@dataclass(frozen=True)
class ExternKernel:
    """A hand-written kernel that replaces the generated one on this target (`ub.op.define
    ... .kernel(...)`): `source` in `language` ("c", "llvm" or "ptx") defines the function
    `name` with the kernel ABI; `origin` names where it came from, for error messages.
    `buffers`: its inputs and output (the ABI's args). A GPU kernel is launched with `grid`
    blocks of `block` threads (PTX: `.entry name(.param .u64 buffer, ...)`, one device
    pointer per buffer; its shapes are static)."""
    name: str
    language: str
    source: str
    origin: str
    buffers: int = 0
    grid: int = 0
    block: int = 0


@dataclass
class KernelModule:
    """Everything a backend generates code for: one model.

    name       module name (symbol prefix)
    entry      name of the entry function to define
    kernels    scheduled loop-IR kernels (params: inputs, then the output)
    externs    hand-written kernels to include as they are
    steps      the entry's kernel calls, in order; a failing status is returned at once
    num_args   tensor arguments of the entry (inputs, outputs, weights)
    """
    name: str
    entry: str
    kernels: list[L.Kernel]
    externs: list[ExternKernel]
    steps: list[Step]
    num_args: int

    @property
    def has_offset_table(self) -> bool:
        """Whether args[num_args] holds the run-time offset table ("table" buffers)."""
        return any(b.kind == "table" for s in self.steps for b in s.buffers)


@dataclass
class GeneratedCode:
    """What a backend made: `source` is its text form in `language` ("llvm" for LLVM IR, "c",
    "ptx", ...), what `ubique inspect` and `.lower().asm`-style queries show; `obj` is the
    relocatable object file a "cpu" device links; `extras` holds anything else a device
    needs (a GPU launch table)."""
    language: str
    source: str
    obj: bytes = b""
    extras: dict = field(default_factory=dict)


class Backend(abc.ABC):
    """A code generator. Subclass it, set `name`, implement `generate`; override `schedule`,
    `assembly` and `layout_lanes` as the hardware needs."""

    name: ClassVar[str] = ""
    #: languages of hand-written kernels (ExternKernel.language) this backend can include
    extern_languages: ClassVar[tuple[str, ...]] = ()

    def schedule(self, kernel: L.Kernel, hints: ScheduleHints, target: Target) -> L.Kernel:
        """The default CPU schedule (compiler/schedule.py)."""
        from ubique.compiler.schedule import default_schedule

        return default_schedule(kernel, hints.out_rank, hints.work, hints.lanes, hints.threads,
                                accumulators=hints.accumulators, knobs=hints.knobs)

    @abc.abstractmethod
    def generate(self, module: KernelModule, target: Target) -> GeneratedCode:
        """Code for every kernel of `module` and its entry (see the module docstring)."""

    def assembly(self, code: GeneratedCode, target: Target) -> str:
        """Human-readable machine code for `code` (on request; may be slow)."""
        raise UnsupportedOpError(f"backend {self.name!r} does not produce assembly text")

    def layout_lanes(self, target: Target) -> int:
        """float32 lanes the graph-level layout passes block for (channel blocking, matmul
        packing); 0 keeps the portable layouts."""
        lanes = target.vector_bits // 32
        return lanes if lanes > 1 else 0

    def fingerprint(self) -> str:
        """Identifies this backend's code generation (part of every compiled-code cache key):
        by default every Python source file of the top-level package that defines the
        backend's class (ubique's own backends are covered by ubique's fingerprint)."""
        return _package_digest(type(self).__module__.split(".")[0])


@functools.lru_cache(maxsize=None)
def _package_digest(package: str) -> str:
    if package == "ubique":
        return "ubique"
    module = sys.modules.get(package)
    path = Path(getattr(module, "__file__", "") or "")
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path] if path.is_file() else []
    digest = hashlib.sha256(package.encode())
    read = 0
    for f in files:
        try:
            digest.update(f.read_bytes())
            read += 1
        except OSError:
            pass
    if not read:  # no source to identify it (a notebook, a namespace package): never reuse across processes
        digest.update(os.urandom(16))
    return digest.hexdigest()[:16]


# ---- the registry --------------------------------------------------------------------------

_BACKENDS: dict[str, Backend] = {}
_ORIGINS: dict[str, str] = {}

plugins.undoable_dicts(_BACKENDS, _ORIGINS)  # a broken plug-in's registrations are taken back


def register_backend(backend, origin: str = "") -> Backend:
    """Registers a Backend (an instance or a class) under its `name`; returns the instance.

    Raises:
        PluginError: it is not a Backend, has no name or does not implement `generate`.
    """
    where = origin or getattr(backend, "__module__", "?")
    if isinstance(backend, type):
        if not issubclass(backend, Backend):
            raise PluginError(f"{where}: {backend.__qualname__} is not a ubique.codegen.backend.Backend subclass")
        missing = sorted(getattr(backend, "__abstractmethods__", ()))
        if missing:
            raise PluginError(f"{where}: backend class {backend.__qualname__} does not implement "
                              f"{', '.join(m + '()' for m in missing)}, required by ubique.codegen.backend.Backend")
        backend = backend()
    if not isinstance(backend, Backend):
        raise PluginError(f"{where}: {backend!r} is not a ubique.codegen.backend.Backend")
    if not backend.name or not isinstance(backend.name, str):
        raise PluginError(f"{where}: backend class {type(backend).__qualname__} sets no `name`")
    _BACKENDS[backend.name] = backend
    _ORIGINS[backend.name] = origin or f"registered by {type(backend).__module__}"
    plugins.note_change()
    return backend


@plugins.on_load("ubique.backends")
def _register_plugin(name: str, obj, where: str) -> None:
    declared = getattr(obj, "name", None)
    if declared != name:
        raise PluginError(f"{where}: the entry point is named {name!r} but the backend's name is {declared!r}")
    _load_builtin(name)
    if name in _BACKENDS:  # a plug-in never replaces a backend silently
        raise PluginError(f"{where}: backend name {name!r} is already taken ({_ORIGINS[name]})")
    register_backend(obj, where)


def get_backend(name: str, target: Target | None = None) -> Backend:
    """The backend registered as `name`, loading installed plug-ins if needed.

    Raises:
        UnsupportedOpError: no backend of that name (lists the registered ones).
        PluginError: the plug-in that provides it is broken.
    """
    _load_builtin(name)
    if name not in _BACKENDS:
        plugins.load_group("ubique.backends", name)
    if name not in _BACKENDS:
        whose = f"target {target.name!r} uses codegen {name!r}" if target else f"codegen {name!r}"
        raise UnsupportedOpError(f"{whose}, which no installed backend provides; registered backends: "
                                 f"{', '.join(available_backends())}. Install the plug-in that provides it "
                                 "or register it with ubique.codegen.backend.register_backend")
    return _BACKENDS[name]


def available_backends() -> dict[str, str]:
    """Registered backend names -> where each came from."""
    for name in BUILTIN:
        _load_builtin(name)
    plugins.load_group("ubique.backends")
    return dict(sorted(_ORIGINS.items()))


# built-in backends, imported when first asked for (a CPU compile never loads the GPU backend)
BUILTIN = {"llvm-cpu": "ubique.codegen.cpu", "nvptx": "ubique.codegen.nvptx"}


def _load_builtin(name: str) -> None:
    if name in BUILTIN and name not in _BACKENDS:
        importlib.import_module(BUILTIN[name])
