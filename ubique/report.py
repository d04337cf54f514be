"""Compile-time report: a process-wide log of compile and cache events, and its text form.

Every decision the compile caches take is recorded where it is taken (ubique/build.py,
jit.py, model.py, ubq.py) as an `Event`: a memory or disk cache hit, a compilation (with the
REASON it had to compile and the `Program` it made), embedded code of a .ubq file used or
rejected. The reason names what was missing or why something found could not be used:
"not in the memory or disk cache", "disk cache entry failed to load: ...", "jit f: new input
signature ...", "dims changed ...", "m.ubq: embedded code for target x86_64 is for another
target key ...". A caller's context (`with report.context("why"):`) is prepended to the
reasons of the events recorded inside it on the same thread.

    from ubique import report
    with report.collect() as c:          # or c = report.start(); ...; report.stop(c)
        m = ub.compile(graph)
    print(c.format())                    # times per pass and kernel, cache events with reasons
    c.programs                           # the Programs compiled meanwhile

`events()` returns the last LOG_SIZE events of the process (without their Programs, which
hold the weights: only a collector keeps those). The calls of an @ub.jit function that reuse
one of its specialisations are recorded only while a collector is active (they are the hot
path); `ub.cache_info()` counts them always.
"""
from __future__ import annotations

import struct
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, NamedTuple

LOG_SIZE = 512

KIND_LABELS = {
    "compiled": "compiled",
    "passes": "graph passes",
    "memory_hit": "memory hit",
    "disk_hit": "disk hit",
    "embedded": "embedded code",
    "embedded_rejected": "embedded rejected",
}
HIT_KINDS = ("memory_hit", "disk_hit", "embedded")
COMPILE_KINDS = ("compiled", "passes")


class KernelTime(NamedTuple):
    name: str
    work: int        # estimated scalar operations
    seconds: float   # lowering, scheduling and LLVM IR emission (LLVM's own time is per module)


@dataclass
class Event:
    """One compile or cache event. `key` is the cache key (compiles and hits through the
    cache) or the target key naming a .ubq code section; `reason` says why it happened (for a
    compilation: why it had to compile). `timings` (seconds per graph pass and stage, in
    pipeline order), `kernels` and `program` are set for compilations; `seconds` is the wall
    time of the compilation; `count` counts merged repeats of the same hit."""
    kind: str
    name: str
    target: str
    key: str = ""
    reason: str = ""
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    kernels: list = field(default_factory=list)
    program: object = None
    count: int = 1

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    def _merge_key(self) -> tuple:
        return (self.kind, self.name, self.target, self.key, self.reason)


class Collector:
    """The events recorded (by any thread) between `start()` and `stop()`."""

    def __init__(self):
        self.events: list[Event] = []
        self._hits: dict[tuple, Event] = {}
        self.started = time.perf_counter()
        self.seconds: float | None = None   # the collection window, once stopped

    def _add(self, ev: Event) -> None:
        if ev.kind in HIT_KINDS:
            seen = self._hits.get(ev._merge_key())
            if seen is not None:
                seen.count += 1
                return
            ev = replace(ev)  # this collector's own copy, counted on its own
            self._hits[ev._merge_key()] = ev
        self.events.append(ev)

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))

    def __len__(self) -> int:
        return len(self.events)

    @property
    def programs(self) -> list:
        return [e.program for e in self.events if e.program is not None]

    def of_kind(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def format(self, top: int = 10) -> str:
        wall = self.seconds if self.seconds is not None else time.perf_counter() - self.started
        return format_report(self.events, top=top, wall=wall)


_lock = threading.Lock()
_log: "deque[Event]" = deque(maxlen=LOG_SIZE)
_log_hits: dict[tuple, Event] = {}
_collectors: list[Collector] = []
_local = threading.local()


# -- recording -------------------------------------------------------------------------------
def record(kind: str, name: str, target: str, key: str = "", reason: str = "", *, program=None,
           seconds: float | None = None, timings: dict | None = None, link: float | None = None) -> Event:
    """Records one event (with this thread's context prepended to `reason`). For a compilation
    pass the `program`: its timings and kernels are taken from it; `link` (seconds spent linking
    and storing the code, outside the compiler pipeline) is added to the timings as "link";
    `seconds` (the wall time) defaults to the sum of the timings."""
    stack = getattr(_local, "stack", None)
    if stack:
        reason = "; ".join([*stack, reason] if reason else stack)
    kernels = []
    if program is not None:
        timings = dict(getattr(program, "timings", None) or {}) if timings is None else timings
        kernels = [KernelTime(lk.kernel.name, int(lk.work), float(getattr(lk, "seconds", 0.0)))
                   for lk in getattr(program, "kernels", [])]
    timings = dict(timings or {})
    if link is not None:
        timings["link"] = timings.get("link", 0.0) + link
    if seconds is None:
        seconds = sum(timings.values())
    ev = Event(kind, str(name), str(target), key or "", reason, float(seconds), timings, kernels, program)
    with _lock:
        _log_add(ev)
        for c in _collectors:
            c._add(ev)
    return ev


def _log_add(ev: Event) -> None:
    if ev.kind in HIT_KINDS:
        seen = _log_hits.get(ev._merge_key())
        if seen is not None:
            seen.count += 1
            return
    ev = replace(ev, program=None)  # the log never keeps a Program (it holds the weights)
    if len(_log) == _log.maxlen:
        old = _log[0]
        if _log_hits.get(old._merge_key()) is old:
            del _log_hits[old._merge_key()]
    _log.append(ev)
    if ev.kind in HIT_KINDS:
        _log_hits[ev._merge_key()] = ev


@contextmanager
def context(text: str):
    """Prepends `text` to the reason of every event recorded inside, on this thread."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(text)
    try:
        yield
    finally:
        stack.pop()


def collecting() -> bool:
    return bool(_collectors)


def start() -> Collector:
    """Starts collecting the events of every thread; `stop(c)` ends it."""
    c = Collector()
    with _lock:
        _collectors.append(c)
    return c


def stop(c: Collector) -> Collector:
    with _lock:
        if c in _collectors:
            _collectors.remove(c)
    if c.seconds is None:
        c.seconds = time.perf_counter() - c.started
    return c


@contextmanager
def collect():
    """`with collect() as c:` collects the events recorded inside (by any thread)."""
    c = start()
    try:
        yield c
    finally:
        stop(c)


def events() -> list[Event]:
    """The last LOG_SIZE events of this process, oldest first (without Programs)."""
    with _lock:
        return list(_log)


def clear() -> None:
    with _lock:
        _log.clear()
        _log_hits.clear()


# -- @ub.jit: why a specialisation was traced and compiled ----------------------------------------
def _describe_args(spec: tuple, params=()) -> list[tuple[str, str]]:
    from ubique.ir.dtypes import dtype_of

    out = []
    for k, s in enumerate(spec):
        name = params[k] if k < len(params) else f"#{k}"
        if len(s) == 3 and s[0] == "static":
            value = struct.unpack("<d", s[2])[0] if s[1] is float else s[2]
            out.append((name, f"={value!r}"))
        else:
            shape, dt = s
            try:
                dt = dtype_of(dt).short
            except Exception:  # noqa: BLE001 (only for display)
                dt = str(dt)
            out.append((name, f": {dt}[{', '.join(map(str, shape))}]"))
    return out


def describe_spec(spec: tuple, params=()) -> str:
    """A jit specialisation key as text: 'x: f32[3, 5], scale=0.5'."""
    return ", ".join(n + d for n, d in _describe_args(spec, params))


def jit_reason(fn, spec: tuple, shown: int = 3) -> str:
    """Why the jitted `fn` traces and compiles for `spec`: its first call, or a new input
    signature (with what changed since the newest previous one, and the previous ones)."""
    name = getattr(fn, "__name__", "jit")
    params = getattr(fn, "_params", ())
    previous = [s for s in getattr(fn, "_cache", {}) if s != spec]
    sig = describe_spec(spec, params)
    if not previous:
        return f"jit {name}: first call, input signature ({sig})"
    last = previous[-1]
    if len(last) != len(spec):
        changed = [f"{len(last)} -> {len(spec)} arguments"]
    else:
        changed = [f"{n} {a.lstrip(':= ')} -> {b.lstrip(':= ')}"
                   for (n, a), (_, b) in zip(_describe_args(last, params), _describe_args(spec, params)) if a != b]
    prev = "; ".join(f"({describe_spec(s, params)})" for s in reversed(previous[-shown:]))
    more = f" and {len(previous) - shown} more" if len(previous) > shown else ""
    what = f" [changed: {', '.join(changed)}]" if changed else ""
    return f"jit {name}: new input signature (shapes/dtypes) ({sig}){what}; previous signatures: {prev}{more}"


def jit_hit(fn, spec: tuple, target) -> None:
    """A call of a jitted function that reuses a specialisation (recorded while collecting)."""
    if _collectors:
        record("memory_hit", getattr(fn, "__name__", "jit"), _target_name(target), "",
               f"jit {getattr(fn, '__name__', 'jit')}: specialisation ({describe_spec(spec, fn._params)}) reused")


def _target_name(target) -> str:
    try:
        from ubique.targets.registry import get_target

        return get_target(target).name
    except Exception:  # noqa: BLE001 (only for display)
        return str(target)


# -- symbolic dims: "dims changed" -------------------------------------------------------------
_dims_seen: dict[tuple, list] = {}
_DIMS_TRACKED = 4096


def dims_reason(graph_digest: str, target_key: str, dims: dict | None) -> str | None:
    """Notes that a graph (by digest) was built for `dims`; when it was built before with other
    dims, says so ("dims changed ...") for the reason of the compilation this causes."""
    now = sorted((dims or {}).items())
    with _lock:
        seen = _dims_seen.setdefault((graph_digest, target_key), [])
        if len(_dims_seen) > _DIMS_TRACKED:
            _dims_seen.pop(next(iter(_dims_seen)))
        before = [d for d in seen if d != now]
        if now not in seen:
            seen.append(now)
    if not before:
        return None
    show = lambda d: "{" + ", ".join(f"{k}={v}" for k, v in d) + "}" if d else "none"  # noqa: E731
    return f"dims changed: now {show(now)}, before {'; '.join(show(d) for d in before[-3:])}"


# -- the text form ---------------------------------------------------------------------------
def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole > 0 else "    -"


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'s' * (k != 1)}"


def _short_key(key: str) -> str:
    return key[:12] if key else "-"


def format_program(ev: Event, top: int = 10) -> list[str]:
    """The tables of one compilation: seconds per pass / stage, kernels by time, LLVM time."""
    lines = []
    total = ev.seconds or sum(ev.timings.values())
    if ev.timings:
        width = max(24, *(len(n) + 2 for n in ev.timings))
        lines.append(f"  {'pass / stage':<{width}} {'seconds':>9} {'%':>6}")
        for n, s in ev.timings.items():  # dicts keep the pipeline's order
            lines.append(f"  {n:<{width}} {s:9.4f} {_pct(s, total)}")
        other = total - sum(ev.timings.values())
        if other > 5e-5:
            lines.append(f"  {'other':<{width}} {other:9.4f} {_pct(other, total)}"
                         "  (verification, fusion, memory planning)")
        lines.append(f"  {'total':<{width}} {total:9.4f} {_pct(total, total)}")
    if ev.kernels:
        ranked = sorted(ev.kernels, key=lambda k: -k.seconds)
        shown = ranked[:max(top, 0)]
        width = max(24, *(len(k.name) + 2 for k in shown)) if shown else 24
        lines.append(f"  {'kernels by time (' + str(len(shown)) + ' of ' + str(len(ranked)) + ')':<{width}} "
                     f"{'work':>14} {'seconds':>9} {'%':>6}")
        for k in shown:
            lines.append(f"  {k.name:<{width}} {k.work:>14,d} {k.seconds:9.4f} {_pct(k.seconds, total)}")
        rest = ranked[len(shown):]
        if rest:
            lines.append(f"  {'(' + str(len(rest)) + ' more kernels)':<{width}} {sum(k.work for k in rest):>14,d} "
                         f"{sum(k.seconds for k in rest):9.4f} {_pct(sum(k.seconds for k in rest), total)}")
        ksum = sum(k.seconds for k in ranked)
        lines.append(f"  {'all ' + str(len(ranked)) + ' kernels':<{width}} {sum(k.work for k in ranked):>14,d} "
                     f"{ksum:9.4f} {_pct(ksum, total)}  (lowering, scheduling)")
    if "codegen" in ev.timings:
        backend = getattr(getattr(ev.program, "target", None), "codegen", "?")
        lines.append(f"  code generation ({backend} backend, whole module): {ev.timings['codegen']:.4f} s "
                     f"({_pct(ev.timings['codegen'], total).strip()} of this compilation)")
    lines += _memory_lines(ev.program)
    return lines


def _memory_lines(program) -> list[str]:
    """Peak activation memory: the static plan's workspace against one buffer per intermediate."""
    plan = getattr(program, "memory", None)
    if plan is None:
        return []
    if getattr(program, "dynamic_memory", None) is not None:
        return ["  activation memory: planned at run time (symbolic sizes)"]
    saved = f", {plan.unshared_size / plan.workspace_size:.1f}x less than one buffer each " \
        f"({plan.unshared_size / 1e6:.2f} MB)" if plan.workspace_size else ""
    return [f"  activation memory (static plan): {plan.workspace_size / 1e6:.2f} MB peak{saved}"]


def format_report(evs, top: int = 10, wall: float | None = None) -> str:
    """A readable report of `evs` (a Collector or a list of events)."""
    evs = list(evs)
    compiled = [e for e in evs if e.kind == "compiled"]
    compile_s = sum(e.seconds for e in evs if e.kind in COMPILE_KINDS)
    count = lambda kind: sum(e.count for e in evs if e.kind == kind)  # noqa: E731
    head = f"compile report: {_n(len(compiled), 'compilation')}, {compile_s:.3f} s compiling"
    if wall is not None:
        head += f" ({wall:.3f} s wall in all)"
    lines = [head, f"cache: {_n(count('memory_hit'), 'memory hit')}, {_n(count('disk_hit'), 'disk hit')}, "
                   f"embedded code used {count('embedded')}x, rejected {count('embedded_rejected')}x"]
    for ev in evs:
        if ev.kind not in COMPILE_KINDS:
            continue
        lines.append("")
        nk = f", {len(ev.kernels)} kernels" if ev.kernels else ""
        lines.append(f"{ev.label}: {ev.name} for {ev.target} (key {_short_key(ev.key)}), {ev.seconds:.3f} s{nk}")
        if ev.reason:
            lines.append(f"  why: {ev.reason}")
        lines.extend(format_program(ev, top))
    lines.append("")
    lines.append("cache events (in order):")
    if not evs:
        lines.append("  none (nothing was compiled or looked up)")
    for ev in evs:
        times = f" x{ev.count}" if ev.count > 1 else ""
        secs = f"{ev.seconds:8.3f} s" if ev.kind in COMPILE_KINDS else " " * 10
        lines.append(f"  {ev.label + times:<18} {ev.name:<16} {ev.target:<8} {_short_key(ev.key):<12} {secs}"
                     + (f"  {ev.reason}" if ev.reason else ""))
    return "\n".join(lines)
