"""Index analyses on loop IR shared by schedules and codegen."""
from __future__ import annotations

from ubique.ir import loop as L


def lane_coefficient(e: L.Expr, var: str, varying: set[str]):
    """How much `e` grows per step of `var` if affine in it with an int constant factor; else None."""
    if isinstance(e, L.Const):
        return 0
    if isinstance(e, L.Var):
        if e.name == var:
            return 1
        return None if e.name in varying else 0
    if isinstance(e, L.Binary):
        a, b = lane_coefficient(e.a, var, varying), lane_coefficient(e.b, var, varying)
        if a is None or b is None:
            return None
        if e.op == "add":
            return a + b
        if e.op == "sub":
            return a - b
        if e.op == "mul":
            if a == 0 and b == 0:
                return 0
            if a == 0 and isinstance(e.a, L.Const):
                return a + e.a.value * b
            if b == 0 and isinstance(e.b, L.Const):
                return e.b.value * a
            return None
        return 0 if a == 0 and b == 0 else None
    if isinstance(e, (L.Compare, L.Select, L.Cast, L.Call, L.Load)):
        return 0 if all(lane_coefficient(c, var, varying) == 0 for c in L.children(e)) else None
    return None


def linear_index(buf: L.Buffer, indices) -> L.Expr:
    flat = L.Const(0, L.I64)
    for i, d in zip(indices, buf.shape):
        flat = flat * d + i
    return flat
