"""Index analyses on loop IR shared by schedules and codegen."""
from __future__ import annotations

import math

from ubique.ir import loop as L
from ubique.ir.dtypes import DType


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


def reduction_update(s: L.For):
    """(accumulator, op) if the loop body is `acc = acc op value` with acc not in value."""
    body = s.body
    if not (isinstance(body, L.Assign) and isinstance(body.value, L.Binary)
            and body.value.op in ("add", "mul", "max", "min") and body.value.a == body.var):
        return None
    if any(isinstance(n, L.Var) and n.name == body.var.name for n in L.walk(body.value.b)):
        return None
    return body.var, body.value.op


def reduction_identity(kind: str, dt: DType) -> L.Const:
    """The starting value of a reduction; kind: sum/add, prod/mul, max, min, argmax, argmin."""
    if kind in ("sum", "add"):
        return L.Const(0, dt)
    if kind in ("prod", "mul"):
        return L.Const(1, dt)
    lowest = kind in ("max", "argmax")
    if dt.is_float:
        return L.Const(-math.inf if lowest else math.inf, dt)
    if dt.is_bool:
        return L.Const(not lowest, dt)
    if dt.is_signed:
        return L.Const(-(2 ** (dt.bits - 1)) if lowest else 2 ** (dt.bits - 1) - 1, dt)
    return L.Const(0 if lowest else 2 ** dt.bits - 1, dt)


def widest_element_bits(n: L.Node) -> int:
    """Bits of the widest element loaded or stored under `n` (at least 32: narrower
    types compute in 32-bit registers). Vector widths are register bits over this."""
    return max([32] + [x.buffer.dtype.bits for x in L.walk(n) if isinstance(x, (L.Load, L.Store))])


def int_bounds(e: L.Expr, ranges: dict[str, tuple[int, int]]):
    """Inclusive (lo, hi) of an int64 index expression, given inclusive ranges of some
    variables; None where unknown (other variables, symbolic sizes, division by non-constants)."""
    if isinstance(e, L.Const):
        return (e.value, e.value) if isinstance(e.value, int) else None
    if isinstance(e, L.Var):
        return ranges.get(e.name)
    if not isinstance(e, L.Binary):
        return None
    a = int_bounds(e.a, ranges)
    c = e.b.value if isinstance(e.b, L.Const) and isinstance(e.b.value, int) else None
    if e.op in ("mod", "floordiv") and c is not None and c > 0:
        if e.op == "mod":
            return (a[0], a[1]) if a is not None and a[0] >= 0 and a[1] < c else (0, c - 1)
        return None if a is None else (a[0] // c, a[1] // c)
    b = int_bounds(e.b, ranges)
    if a is None or b is None:
        return None
    if e.op == "add":
        return a[0] + b[0], a[1] + b[1]
    if e.op == "sub":
        return a[0] - b[1], a[1] - b[0]
    if e.op == "mul":
        products = [x * y for x in a for y in b]
        return min(products), max(products)
    if e.op in ("min", "max"):
        f = min if e.op == "min" else max
        return f(a[0], b[0]), f(a[1], b[1])
    return None
