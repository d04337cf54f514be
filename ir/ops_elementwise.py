"""Elementwise ops: math functions, arithmetic with numpy broadcasting, comparisons, where, cast.

Binary `max`/`min` in the loop IR follow numpy's maximum/minimum (NaN propagates).
"""
from __future__ import annotations

from ubique.errors import DTypeError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType, float_result, promote, true_divide_result
from ubique.ir.registry import Attr, OpDef, broadcast_shapes, register
from ubique.ir.graph import TensorType


def _unary(name, fn, result=float_result, doc=""):
    def infer(ts, attrs):
        return [TensorType(ts[0].shape, result(ts[0].dtype))]

    def compute(ctx, idx):
        return fn(L.cast(ctx.out_type.dtype, ctx.input(0, idx)))

    register(OpDef(name, "elementwise", infer, compute=compute, num_inputs=1, doc=doc))


def _same(d):
    if d.is_bool:
        raise DTypeError("this op is not defined for bool tensors (numpy raises too); cast first")
    return d


def _one(x, v):
    return L.Const(v, x.dtype)


_unary("exp", lambda x: L.call("exp", x))
_unary("log", lambda x: L.call("log", x))
_unary("sqrt", lambda x: L.call("sqrt", x))
_unary("rsqrt", lambda x: L.call("rsqrt", x), doc="1 / sqrt(x)")
_unary("tanh", lambda x: L.call("tanh", x))
_unary("erf", lambda x: L.call("erf", x))
_unary("sin", lambda x: L.call("sin", x))
_unary("cos", lambda x: L.call("cos", x))
_unary("sigmoid", lambda x: _one(x, 1.0) / (_one(x, 1.0) + L.call("exp", -x)), doc="1 / (1 + exp(-x))")
_unary("neg", lambda x: -x, result=_same)
_unary("abs", lambda x: x if x.dtype.is_bool else L.call("abs", x), result=lambda d: d)
_unary("relu", lambda x: L.emax(x, _one(x, 0)), result=_same, doc="maximum(x, 0); NaN stays NaN")


def _binary(name, fn, result=None, operands=None, doc=""):
    """`operands(a, b)` gives the dtype both inputs are cast to; `result` the output dtype."""
    operands = operands or promote
    result = result or (lambda d: d)

    def infer(ts, attrs):
        shape = broadcast_shapes(name, ts[0].shape, ts[1].shape)
        return [TensorType(shape, result(operands(ts[0].dtype, ts[1].dtype)))]

    def compute(ctx, idx):
        d = operands(ctx.in_types[0].dtype, ctx.in_types[1].dtype)
        a = L.cast(d, ctx.input_bcast(0, idx))
        b = L.cast(d, ctx.input_bcast(1, idx))
        return fn(a, b)

    register(OpDef(name, "elementwise", infer, compute=compute, num_inputs=2, doc=doc))


def _no_bool(a, b):
    d = promote(a, b)
    if d.is_bool:
        raise DTypeError("subtracting bool tensors is not supported (numpy raises too); use logical ops or cast")
    return d


def _bool_pow(a, b):
    d = promote(a, b)
    return DType.int8 if d.is_bool else d  # numpy: True ** True is int8


# on bools numpy's add is logical or and its mul is logical and
_binary("add", lambda a, b: L.Binary("or", a, b) if a.dtype.is_bool else a + b)
_binary("sub", lambda a, b: a - b, operands=_no_bool)
_binary("mul", lambda a, b: L.Binary("and", a, b) if a.dtype.is_bool else a * b)
_binary("div", lambda a, b: a / b, operands=lambda a, b: true_divide_result(promote(a, b)),
        doc="true division: integer and bool inputs give float64, as in numpy")
_binary("pow", lambda a, b: L.binary("pow", a, b), operands=_bool_pow,
        doc="a ** b; for integers a negative exponent gives 0 (numpy raises)")
_binary("maximum", L.emax, doc="numpy.maximum: NaN propagates")
_binary("minimum", L.emin, doc="numpy.minimum: NaN propagates")
for _name, _cmp in (("equal", "eq"), ("not_equal", "ne"), ("less", "lt"), ("less_equal", "le"),
                    ("greater", "gt"), ("greater_equal", "ge")):
    _binary(_name, (lambda c: lambda a, b: L.compare(c, a, b))(_cmp), result=lambda d: DType.bool)


def _where_infer(ts, attrs):
    shape = broadcast_shapes("where", *(t.shape for t in ts))
    return [TensorType(shape, promote(ts[1].dtype, ts[2].dtype))]


def _where_compute(ctx, idx):
    d = ctx.out_type.dtype
    cond = L.cast(DType.bool, ctx.input_bcast(0, idx))
    return L.select(cond, L.cast(d, ctx.input_bcast(1, idx)), L.cast(d, ctx.input_bcast(2, idx)))


register(OpDef("where", "elementwise", _where_infer, compute=_where_compute, num_inputs=3,
               doc="where(cond, a, b): a where cond is true, else b"))

register(OpDef(
    "cast", "elementwise",
    lambda ts, attrs: [TensorType(ts[0].shape, attrs["dtype"])],
    attrs={"dtype": Attr("dtype", required=True)},
    compute=lambda ctx, idx: L.cast(ctx.out_type.dtype, ctx.input(0, idx)),
    doc="converts element type; float -> int saturates and maps NaN to 0"))

register(OpDef("identity", "elementwise", lambda ts, attrs: [ts[0]],
               compute=lambda ctx, idx: ctx.input(0, idx), doc="a copy"))
