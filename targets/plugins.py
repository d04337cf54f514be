"""Installed plug-ins: Python packages that extend ubique through entry points.

    [project.entry-points."ubique.targets"]      # name = a Target, or a function returning one
    c = "ubique_c_backend:target"
    [project.entry-points."ubique.backends"]     # name = a Backend subclass or instance
    c = "ubique_c_backend:CBackend"
    [project.entry-points."ubique.devices"]      # name = a runtime Device (runtime/devices.py)

Plug-ins load lazily: `import ubique` imports none of them; the first lookup of a name that
is not registered yet (or a listing, `ubique targets`) loads the group's entry points. A
plug-in that fails to import or gives something unusable is recorded as broken with the
reason, and only a lookup of *its* name raises (a PluginError naming the package); every
other target keeps working.
"""
from __future__ import annotations

import hashlib
import inspect
import threading
from dataclasses import dataclass
from importlib import metadata

from ubique.errors import PluginError

GROUPS = ("ubique.targets", "ubique.backends", "ubique.devices")


@dataclass(frozen=True)
class Broken:
    group: str
    name: str
    where: str     # "plug-in <distribution> <version> (entry point name = module:attr)"
    reason: str

    def error(self) -> PluginError:
        return PluginError(f"{self.where} is broken: {self.reason}. Fix or uninstall that package "
                           f"(pip uninstall {self.where.split()[1]}); other targets are unaffected")


_lock = threading.RLock()
_loaded: set[tuple[str, str]] = set()       # (group, entry-point name) already tried
_broken: dict[tuple[str, str], Broken] = {}
_handlers = {}                               # group -> fn(name, obj, where): registers obj
_registries: list = []                       # (snapshot(), restore(state)) of every registry


def undoable(snapshot, restore) -> None:
    """Declares a registry a plug-in may add to while it loads (targets, backends, devices,
    passes, ops): what a plug-in registered before failing is taken back."""
    _registries.append((snapshot, restore))


def undoable_dicts(*registries: dict) -> None:
    """`undoable` for registries that are dicts."""
    def restore(state):
        for registry, saved in zip(registries, state):
            registry.clear()
            registry.update(saved)
    undoable(lambda: [dict(r) for r in registries], restore)


def on_load(group: str):
    """Declares how a group's loaded objects are registered (called by the registries)."""
    def deco(fn):
        _handlers[group] = fn
        return fn
    return deco


def describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    package = f"{dist.name} {dist.version}" if dist is not None else "?"
    return f"plug-in {package} (entry point {ep.name} = {ep.value})"


def entry_points(group: str) -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)


def load_group(group: str, name: str | None = None) -> None:
    """Loads the group's entry points (only those called `name`, if given) not tried yet.
    Raises the PluginError of a broken plug-in only when `name` asks for it."""
    with _lock:
        for ep in entry_points(group):
            if (name is not None and ep.name != name) or (group, ep.name) in _loaded:
                continue
            _loaded.add((group, ep.name))
            where = describe(ep)
            saved = [(restore, snapshot()) for snapshot, restore in _registries]
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 -- any failure of foreign code is reported, not raised
                _broken[(group, ep.name)] = Broken(group, ep.name, where, f"importing it raised "
                                                   f"{type(e).__name__}: {e}")
                _take_back(saved)
                continue
            try:
                _handlers[group](ep.name, obj, where)
            except Exception as e:  # noqa: BLE001
                reason = str(e) if isinstance(e, PluginError) else f"{type(e).__name__}: {e}"
                _broken[(group, ep.name)] = Broken(group, ep.name, where, reason.removeprefix(where + ": "))
                _take_back(saved)
        if name is not None and (group, name) in _broken:
            raise _broken[(group, name)].error()


def _take_back(saved) -> None:
    """A broken plug-in leaves nothing registered: every registry goes back to before it."""
    for restore, state in saved:
        restore(state)
    note_change()


def broken() -> list[Broken]:
    """Plug-ins that failed to load, after loading every group."""
    import ubique.codegen.backend  # noqa: F401  (the registries declare their handlers)
    import ubique.runtime.devices  # noqa: F401
    import ubique.targets.registry  # noqa: F401

    for g in GROUPS:
        load_group(g)
    return sorted(_broken.values(), key=lambda b: (b.group, b.name))


def forget() -> None:
    """Forgets which entry points were tried (tests installing plug-ins at run time)."""
    with _lock:
        _loaded.clear()
        _broken.clear()


# ---- what changed, and what plug-in code is (for caches) ------------------------------------
_changes = [0]


def changes() -> int:
    """How many times targets, backends, devices, custom passes or custom ops were
    (un)registered in this process: a jitted function compiles anew when it moves."""
    return _changes[0]


def note_change() -> None:
    _changes[0] += 1


def code_fingerprint(fn) -> str:
    """Identifies what a plug-in function does, for compiled-code cache keys: its source (its
    bytecode where there is none) and the values of the closure variables and globals it reads."""
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr((code.co_code, code.co_consts)) if code is not None else repr(fn)
    try:
        seen = inspect.getclosurevars(fn)
        for name, value in sorted({**seen.globals, **seen.nonlocals}.items()):
            text += f"|{name}={_value_text(value)}"
    except (TypeError, ValueError):
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _value_text(value) -> str:
    if value is None or isinstance(value, (str, bytes, bool, int, float, complex)):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset)) and len(value) < 64:
        return "(" + ",".join(_value_text(v) for v in value) + ")"
    if hasattr(value, "tobytes") and hasattr(value, "dtype"):  # an array: its bytes
        return f"{value.dtype}{getattr(value, 'shape', '')}:{hashlib.sha256(value.tobytes()).hexdigest()}"
    return getattr(value, "__qualname__", type(value).__qualname__)  # functions, modules, objects: by name
