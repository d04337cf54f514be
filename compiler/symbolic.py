"""The contract of a compiled graph with symbolic dimensions.

A graph whose input shapes name sizes (`("batch", 3, 224, 224)`) compiles once for
every value of those sizes: kernels read them from the `dims` array of the kernel
ABI, in the order of `DimContract.symbols`. The user may declare, per symbol,

* an int — the symbol is specialised to that size before compiling (static code);
* a range `(lo, hi)` — kept symbolic; running outside the range is refused
  (`hi` may be None: no upper bound). `lo == hi` specialises too.

Undeclared symbols keep the default range [1, unbounded). `describe()` says what
was specialised and what stays symbolic; the runtime `bind`s each call's input
shapes to symbol values and checks them against the contract.
"""
from __future__ import annotations

import numpy as np

from ubique.compiler.rewrite import rewrite
from ubique.errors import ShapeError
from ubique.ir import dims as D
from ubique.ir.graph import Graph, TensorType
from ubique.runtime.contract import DEFAULT_RANGE, DimContract


def graph_symbols(g: Graph) -> list[str]:
    return sorted(D.shape_symbols(v.shape for v in g.values()))


def make_contract(g: Graph, declared: dict | None) -> DimContract:
    """Validates the user's `dims=` declarations against the graph's symbols."""
    known = graph_symbols(g)
    declared = dict(declared or {})
    unknown = sorted(set(declared) - set(known))
    if unknown:
        raise ShapeError(f"dims= names {unknown}, which the graph does not use; "
                         f"its symbolic dimensions are {known or 'none'}")
    contract = DimContract()
    for s in known:
        spec = declared.get(s, DEFAULT_RANGE)
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            spec = (int(spec), int(spec))
        try:
            lo, hi = spec
            lo, hi = int(lo), (None if hi is None else int(hi))
        except (TypeError, ValueError):
            raise ShapeError(f"dims[{s!r}] must be an int or a (lo, hi) pair, got {spec!r}") from None
        if lo < 0 or (hi is not None and hi < lo):
            raise ShapeError(f"dims[{s!r}] = {spec!r} is not a valid range (0 <= lo <= hi)")
        if hi == lo:
            contract.specialized[s] = lo
        else:
            contract.symbols.append(s)
            contract.ranges[s] = (lo, hi)
    return contract


def specialize(g: Graph, values: dict[str, int]) -> Graph:
    """The graph with the named symbols replaced by static sizes (types re-inferred)."""
    if not values:
        return g

    def fix_type(t: TensorType) -> TensorType:
        return TensorType(tuple(D.substitute(d, values) for d in t.shape), t.dtype)

    def fix_attr(v):
        if isinstance(v, str) and D.symbols(v) & values.keys():
            return D.substitute(v, values)
        if isinstance(v, tuple):
            return tuple(fix_attr(x) for x in v)
        return v

    def fn(ng, n, ins):
        return ng.add_node(n.op, ins, {k: fix_attr(a) for k, a in n.attrs.items()}, n.loc).outputs

    return rewrite(g, fn, input_type=fix_type)
