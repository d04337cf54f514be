"""Elementwise ops: math functions, arithmetic with numpy broadcasting, comparisons, where, cast,
rounding, logical and bitwise ops, mod.

Binary `max`/`min` in the loop IR follow numpy's maximum/minimum (NaN propagates).
Math functions give numpy's float result dtype (`float_result`: ints -> float); rounding,
sign, neg and abs keep the input dtype (identity for rounding ints); logical ops give bool.
"""
from __future__ import annotations

import math

from ubique.errors import DTypeError, VerifyError
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


def _numeric(name):
    """Result rule of ops that keep the dtype but are not defined for bool."""
    def result(d):
        if d.is_bool:
            raise DTypeError(f"{name} is not defined for bool tensors; cast to a numeric dtype first")
        return d
    return result


def _integral(name):
    """Result rule of bitwise ops: integer or bool tensors only."""
    def result(d):
        if d.is_float:
            raise DTypeError(f"{name} needs integer or bool tensors, got {d.name}; "
                             "cast to an integer dtype first")
        return d
    return result


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
for _name in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh"):
    _unary(_name, (lambda n: lambda x: L.call(n, x))(_name))
_unary("reciprocal", lambda x: _one(x, 1.0) / x, doc="1 / x (integer inputs give floats, as for exp)")


def _rounding(fn_name):
    return lambda x: L.call(fn_name, x) if x.dtype.is_float else x  # integers are already whole


_unary("floor", _rounding("floor"), result=_numeric("floor"), doc="integers keep their dtype (identity)")
_unary("ceil", _rounding("ceil"), result=_numeric("ceil"), doc="integers keep their dtype (identity)")
_unary("round", _rounding("roundeven"), result=_numeric("round"),
       doc="round half to even (numpy, ONNX); integers keep their dtype (identity)")


def _sign(x):
    one = _one(x, 1)
    if not x.dtype.is_signed:
        return L.select(x.gt(_one(x, 0)), one, _one(x, 0))
    # float zeros give +0 and NaN stays NaN: x - x, as numpy's sign
    rest = x - x if x.dtype.is_float else _one(x, 0)
    return L.select(x.gt(_one(x, 0)), one, L.select(x.lt(_one(x, 0)), _one(x, -1), rest))


_unary("sign", _sign, result=_numeric("sign"), doc="-1, 0 or 1 in the input dtype; sign(NaN) = NaN")


def _bool_out(name, fn, attrs=None, doc=""):
    """A unary op of any input dtype with a bool result; fn(x, attrs) sees x in its own dtype."""
    register(OpDef(name, "elementwise", lambda ts, a: [TensorType(ts[0].shape, DType.bool)],
                   attrs=attrs or {}, compute=lambda ctx, idx: fn(ctx.input(0, idx), ctx.attrs),
                   num_inputs=1, doc=doc))


def _isinf(x, attrs):
    wanted = [v for v, on in ((math.inf, attrs["detect_positive"]), (-math.inf, attrs["detect_negative"])) if on]
    if not x.dtype.is_float or not wanted:
        return L.Const(False, DType.bool)
    hits = [x.eq(L.Const(v, x.dtype)) for v in wanted]
    return hits[0] if len(hits) == 1 else L.Binary("or", *hits)


_bool_out("isnan", lambda x, a: L.call("isnan", x), doc="true where x is NaN (never for integers)")
_bool_out("isinf", _isinf, attrs={"detect_positive": Attr("bool", True), "detect_negative": Attr("bool", True)},
          doc="true where x is +inf (detect_positive) or -inf (detect_negative)")
_bool_out("logical_not", lambda x, a: L.call("not", L.cast(DType.bool, x)),
          doc="not x; non-bool inputs count as true where nonzero (NaN is true), as in numpy")
_unary("bitwise_not", lambda x: L.call("not", x, dtype=x.dtype), result=_integral("bitwise_not"),
       doc="~x on integers (two's complement); logical not on bools")


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

for _name, _op in (("logical_and", "and"), ("logical_or", "or"), ("logical_xor", "xor")):
    _binary(_name, (lambda o: lambda a, b: L.Binary(o, a, b))(_op), operands=lambda a, b: DType.bool,
            doc="inputs count as true where nonzero (NaN is true), as in numpy; result bool")
for _name, _op in (("bitwise_and", "and"), ("bitwise_or", "or"), ("bitwise_xor", "xor")):
    _binary(_name, (lambda o: lambda a, b: L.Binary(o, a, b))(_op), result=_integral(_name),
            doc="integers (two's complement) or bools; numpy promotion")


def _mod_infer(ts, attrs):
    if attrs["fmod"] not in (0, 1):
        raise VerifyError(f"op mod: attribute 'fmod' must be 0 or 1, got {attrs['fmod']}")
    d = promote(ts[0].dtype, ts[1].dtype)
    if d.is_bool:
        raise DTypeError("mod is not defined for bool tensors; cast to an integer dtype first")
    return [TensorType(broadcast_shapes("mod", ts[0].shape, ts[1].shape), d)]


def _mod_compute(ctx, idx):
    d = ctx.out_type.dtype
    a, b = (L.cast(d, ctx.input_bcast(i, idx)) for i in (0, 1))
    zero, fmod = _one(a, 0), ctx.attrs["fmod"]
    if d.is_float:
        r = L.call("fmod", a, b)  # C fmod: exact, NaN for b == 0
        if fmod:
            return r
        fix = L.logical_and(r.ne(zero), L.Binary("xor", r.lt(zero), b.lt(zero)))
        signed_zero = L.select(b.lt(zero), _one(a, -0.0), zero)  # numpy: copysign(0, b)
        return L.select(r.eq(zero), signed_zero, L.select(fix, r + b, r))
    # divisors 0 (defined as 0) and -1 (always 0; INT_MIN % -1 would trap) become 1
    trivial = L.Binary("or", b.eq(zero), b.eq(_one(a, -1))) if d.is_signed else b.eq(zero)
    r = L.Binary("mod", a, L.select(trivial, _one(a, 1), b))  # floor mod: sign of the divisor
    if not fmod or not d.is_signed:
        return r
    differ = L.Binary("xor", a.lt(zero), b.lt(zero))
    return L.select(L.logical_and(r.ne(zero), differ), r - b, r)  # truncated: sign of the dividend


register(OpDef("mod", "elementwise", _mod_infer, attrs={"fmod": Attr("int", 0)}, compute=_mod_compute,
               num_inputs=2,
               doc="remainder with numpy broadcasting and promotion; fmod=0: sign of the divisor "
                   "(numpy.mod, Python %), fmod=1: sign of the dividend (C fmod, numpy.fmod); "
                   "integer x mod 0 is 0 (numpy's result) for both"))


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
