"""The entry points: run_conformance (every registry op, or some, on a target against the
reference) and check_op (the same, as an assertion for a plug-in's pytest suite)."""
from __future__ import annotations

import os
import time
from typing import Callable, Iterable

from ubique.errors import UnsupportedOpError

from .cases import Case, make_cases
from .report import ConformanceReport, _summarise
from .runner import _Runner, _Side
from .workers import _batches, _run_all


def op_names() -> list[str]:
    """Names of every registry op, in registry order (for pytest parametrisation)."""
    from ubique.ir.registry import all_ops

    return list(all_ops())


def run_conformance(target, ops: Iterable[str] | str | None = None, seed: int = 0, cases: int = 3,
                    reference="host", *, quick: bool = False, jobs: int | None = None, chunk: int = 300,
                    timeout: float = 600, progress: Callable[[str], None] | None = None) -> ConformanceReport:
    """Checks every registry op (or `ops`) on `target` against `reference`.

    Each op runs `cases` random cases in float32 and one in every other dtype it accepts
    (cast: one per target dtype). `quick`: one case per dtype, only float32, float16, int32,
    int8 and bool. Cases of up to `chunk` at a time share one graph, compiled once per side;
    each group is checked in a forked child process (a compiler crash fails its op, not the
    run), `jobs` at a time (default: the CPUs, at most 8); `timeout` bounds one run of the
    target (seconds).

    Raises:
        ToolchainError: the target's compiler or emulator is missing.
        UnsupportedOpError: unknown target.
    """
    from ubique.ir.registry import all_ops

    t0 = time.perf_counter()
    registry = all_ops()
    if isinstance(ops, str):
        ops = [o.strip() for o in ops.split(",") if o.strip()]
    names = list(registry) if ops is None else list(dict.fromkeys(ops))
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UnsupportedOpError(f"unknown op(s) {', '.join(unknown)}: not in the op registry")
    ref = _Side(reference, isolated=False, timeout=timeout)
    tgt = _Side(target, isolated=True, timeout=timeout)
    if quick:
        cases = 1
    per_op: dict[str, tuple[list[Case], str]] = {}
    for name in names:
        made, why = make_cases(name, registry[name], seed, cases)
        if quick:
            made = [c for c in made if c.dtype in ("float32", "float16", "int32", "int8", "bool")] or made[:1]
        per_op[name] = (made, why)
    runner = _Runner(ref, tgt, progress)
    all_cases = [c for made, _ in per_op.values() for c in made]
    if jobs is None:
        jobs = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if jobs > 1:  # several groups per worker, so that heavy ops (convolutions, rnns) spread out
        chunk = min(chunk, max(40, -(-len(all_cases) // (4 * jobs))))
    batches = list(_batches([per_op[n][0] for n in names], chunk))
    results = _run_all(runner, batches, jobs, progress)
    rows = [_summarise(n, registry[n].kind, [results[id(c)] for c in per_op[n][0]], per_op[n][1]) for n in names]
    assert len(results) == len(all_cases)
    return ConformanceReport(tgt.target.name, ref.target.name, rows, time.perf_counter() - t0, seed)


def check_op(name: str | Iterable[str], target, *, seed: int = 0, cases: int = 3, reference="host",
             allow_unsupported: bool = True) -> ConformanceReport:
    """Checks one op (or several) on `target`, for a plug-in's pytest suite:

        @pytest.mark.parametrize("op", ubique.testing.op_names())
        def test_op(op):
            ubique.testing.check_op(op, "mychip")

    Raises AssertionError with the failing table rows when an op fails, has no sample or
    (allow_unsupported=False) is unsupported. Returns the report otherwise."""
    report = run_conformance(target, [name] if isinstance(name, str) else list(name), seed, cases, reference)
    bad = {"FAIL", "no sample"} | (set() if allow_unsupported else {"unsupported"})
    rows = [r for r in report.rows if r.status in bad]
    if rows:
        raise AssertionError(f"conformance of target {report.target} against {report.reference}:\n"
                             + report.table(rows))
    return report
