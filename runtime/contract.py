"""What a compiled graph with symbolic dimensions accepts, checked at every call.

Kernels read symbol values from the `dims` array of the kernel ABI, in the order of
`DimContract.symbols`; `bind` derives those values from the input shapes of a call
and refuses values outside the declared ranges (see compiler/symbolic.py for how a
contract is made from the user's `dims=`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ubique.errors import ShapeError
from ubique.ir import dims as D

DEFAULT_RANGE = (1, None)


@dataclass
class DimContract:
    symbols: list[str] = field(default_factory=list)                 # order of the ABI dims array
    ranges: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    specialized: dict[str, int] = field(default_factory=dict)        # symbol -> static size

    def describe(self) -> str:
        lines = [f"{s}: specialised to {v}" for s, v in sorted(self.specialized.items())]
        for s in self.symbols:
            lo, hi = self.ranges[s]
            lines.append(f"{s}: symbolic, {lo} <= {s} <= {'any' if hi is None else hi}")
        return "\n".join(lines) or "all dimensions static"

    def to_json(self) -> dict:
        return {"symbols": self.symbols, "ranges": {s: list(r) for s, r in self.ranges.items()},
                "specialized": self.specialized}

    @staticmethod
    def from_json(d: dict) -> "DimContract":
        return DimContract(list(d["symbols"]), {s: (r[0], r[1]) for s, r in d["ranges"].items()},
                           dict(d["specialized"]))

    def check(self, env: dict[str, int]) -> None:
        for s in self.symbols:
            lo, hi = self.ranges[s]
            v = env[s]
            if v < lo or (hi is not None and v > hi):
                limit = f"[{lo}, {'any' if hi is None else hi}]"
                raise ShapeError(f"dimension {s!r} = {v} is outside the compiled range {limit}; "
                                 f"compile again with dims={{{s!r}: ({min(lo, v)}, {max(hi or v, v)})}}")


def bind(contract: DimContract, specs, shapes) -> dict[str, int]:
    """Symbol values from concrete input shapes; ShapeError on any mismatch.
    `specs`: [(input name, symbolic shape)], `shapes`: the actual shapes."""
    env: dict[str, int] = {}
    for (name, shape), actual in zip(specs, shapes):
        if len(actual) != len(shape):
            raise ShapeError(f"input {name!r}: expected rank {len(shape)} {_show(shape)}, got shape {tuple(actual)}")
        for axis, (d, n) in enumerate(zip(shape, actual)):
            if isinstance(d, str) and d.isidentifier():
                if env.setdefault(d, n) != n:
                    raise ShapeError(f"input {name!r} axis {axis}: {d!r} = {n}, but another input "
                                     f"set {d!r} = {env[d]}")
    for (name, shape), actual in zip(specs, shapes):
        for axis, (d, n) in enumerate(zip(shape, actual)):
            try:
                want = D.evaluate(d, env)
            except ShapeError:
                raise ShapeError(f"input {name!r} axis {axis}: cannot tell the value of {d!r} from the "
                                 "input shapes; declare it with dims=") from None
            if want != n:
                raise ShapeError(f"input {name!r}: expected shape {_show(shape, env)}, got {tuple(actual)} "
                                 f"(axis {axis})")
    for s in contract.symbols:
        if s not in env:  # e.g. only a broadcast_to target names it: no call can give its value
            raise ShapeError(f"dimension {s!r} is not the size of any input axis, so a call cannot set it; "
                             f"specialise it with dims={{{s!r}: size}}")
    contract.check(env)
    return env


def _show(shape, env=None) -> str:
    if env:
        shape = [D.evaluate(d, env) if not (D.symbols(d) - env.keys()) else d for d in shape]
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
