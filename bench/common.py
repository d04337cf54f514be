"""Shared timing helpers: peers run side by side, alternating, and report medians and ratios."""
from __future__ import annotations

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
