"""The schedule-parameter search behind `ubique tune`: measures register-tile choices
(compiler/schedule.py -> TileKnobs) of a model's contraction kernels on this machine and
stores the winners as tuning records (compiler/tuning.py), which later compiles use.

For each distinct tunable kernel of the optimized graph (largest estimated work first), the
fused group it comes from is rebuilt as a standalone graph (its external inputs, weights
too, become graph inputs) and compiled once per candidate with
`compile_graph(sub, target, fold=False, knobs={signature: candidate})`. The default schedule
is measured first; a candidate is kept only if its output equals the default's, and a record
is stored only where the best candidate beats the default by `margin`. See docs/tuning.md.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ubique.compiler import tuning
from ubique.compiler.fusion import Group, fuse
from ubique.compiler.lower import LoweredKernel, lower_group
from ubique.compiler.schedule import ROWS, TileKnobs, default_schedule, static_extent, tile_rows
from ubique.compiler.symbolic import graph_symbols, make_contract, specialize
from ubique.errors import UnsupportedOpError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.graph import Graph, Value
from ubique.ir.loop_analysis import widest_element_bits
from ubique.ir.loop_printer import print_kernel
from ubique.targets.target import Target

# register-tile rows tried (bounded by the row extent and the accumulator budget)
ROW_CHOICES = (4, 6, 7, 8, 12, 14, 16, 24, 28)
VECTOR_CHOICES = (1, 2, 4)
MARGIN = 0.03           # a record is stored only when the best beats the default by this much
MIN_SAMPLE_S = 0.02     # each timing sample repeats the kernel for at least this long
SAMPLES = 5             # timing samples per candidate (the median counts)
# a kernel faster than this is not searched: the call's own overhead (microseconds) would
# decide the comparison
MIN_KERNEL_S = 20e-6


@dataclass
class Tunable:
    """One distinct tunable kernel of a model."""
    name: str                 # the fused group's ops, e.g. "conv2d_nchwc_add_relu"
    signature: str            # tuning.kernel_signature of the unscheduled kernel
    group: Group
    lowered: LoweredKernel    # unscheduled (dims set as compile_graph sets them)
    lanes: int
    uses: int = 1             # kernels of the model with this signature


@dataclass
class KernelResult:
    name: str
    signature: str
    work: int
    uses: int = 1
    default_ms: float | None = None
    best_ms: float | None = None
    best: TileKnobs | None = None        # None: the default schedule measured fastest
    default_knobs: TileKnobs | None = None  # the grid point the default schedule equals, if any
    measured: int = 0                    # candidates measured, the default included
    stored: bool = False
    note: str = ""                       # why it was skipped or cut short
    errors: list[str] = field(default_factory=list)  # candidates that failed or changed results

    @property
    def speedup(self) -> float | None:
        if self.default_ms is None or self.best_ms is None or self.best_ms <= 0:
            return None
        return self.default_ms / self.best_ms


@dataclass
class TuneResult:
    target: Target
    kernels: list[KernelResult]
    records: dict[str, TileKnobs]        # stored by this run
    path: Path | None                    # the records file written (None: nothing written)
    seconds: float
    budget_s: float
    removed: list[str] = field(default_factory=list)  # older records a complete search found no better

    def format(self) -> str:
        head = ("kernel", "work", "default ms", "best ms", "knobs", "speedup")
        rows = []
        for k in self.kernels:
            name = k.name if len(k.name) <= 40 else k.name[:37] + "..."
            if k.uses > 1:
                name += f" (x{k.uses})"
            best = "-" if k.best_ms is None else f"{k.best_ms:.4f}"
            default = "-" if k.default_ms is None else f"{k.default_ms:.4f}"
            if k.default_ms is None:
                knobs = "-"
            elif k.best is None:
                knobs = "default" + (f" ({_knobs_text(k.default_knobs)})" if k.default_knobs else "")
            else:
                knobs = _knobs_text(k.best)
            speed = "-" if k.speedup is None else f"{k.speedup:.2f}x"
            if k.stored:
                speed += " stored"
            rows.append((name, _work_text(k.work), default, best, knobs, speed))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        fmt = lambda r: "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths)))
        lines = [fmt(head)] + [fmt(r) for r in rows]
        for k in self.kernels:
            if k.note:
                lines.append(f"  {k.name}: {k.note}")
            for e in k.errors:
                lines.append(f"  {k.name}: {e}")
        if not self.kernels:
            lines.append("(no tunable kernels: knobs apply to contraction kernels with a register tile)")
        if self.records:
            lines.append(f"records: {len(self.records)} written to {self.path}")
        else:
            lines.append(f"records: none written (file for this target and CPU: "
                         f"{tuning.records_path(self.target)})")
        if self.removed:
            lines.append(f"removed {len(self.removed)} older record(s) that no longer beat the default")
        lines.append(f"tuned in {self.seconds:.1f} s of a {self.budget_s:.0f} s budget")
        return "\n".join(lines)


def _knobs_text(k: TileKnobs | None) -> str:
    if k is None:
        return "default"
    return " ".join(f"{n}={v}" for n, v in (("rows", k.rows), ("vectors", k.vectors)) if v is not None)


def _work_text(w: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if w >= scale:
            return f"{w / scale:.1f}{unit}"
    return str(w)


# -- finding the kernels ----------------------------------------------------------------------
def lowered_kernels(graph: Graph, target: Target, *, fold: bool = True, dims: dict | None = None):
    """The unscheduled kernels compile_graph makes for `graph`, with their groups and the
    vector lanes it schedules them for: [(group, LoweredKernel, lanes)], in order. Their
    signatures are the ones compile_graph looks up (same passes, same dims)."""
    from ubique.compiler.pipeline import optimize_graph

    contract = make_contract(graph, dims)
    g = optimize_graph(specialize(graph, contract.specialized), fold, {}, lanes=target.vector_bits // 32)
    symbols = [L.Var(s) for s in contract.symbols]
    out = []
    for k, group in enumerate(fuse(g)):
        lk = lower_group(group, f"{graph.name}_k{k}_{group.name}"[:80])
        lanes = max(1, target.vector_bits // widest_element_bits(lk.kernel.body))
        lk.kernel.dims = symbols
        out.append((group, lk, lanes))
    return out, contract


def _threads(target: Target) -> int:
    return max(2, target.num_cores or 2)  # as compile_graph plans them


def _accumulators(target: Target) -> int:
    return target.vector_registers - 4


def _schedule_text(lk: LoweredKernel, lanes: int, target: Target, knobs: TileKnobs | None) -> str:
    k = default_schedule(lk.kernel, lk.output.type.rank, lk.work, lanes, _threads(target),
                         accumulators=_accumulators(target), knobs=knobs)
    return print_kernel(k)


def knobs_matter(lk: LoweredKernel, lanes: int, target: Target) -> bool:
    """Whether the default schedule gives this kernel a register tile (the knobs change it)."""
    try:
        return _schedule_text(lk, lanes, target, TileKnobs(rows=3)) != \
            _schedule_text(lk, lanes, target, TileKnobs(rows=5))
    except Exception:  # noqa: BLE001  (a kernel the probe cannot schedule is not tunable)
        return False


def find_tunable(graph: Graph, target: Target, dims: dict | None = None) -> list[Tunable]:
    """The distinct kernels of `graph` whose register tile can be tuned, largest work first."""
    found: dict[str, Tunable] = {}
    lowered, _ = lowered_kernels(graph, target, dims=dims)
    for group, lk, lanes in lowered:
        sig = tuning.kernel_signature(lk.kernel)
        if sig in found:
            found[sig].uses += 1
            continue
        if lk.output.type.rank < 2 or len(group.root.outputs) != 1 or not knobs_matter(lk, lanes, target):
            continue
        found[sig] = Tunable(group.name, sig, group, lk, lanes)
    return sorted(found.values(), key=lambda t: -t.lowered.work * t.uses)


def group_graph(group: Group, name: str = "tune") -> tuple[Graph, list[Value]]:
    """A standalone graph computing one fused group: its external inputs (weights too) become
    graph inputs with the same names, shapes and dtypes; scalar constants (literals in the
    kernel) stay constants; the root's output is the output. Returns the graph and the
    original values its inputs stand for."""
    sub = Graph(name)
    vmap: dict[int, Value] = {}
    external: list[Value] = []
    for n in group.members:
        ins = []
        for v in n.inputs:
            if v.id not in vmap:
                if v.node is not None and v.node.op == "constant" and v.type.size == 1:
                    vmap[v.id] = sub.add_node("constant", [], dict(v.node.attrs)).output
                else:
                    vmap[v.id] = sub.add_input(v.type, v.name)
                    external.append(v)
            ins.append(vmap[v.id])
        outs = sub.add_node(n.op, ins, n.attrs, n.loc).outputs
        for old, new in zip(n.outputs, outs):
            vmap[old.id] = new
    sub.outputs = [vmap[group.root.output.id]]
    return sub, external


# -- candidates -------------------------------------------------------------------------------
def _extents(lk: LoweredKernel) -> tuple[int, int]:
    """(row extent, column extent) of the output's last two axes (symbolic: large)."""
    loops = {n.var.name: n for n in L.walk(lk.kernel.body) if isinstance(n, L.For)}
    r = lk.output.type.rank
    return static_extent(loops[f"i{r - 2}"].extent), static_extent(loops[f"i{r - 1}"].extent)


def default_knobs_estimate(lk: LoweredKernel, lanes: int, target: Target) -> TileKnobs:
    """What the default schedule picks (mirrors compiler/schedule.py; used only to order the
    grid, never trusted: candidates are compared by their scheduled loop IR)."""
    rows_ext, cols = _extents(lk)
    vectors = 4 if cols >= 4 * lanes else 1
    width = vectors * lanes if vectors * lanes <= cols else lanes
    rows = tile_rows(rows_ext, 1, _accumulators(target)) if width == lanes else ROWS
    return TileKnobs(rows=min(rows, rows_ext), vectors=width // lanes)


def candidate_grid(lk: LoweredKernel, lanes: int, target: Target) -> list[TileKnobs]:
    """Rows from ROW_CHOICES (and the row extent) x vectors in 1/2/4 where the columns allow,
    within the accumulator budget; nearest to the default first."""
    rows_ext, cols = _extents(lk)
    budget = _accumulators(target)
    guess = default_knobs_estimate(lk, lanes, target)
    out = []
    for v in VECTOR_CHOICES:
        if v * lanes > cols:
            continue
        rows = {r for r in ROW_CHOICES if r <= rows_ext} | ({rows_ext} if rows_ext <= budget else set())
        out += [TileKnobs(rows=r, vectors=v) for r in rows if r * v <= budget]
    guess_acc = (guess.rows or ROWS) * (guess.vectors or 1)
    out.sort(key=lambda k: (k.vectors != guess.vectors, abs(k.rows * k.vectors - guess_acc), -k.rows))
    return out


# -- measuring --------------------------------------------------------------------------------
def _feeds(sub: Graph, external: list[Value], env: dict, rng) -> list[np.ndarray]:
    """Inputs for the sub-graph: the real weights for constants, random data otherwise."""
    arrays = []
    for v_sub, v in zip(sub.inputs, external):
        if v.node is not None and v.node.op == "constant":
            arrays.append(np.ascontiguousarray(v.node.attrs["value"]))
            continue
        shape = tuple(D.evaluate(d, env) for d in v_sub.shape)
        dt = v_sub.dtype.to_numpy()
        if v_sub.dtype.is_float:
            a = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            a = rng.random(shape) < 0.5
        else:
            a = rng.integers(0, 4, shape).astype(dt)  # small: valid as indices of most sizes
        arrays.append(np.ascontiguousarray(a))
    return arrays


def _time(ex, feeds, min_sample_s: float, samples: int) -> float:
    """Median seconds per run over `samples` samples of enough runs to last min_sample_s."""
    ex.run(*feeds)  # warm: pages, caches, the thread pool
    t0 = time.perf_counter()
    ex.run(*feeds)
    single = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, math.ceil(min_sample_s / single))
    times = []
    for _ in range(max(1, samples)):
        t0 = time.perf_counter()
        for _ in range(reps):
            ex.run(*feeds)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float rounding (a tile changes which lanes compute an element, not its sum)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f" or a.dtype.name.startswith(("bfloat", "float8")):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        rtol = 1e-4 if a.dtype.itemsize >= 4 else 2e-2
        finite = b64[np.isfinite(b64)]
        scale = float(np.max(np.abs(finite), initial=0.0))
        return bool(np.allclose(a64, b64, rtol=rtol, atol=rtol * 0.1 * max(scale, 1.0), equal_nan=True))
    return bool(np.array_equal(a, b))


# -- the search -------------------------------------------------------------------------------
def tune(graph: Graph, target=None, budget_s: float = 60.0, dims: dict | None = None,
         log: Callable[[str], None] | None = print, *, candidates: Sequence[TileKnobs] | None = None,
         margin: float = MARGIN, min_sample_s: float = MIN_SAMPLE_S, samples: int = SAMPLES,
         min_kernel_s: float = MIN_KERNEL_S, store: bool = True, seed: int = 0) -> TuneResult:
    """Measures register-tile candidates of `graph`'s contraction kernels on this machine
    within `budget_s` seconds and stores the ones that beat the default by `margin` as
    tuning records for `target` (default: this host) and its CPU. `dims` as for
    `ubique.compile` (tune with the dims you compile with: they are part of each kernel's
    signature); symbolic sizes are measured at their lower bound. `candidates` replaces the
    grid (the default schedule is always measured first). Kernels faster than `min_kernel_s`
    are measured but not searched."""
    from ubique.compiler.pipeline import compile_graph
    from ubique.runtime.executable import load_program
    from ubique.targets.registry import get_target

    log = log or (lambda s: None)
    t = get_target(target)
    if t.codegen != "llvm-cpu" or not t.runs_natively:
        raise UnsupportedOpError(
            f"cannot tune for target {t.name} ({t.triple}): tuning measures kernels on this machine, so "
            f"it needs a target whose code runs natively here ({', '.join(_native_names()) or 'host'}); "
            "tune on the device itself")
    start = time.perf_counter()
    spent = lambda: time.perf_counter() - start >= budget_s  # noqa: E731
    rng = np.random.default_rng(seed)
    tunables = find_tunable(graph, t, dims)
    contract = make_contract(graph, dims)
    log(f"tuning {graph.name} for {t.describe()}: {len(tunables)} tunable kernel(s), budget {budget_s:g} s")
    for sym, (lo, hi) in contract.ranges.items():
        log(f"  symbolic size {sym} ({lo}..{'' if hi is None else hi}) is measured at {max(1, lo)}; "
            f"declare dims={{{sym!r}: N}} (--dims {sym}=N) to tune for the size you will run")

    results: list[KernelResult] = []
    stored: dict[str, TileKnobs] = {}
    removed: list[str] = []
    path = None
    for tk in tunables:
        res = KernelResult(tk.name, tk.signature, tk.lowered.work, tk.uses)
        results.append(res)
        if spent():
            res.note = "not measured: budget spent"
            continue
        sub, external = group_graph(tk.group, f"tune_{tk.name}"[:60])
        sub_dims = {s: contract.ranges[s] for s in graph_symbols(sub) if s in contract.ranges}
        try:
            sub_kernels, _ = lowered_kernels(sub, t, fold=False, dims=sub_dims or None)
        except Exception as e:  # noqa: BLE001
            res.note = f"skipped: its standalone graph does not compile ({type(e).__name__}: {e})"
            log(f"  {tk.name}: {res.note}")
            continue
        sigs = [tuning.kernel_signature(lk.kernel) for _, lk, _ in sub_kernels]
        if tk.signature not in sigs:
            res.note = ("skipped: standalone, it compiles into a different kernel than in the model "
                        f"({len(sigs)} kernel(s), none with signature {tk.signature})")
            log(f"  {tk.name}: {res.note}")
            continue
        env = {s: max(1, lo) for s, (lo, _) in contract.ranges.items()}
        feeds = _feeds(sub, external, env, rng)

        # the default first; then the grid, without candidates that schedule like one before
        try:
            grid = list(candidates) if candidates is not None else candidate_grid(tk.lowered, tk.lanes, t)
        except Exception as e:  # noqa: BLE001  (an output loop nest the grid does not know)
            res.note = f"skipped: no candidate grid for it ({type(e).__name__}: {e})"
            log(f"  {tk.name}: {res.note}")
            continue
        try:
            default_text = _schedule_text(tk.lowered, tk.lanes, t, None)
        except Exception:  # noqa: BLE001
            default_text = None
        seen = {default_text} if default_text is not None else set()
        todo: list[TileKnobs] = []
        for k in grid:
            try:
                text = _schedule_text(tk.lowered, tk.lanes, t, k)
            except Exception:  # noqa: BLE001  (compile_graph reports it below)
                text = None
            if text is not None and text == default_text:
                res.default_knobs = res.default_knobs or k
            if text is not None and text in seen:
                continue
            seen.add(text)
            todo.append(k)

        def measure(knobs: TileKnobs | None):
            program = compile_graph(sub, t, fold=False, dims=sub_dims or None, knobs={tk.signature: knobs})
            ex = load_program(program)
            out = ex.run(*feeds)[0]
            return _time(ex, feeds, min_sample_s, samples), out, ex

        try:
            default_s, reference, default_ex = measure(None)
        except Exception as e:  # noqa: BLE001
            res.note = f"skipped: the default schedule failed ({type(e).__name__}: {e})"
            log(f"  {tk.name}: {res.note}")
            continue
        res.default_ms, res.measured = default_s * 1e3, 1
        if default_s < min_kernel_s:
            res.best_ms = res.default_ms
            res.note = f"not searched: it runs in {default_s * 1e6:.1f} us, too fast to compare schedules reliably"
            log(f"  {tk.name}: {res.note}")
            continue
        best_s, best_knobs, best_ex = math.inf, None, None  # the fastest candidate (not the default)
        log(f"  {tk.name} (work {_work_text(tk.lowered.work)}): default {default_s * 1e3:.4f} ms; "
            f"{len(todo)} candidate(s)")
        for knobs in todo:
            if spent():
                res.note = f"budget spent after {res.measured - 1} of {len(todo)} candidate(s)"
                break
            try:
                secs, out, ex = measure(knobs)
            except Exception as e:  # noqa: BLE001
                msg = f"candidate {_knobs_text(knobs)} failed: {type(e).__name__}: {e}"
                res.errors.append(msg)
                log(f"    {msg}")
                continue
            res.measured += 1
            if not _same(out, reference):
                msg = (f"candidate {_knobs_text(knobs)} changed the results (a compiler bug; please report it): "
                       f"max difference {_max_diff(out, reference):.3g}; discarded")
                res.errors.append(msg)
                log(f"    {msg}")
                continue
            log(f"    {_knobs_text(knobs):20s} {secs * 1e3:.4f} ms")
            if secs < best_s:
                best_s, best_knobs, best_ex = secs, knobs, ex

        if best_knobs is not None and best_s < default_s and not spent():
            # measure both again, one after the other: one noisy sample should not make a record
            d2 = _time(default_ex, feeds, min_sample_s, samples)
            b2 = _time(best_ex, feeds, min_sample_s, samples)
            default_s, best_s = min(default_s, d2), min(best_s, b2)
            res.default_ms = default_s * 1e3
        complete = not res.note and candidates is None  # every grid point was measured
        if best_knobs is not None and best_s <= default_s * (1 - margin):
            res.best, res.best_ms = best_knobs, best_s * 1e3
            if store:
                stored[tk.signature] = best_knobs
                path = tuning.store(t, {tk.signature: best_knobs})
                res.stored = True
            continue
        if best_knobs is not None and best_s < default_s:
            res.best, res.best_ms = best_knobs, best_s * 1e3
            res.note = (res.note + "; " if res.note else "") + f"best within {margin:.0%} of the default: no record"
        else:
            res.best_ms = default_s * 1e3
        if store and complete and tuning.forget(t, [tk.signature]) is not None:
            removed.append(tk.signature)  # an older record for it no longer wins
    return TuneResult(t, results, stored, path, time.perf_counter() - start, budget_s, removed)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    try:
        return float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    except (ValueError, TypeError):
        return float("nan")


def _native_names() -> list[str]:
    from ubique.targets.registry import available, get_target

    names = []
    for n in available():
        try:
            if get_target(n).runs_natively:
                names.append(n)
        except Exception:  # noqa: BLE001
            pass
    return names
