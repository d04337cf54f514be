"""The pass pipeline, as named steps, and the custom passes plug-ins insert into it.

The pipeline of a compilation, in order:

    graph passes   decompose, fold_scale_into_conv, block_channels*, pack_matmul_rhs*,
                   fold_constants, cse, dce, copy_outputs        (* with target layouts only)
    kernel stages  fuse      the graph is partitioned into kernels, each lowered to loop IR
                   schedule  each kernel is scheduled by the target's backend

A custom pass names a step to run `after` (or `before`): before "fuse" it is a graph pass,
`fn(graph, target) -> graph`; after "fuse" or "schedule" it is a loop-IR pass, run on each
kernel, `fn(kernel, target) -> kernel`. "fusion" and "lower" are other names for "fuse". A
pass may be limited to one target name. The IR a custom pass returns is verified; an error
in it names the pass and who registered it.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from dataclasses import dataclass
from typing import Callable

from ubique.errors import PluginError, UbiqueError, VerifyError
from ubique.targets import plugins
from ubique.targets.plugins import code_fingerprint, note_change

GRAPH_PASSES = ("decompose", "fold_scale_into_conv", "block_channels", "pack_matmul_rhs", "fold_constants",
                "cse", "dce", "copy_outputs")
KERNEL_STAGES = ("fuse", "schedule")
ALIASES = {"fusion": "fuse", "lower": "fuse"}


@dataclass(frozen=True)
class CustomPass:
    name: str
    fn: Callable
    anchor: str          # a built-in step name
    after: bool          # run after the anchor (else before)
    target: str | None   # a target name, or None for every target
    origin: str

    @property
    def level(self) -> str:
        """"graph" or "loop": what the pass receives."""
        if self.anchor in GRAPH_PASSES or (self.anchor == "fuse" and not self.after):
            return "graph"
        return "loop"

    @property
    def position(self) -> str:
        return f"{'after' if self.after else 'before'} {self.anchor}"

    def applies_to(self, target) -> bool:
        return self.target is None or self.target == target.name

    def fingerprint(self) -> str:
        """Identifies the pass's code (compiled code made with it is cached under it)."""
        text = f"{self.name}|{self.position}|{self.target}|{code_fingerprint(self.fn)}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_lock = threading.Lock()
_CUSTOM: list[CustomPass] = []


def _restore(state) -> None:
    with _lock:
        _CUSTOM[:] = state


plugins.undoable(lambda: list(_CUSTOM), _restore)


def register_pass(name: str, fn: Callable, *, after: str | None = None, before: str | None = None,
                  target: str | None = None, origin: str = "") -> CustomPass:
    """Adds `fn` to the pipeline at a position (`after=` or `before=` a built-in step, see
    the module docstring), for every target or only `target`. Re-registering a name
    replaces that pass. Returns the registration.

    Raises:
        PluginError: no position, both positions, or an unknown step name.
    """
    where = origin or f"custom pass {name!r}"
    if (after is None) == (before is None):
        raise PluginError(f"{where}: give exactly one of after= or before= (a step of the pipeline: "
                          f"{', '.join(GRAPH_PASSES + KERNEL_STAGES)})")
    anchor = ALIASES.get(after or before, after or before)
    if anchor not in GRAPH_PASSES + KERNEL_STAGES:
        raise PluginError(f"{where}: unknown pipeline step {after or before!r}; the steps are "
                          f"{', '.join(GRAPH_PASSES + KERNEL_STAGES)} (and 'fusion', the same as 'fuse')")
    if not callable(fn):
        raise PluginError(f"{where}: the pass must be a function, got {type(fn).__name__}")
    if name in GRAPH_PASSES + KERNEL_STAGES + ("codegen",) or name in ALIASES:
        raise PluginError(f"{where}: {name!r} names a built-in step of the pipeline; pick another name")
    if target is not None:
        from ubique.targets.registry import get_target

        try:
            target = get_target(target).name  # "host" -> "x86_64"; an unknown name fails here, not silently later
        except UbiqueError as e:
            raise PluginError(f"{where}: target={target!r}: {e}") from None
    if anchor == "schedule" and before is not None:
        anchor, after = "fuse", "fuse"  # before scheduling == after lowering
    p = CustomPass(name, fn, anchor, after is not None, target,
                   origin or f"custom pass {name!r} ({getattr(fn, '__module__', '?')})")
    with _lock:
        _CUSTOM[:] = [q for q in _CUSTOM if q.name != name] + [p]
    note_change()
    return p


def unregister_pass(name: str) -> None:
    with _lock:
        _CUSTOM[:] = [q for q in _CUSTOM if q.name != name]
    note_change()


def custom_passes(target=None) -> list[CustomPass]:
    """Registered custom passes (those for `target`, if given), in registration order."""
    with _lock:
        return [p for p in _CUSTOM if target is None or p.applies_to(target)]


def passes_at(anchor: str, after: bool, target) -> list[CustomPass]:
    return [p for p in custom_passes(target) if p.anchor == anchor and p.after == after]


def fingerprint(target) -> str:
    """Of the custom passes that apply to `target` (part of the compiled-code cache key)."""
    return ",".join(p.fingerprint() for p in custom_passes(target))


def run_custom(p: CustomPass, ir, target):
    """Runs one custom pass, checking what it returns; errors name the pass."""
    from ubique.ir.graph import Graph
    from ubique.ir.loop import Kernel
    from ubique.ir.loop_verify import verify_kernel
    from ubique.ir.verify import verify_graph

    try:
        out = p.fn(ir, target)
    except UbiqueError:
        raise
    except Exception as e:  # noqa: BLE001 -- foreign code: say whose
        raise PluginError(f"{p.origin} ({p.position}) raised {type(e).__name__}: {e}") from e
    want = Graph if p.level == "graph" else Kernel
    if not isinstance(out, want):
        raise PluginError(f"{p.origin} ({p.position}) returned {type(out).__name__}; a {p.level} pass must "
                          f"return a {want.__name__}")
    try:
        (verify_graph if p.level == "graph" else verify_kernel)(out)
    except VerifyError as e:
        raise PluginError(f"{p.origin} ({p.position}) produced invalid {p.level} IR: {e}") from None
    changed = _interface_change(ir, out)
    if changed:
        raise PluginError(f"{p.origin} ({p.position}) changed the {p.level}'s interface ({changed}); a pass may "
                          "change how a result is computed, not what goes in and out")
    return out


def _interface_change(before, after) -> str:
    """What a pass changed of what callers rely on: a graph's input and output types; a
    kernel's name, parameters (the ABI's args, in order) and dims."""
    if hasattr(before, "params"):
        sig = lambda k: (k.name, [(b.name, b.dtype, [str(d) for d in b.shape]) for b in k.params],  # noqa: E731
                         [v.name for v in k.dims])
        return "" if sig(before) == sig(after) else f"{sig(before)} -> {sig(after)}"
    types = lambda g: ([str(v.type) for v in g.inputs], [str(v.type) for v in g.outputs])  # noqa: E731
    return "" if types(before) == types(after) else f"{types(before)} -> {types(after)}"


@dataclass
class PassRecord:
    """One step that ran, for `ubique compile --print-passes`."""
    name: str
    level: str        # "graph", "kernels" (fuse, schedule: the loop-IR stages) or "loop"
    origin: str       # "built-in" or the custom pass's origin
    seconds: float = 0.0


_DUMP_AFTER: contextvars.ContextVar[frozenset] = contextvars.ContextVar("ubique_dump_after", default=frozenset())


@contextlib.contextmanager
def dumping(names):
    """Within the block, every compilation keeps the IR text after the named steps
    (Program.dumps), as if given compile_graph(..., dump_after=names)."""
    token = _DUMP_AFTER.set(frozenset(names))
    try:
        yield
    finally:
        _DUMP_AFTER.reset(token)


def requested_dumps() -> frozenset:
    return _DUMP_AFTER.get()
