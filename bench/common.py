"""Shared timing helpers: peers run side by side, alternating, and report medians and ratios."""
from __future__ import annotations

import json
import os
import math
import statistics
import time

SETTLE_SECONDS = 0.25


def timeit(fn, min_time: float = 0.05) -> float:
    """Seconds per call: calls are batched until a batch takes `min_time`."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n
        n *= 2


def compare(candidates: dict, rounds: int = 7) -> dict[str, float]:
    """Median seconds per call for each candidate, measured in alternating rounds so that
    machine noise hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            # thread pools (OpenBLAS's, ubique's) spin for a while after their last call;
            # a pause lets them park so no candidate is timed against another's spinners
            time.sleep(SETTLE_SECONDS)
            samples[name].append(timeit(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def geomean(xs) -> float:
    xs = list(xs)
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def gflops(flops, seconds: float):
    """GFLOP/s, or None when the FLOP count is unknown."""
    return None if not flops else flops / seconds / 1e9


def fmt(x, spec: str = ".1f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def blas_limit(threads: int):
    """A context manager limiting numpy's BLAS (OpenBLAS, MKL, ...) to `threads` threads,
    or None when threadpoolctl is not installed (`pip install ubique[bench]`)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def blas_info() -> str:
    """numpy's BLAS library and version, as threadpoolctl sees it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown BLAS (threadpoolctl not installed)"
    libs = [f"{i.get('internal_api')} {i.get('version')}" + (f" ({i['architecture']})" if i.get("architecture") else "")
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(libs) or "no BLAS found by threadpoolctl"


def write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")


def load_note() -> str:
    """The 1-minute load average, so that a reader can tell a contended run from a quiet one."""
    try:
        one = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "load average unknown"
    busy = "" if one < 0.5 else f" (other work is running on this {os.cpu_count()}-CPU machine: expect noise)"
    return f"1-min load average {one:.2f}{busy}"
