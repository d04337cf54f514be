"""Run-time memory planning for graphs whose intermediate sizes are symbolic.

The compiler records, per intermediate buffer, its size in bytes as a dimension
expression (ir/dims.py) and the kernel steps it lives between. For each new binding of
the symbolic sizes the runtime evaluates those sizes and places the buffers with the
native planner (`ubq_plan_memory`, the same rule as compiler/memory_plan.py applies to
static graphs). The entry reads each buffer's offset from the resulting table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ubique.ir.dims import evaluate


def lifetimes(steps, external) -> tuple[dict[int, int], dict[int, int]]:
    """(first step, last step) of every buffer outside `external`: written at its first
    step, live until the last step that reads it."""
    first, last = {}, {}
    for k, (reads, write) in enumerate(steps):
        if write not in external:
            first.setdefault(write, k)
            last.setdefault(write, k)
        for r in reads:
            if r not in external:
                last[r] = max(last.get(r, k), k)
    return first, last


@dataclass
class DynamicMemory:
    steps: list[tuple[list[int], int]]   # per kernel: (value ids read, value id written)
    sizes: dict[int, object]             # value id -> bytes, as a dimension
    external: set[int]                   # ids living outside the workspace
    slots: list[int]                     # value ids in the order of the offsets table
    _lifetimes: tuple = field(default=None, init=False, repr=False)

    def lifetimes(self) -> tuple[np.ndarray, np.ndarray]:
        """(first step, last step) per slot."""
        if self._lifetimes is None:
            first, last = lifetimes(self.steps, self.external)
            self._lifetimes = (np.array([first[v] for v in self.slots], np.int32),
                               np.array([last[v] for v in self.slots], np.int32))
        return self._lifetimes

    def plan(self, env: dict[str, int]) -> tuple[np.ndarray, int]:
        """(offsets table, workspace bytes) for these symbol values."""
        from ubique.errors import ShapeError
        from ubique.runtime import native

        sizes = np.array([evaluate(self.sizes[v], env) for v in self.slots], np.int64)
        first, last = self.lifetimes()
        offsets = np.zeros(len(self.slots), np.int64)
        ptr = native.ffi.cast
        total = native.lib().ubq_plan_memory(len(self.slots), ptr("int64_t *", sizes.ctypes.data),
                                             ptr("int32_t *", first.ctypes.data), ptr("int32_t *", last.ctypes.data),
                                             ptr("int64_t *", offsets.ctypes.data))
        if total < 0:
            raise ShapeError(f"cannot plan memory for sizes {env}: {native.last_error()}")
        return offsets, int(total)

    def to_json(self) -> dict:
        return {"steps": [[list(r), w] for r, w in self.steps], "sizes": [[v, d] for v, d in self.sizes.items()],
                "external": sorted(self.external), "slots": self.slots}

    @staticmethod
    def from_json(d: dict) -> "DynamicMemory":
        return DynamicMemory([(list(r), w) for r, w in d["steps"]], {v: s for v, s in d["sizes"]},
                             set(d["external"]), list(d["slots"]))
