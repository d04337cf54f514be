"""Static memory planning: intermediate tensors share one workspace arena.

Each intermediate lives from the kernel that writes it to the last kernel that
reads it; buffers whose lifetimes do not overlap may share bytes. Placement is
greedy, largest first, at the lowest 64-byte aligned offset that does not collide
with an already placed buffer that is live at the same time.
"""
from __future__ import annotations

from dataclasses import dataclass

from ubique.runtime.memory import lifetimes

ALIGN = 64


@dataclass
class MemoryPlan:
    offsets: dict[int, int]   # value id -> byte offset in the workspace
    workspace_size: int       # bytes
    unshared_size: int        # bytes if every intermediate had its own buffer


def _round(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(steps: list[tuple[list[int], int]], sizes: dict[int, int], external: set[int]) -> MemoryPlan:
    """`steps`: per kernel, (ids read, id written) in execution order; `sizes`: bytes per id;
    `external`: ids that live outside the workspace (graph inputs, outputs, weights)."""
    first, last = lifetimes(steps, external)
    order = sorted(first, key=lambda v: (-sizes[v], first[v]))
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets = {}
    for v in order:
        size = _round(max(sizes[v], 1))
        clashes = sorted((o, e) for o, e, f, l in placed if not (l < first[v] or last[v] < f))
        offset = 0
        for o, e in clashes:
            if offset + size <= o:
                break
            offset = max(offset, e)
        offsets[v] = offset
        placed.append((offset, offset + size, first[v], last[v]))
    total = max((e for _, e, _, _ in placed), default=0)
    return MemoryPlan(offsets, total, sum(_round(max(sizes[v], 1)) for v in first))

