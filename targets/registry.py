"""The target registry: names -> Target factories. The host is detected through LLVM."""
from __future__ import annotations

import functools
from typing import Callable

from ubique.errors import PluginError, UnsupportedOpError
from ubique.targets import gpu as _gpu
from ubique.targets import plugins
from ubique.targets.target import Target, host_arch

_FACTORIES: dict[str, Callable[[], Target]] = {}
_ORIGINS: dict[str, str] = {}

plugins.undoable_dicts(_FACTORIES, _ORIGINS)  # a broken plug-in's registrations are taken back


def register(name: str, target: "Target | Callable[[], Target]", origin: str = "") -> None:
    """Registers a target under `name`: a Target, or a factory returning one (so detection
    runs only when the target is used). `origin` says where it came from (`ubique targets`)."""
    if isinstance(target, Target):
        target_obj = target
        target = lambda: target_obj  # noqa: E731
    elif not callable(target):
        raise PluginError(f"{origin or 'ub.targets.register'}: target {name!r} must be a Target or a function "
                          f"returning one, got {type(target).__name__}")
    _FACTORIES[name] = target
    _ORIGINS[name] = origin or f"registered at run time by {_caller_module()}"
    plugins.note_change()


def _caller_module() -> str:
    import inspect

    frame = inspect.currentframe()  # (not inspect.stack(): it reads every frame's source)
    while frame is not None:
        module = frame.f_globals.get("__name__", "?")
        if module != __name__:
            return module
        frame = frame.f_back
    return "?"


def available() -> list[str]:
    plugins.load_group("ubique.targets")
    return sorted(_FACTORIES)


def origins() -> dict[str, str]:
    """Registered target names -> where each came from ("built-in", a plug-in package...)."""
    plugins.load_group("ubique.targets")
    return dict(sorted(_ORIGINS.items()))


def get_target(spec: "str | Target | None" = None) -> Target:
    """A Target from a name ("host", "x86_64", ...), a Target, or None (the host).

    Raises:
        UnsupportedOpError: no target of that name (lists the registered ones).
        PluginError: the plug-in registering that name is broken.
    """
    if isinstance(spec, Target):
        return spec
    name = spec or "host"
    if name not in _FACTORIES:
        plugins.load_group("ubique.targets", name)
    if name not in _FACTORIES:
        raise UnsupportedOpError(f"unknown target {name!r}; registered targets: {', '.join(available())}")
    try:
        target = _FACTORIES[name]()
    except PluginError:
        raise
    except Exception as e:  # noqa: BLE001 -- a plug-in's factory: report whose
        raise PluginError(f"{_ORIGINS[name]}: making target {name!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(target, Target):
        raise PluginError(f"{_ORIGINS[name]}: target {name!r} gave {type(target).__name__}, not a ubique Target")
    return target


@plugins.on_load("ubique.targets")
def _register_plugin(name: str, obj, where: str) -> None:
    if name in _FACTORIES:  # a plug-in never replaces a target silently
        raise PluginError(f"{where}: target name {name!r} is already taken ({_ORIGINS[name]})")
    register(name, obj, where)


def _vector_bits(features: str) -> int:
    if "+avx512f" in features:
        return 512
    if "+avx2" in features or "+avx" in features:
        return 256
    return 128


@functools.lru_cache(maxsize=None)
def host_target() -> Target:
    import llvmlite.binding as llvm

    from ubique.codegen.cpu import init_llvm

    init_llvm()
    triple = llvm.get_process_triple()
    cpu = llvm.get_host_cpu_name()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # some hosts do not report features
        features = ""
    arch = triple.split("-")[0]
    return Target(name=arch if arch in ("x86_64", "aarch64") else arch, triple=triple, cpu=cpu,
                  features=features, vector_bits=_vector_bits(features) if arch == "x86_64" else 128,
                  vector_math="libmvec" if arch == "x86_64" and _has_libmvec() else "")


def _has_libmvec() -> bool:
    """glibc >= 2.35 ships vector exp/log/sin/cos/tanh/erf/pow for SSE, AVX2 and AVX-512."""
    import ctypes

    try:
        lib = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return False
    return all(hasattr(lib, s) for s in ("_ZGVdN8v_tanhf", "_ZGVdN8v_erff", "_ZGVbN4v_expf"))


def aarch64_target() -> Target:
    """Portable 64-bit Arm Linux (any ARMv8-A core with NEON: Raspberry Pi 3/4/5, Graviton,
    Ampere, Jetson, phones), cross-compiled here and linked by the GNU cross toolchain. It
    runs natively on an AArch64 host and under qemu-user elsewhere."""
    return Target(name="aarch64", triple="aarch64-unknown-linux-gnu", cpu="generic", features="+neon",
                  vector_bits=128, vector_math="", cc="aarch64-linux-gnu-gcc", cc_package="gcc-aarch64-linux-gnu",
                  emulator=("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"), emulator_package="qemu-user")


register("host", host_target, "built-in (this machine)")
register("aarch64", aarch64_target, "built-in")
register("cuda", _gpu.cuda_target, "built-in (NVIDIA GPU of this machine; sm_80 where there is none)")
register("cuda-sm80", _gpu.cuda_sm80_target, "built-in (NVIDIA Ampere and newer)")
register("cuda-sm90", _gpu.cuda_sm90_target, "built-in (NVIDIA Hopper and newer)")
register("cuda-emulated", _gpu.cuda_emulated_target, "built-in (the cuda GPU schedules run serially on this CPU)")
# the host's architecture name names the host too, unless a portable target of that name is registered
if host_arch() in ("x86_64", "aarch64") and host_arch() not in _FACTORIES:
    register(host_arch(), host_target, "built-in (this machine)")
