"""Activation functions (ONNX semantics): clip, prelu and one-kernel elementwise activations.

The float activations give numpy's float result dtype (`float_result`: integer inputs give
floats, as exp does) and compute float16/bfloat16 in float32, rounding once at the end.
Their float attributes become constants of the compute dtype. NaN inputs give what the
ONNX formula gives (NaN for most; 0 where the formula selects a constant: thresholded_relu,
shrink). `clip` and `prelu` keep integer dtypes.
"""
from __future__ import annotations

import math

import numpy as np

from ubique.errors import DTypeError, VerifyError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType, float_result, promote
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, broadcast_shapes, register


def _compute_dtype(d: DType) -> DType:
    return DType.float32 if d in (DType.float16, DType.bfloat16) else d


def _activation(name, fn, attrs=None, doc=""):
    """Registers `name`: fn(x, c, attrs) builds the result from x (in the compute dtype) and
    c(value), a constant of that dtype."""
    def infer(ts, a):
        return [TensorType(ts[0].shape, float_result(ts[0].dtype))]

    def compute(ctx, idx):
        d = ctx.out_type.dtype
        cd = _compute_dtype(d)
        x = L.cast(cd, ctx.input(0, idx))
        return L.cast(d, fn(x, lambda v: L.Const(v, cd), ctx.attrs))

    register(OpDef(name, "elementwise", infer, attrs=attrs or {}, compute=compute, num_inputs=1, doc=doc))


def _softplus(x, c):
    return L.emax(x, c(0.0)) + L.call("log1p", L.call("exp", -L.call("abs", x)))


def _hard_sigmoid(x, c, alpha, beta):
    return L.emax(c(0.0), L.emin(c(1.0), c(alpha) * x + c(beta)))


def _sigmoid(x, c):
    return c(1.0) / (c(1.0) + L.call("exp", -x))


_activation("hard_sigmoid", lambda x, c, a: _hard_sigmoid(x, c, a["alpha"], a["beta"]),
            {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)}, doc="max(0, min(1, alpha*x + beta))")
_activation("hard_swish", lambda x, c, a: x * _hard_sigmoid(x, c, 1 / 6, 0.5), doc="x * hard_sigmoid(x; 1/6, 0.5)")
_activation("leaky_relu", lambda x, c, a: L.select(x.lt(c(0.0)), c(a["alpha"]) * x, x),
            {"alpha": Attr("float", 0.01)}, doc="x < 0 ? alpha*x : x")
_activation("elu", lambda x, c, a: L.select(x.lt(c(0.0)), c(a["alpha"]) * L.call("expm1", x), x),
            {"alpha": Attr("float", 1.0)}, doc="x < 0 ? alpha*(exp(x) - 1) : x")
_activation("selu", lambda x, c, a: c(a["gamma"]) * L.select(x.gt(c(0.0)), x, c(a["alpha"]) * L.call("expm1", x)),
            {"alpha": Attr("float", 1.67326319217681884765625), "gamma": Attr("float", 1.05070102214813232421875)},
            doc="gamma * (x > 0 ? x : alpha*(exp(x) - 1))")
_activation("celu", lambda x, c, a: L.emax(c(0.0), x)
            + L.emin(c(0.0), c(a["alpha"]) * L.call("expm1", x / c(a["alpha"]))),
            {"alpha": Attr("float", 1.0)}, doc="max(0, x) + min(0, alpha*(exp(x/alpha) - 1))")
_activation("softplus", lambda x, c, a: _softplus(x, c),
            doc="log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) (no overflow)")
_activation("softsign", lambda x, c, a: x / (c(1.0) + L.call("abs", x)), doc="x / (1 + |x|) (NaN at +-inf, as ONNX)")
_activation("mish", lambda x, c, a: x * L.call("tanh", _softplus(x, c)), doc="x * tanh(softplus(x))")
_activation("silu", lambda x, c, a: x * _sigmoid(x, c), doc="x * sigmoid(x) (swish)")
_activation("thresholded_relu", lambda x, c, a: L.select(x.gt(c(a["alpha"])), x, c(0.0)),
            {"alpha": Attr("float", 1.0)}, doc="x > alpha ? x : 0")
_activation("shrink", lambda x, c, a: L.select(x.lt(c(-a["lambd"])), x + c(a["bias"]),
                                               L.select(x.gt(c(a["lambd"])), x - c(a["bias"]), c(0.0))),
            {"bias": Attr("float", 0.0), "lambd": Attr("float", 0.5)},
            doc="x < -lambd ? x + bias : x > lambd ? x - bias : 0")


# -- clip ----------------------------------------------------------------------------------
def _clip_infer(ts, attrs):
    for name in ("min", "max"):
        v = attrs[name]
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise VerifyError(f"op clip: attribute {name!r} must be a float or None, got {v!r}")
        attrs[name] = v = float(v)  # numpy scalars -> float (the registry has no float-or-None type)
        if math.isnan(v) and not ts[0].dtype.is_float:
            raise DTypeError(f"clip: a NaN {name} bound cannot apply to an integer tensor ({ts[0].dtype.name})")
    for t in ts:
        if t.dtype.is_bool:
            raise DTypeError("clip is not defined for bool tensors; cast to a numeric dtype first")
    return [TensorType(broadcast_shapes("clip", *(t.shape for t in ts)), ts[0].dtype)]


def _bound_const(v: float, d: DType, lower: bool) -> L.Const | None:
    """A float attribute bound as a constant of dtype `d`; None where it bounds nothing.
    For integers the bound is rounded inward (ceil for min, floor for max), then clamped to
    the dtype's range."""
    if d.is_float:
        return L.Const(v, d)
    info = np.iinfo(d.to_numpy())
    if (lower and v <= info.min) or (not lower and v >= info.max):
        return None
    if info.min < v < info.max:
        return L.Const(math.ceil(v) if lower else math.floor(v), d)
    return L.Const(info.max if v > 0 else info.min, d)  # a bound beyond the range (or inf)


def _clip_compute(ctx, idx):
    d = ctx.out_type.dtype
    x = ctx.input_bcast(0, idx)
    bounds = []
    for k, name in ((1, "min"), (2, "max")):
        if k < len(ctx.in_types):
            bounds.append(L.cast(d, ctx.input_bcast(k, idx)))
        elif ctx.attrs[name] is not None:
            bounds.append(_bound_const(float(ctx.attrs[name]), d, lower=(name == "min")))
        else:
            bounds.append(None)
    lo, hi = bounds
    if lo is not None:
        x = L.emax(x, lo)
    if hi is not None:
        x = L.emin(x, hi)
    return x


register(OpDef("clip", "elementwise", _clip_infer,
               attrs={"min": Attr("any", None), "max": Attr("any", None)},  # float or None
               compute=_clip_compute, num_inputs=(1, 3),
               doc="min(max(x, min), max) in x's dtype (np.clip, ONNX Clip: NaN in x stays NaN; min > max "
                   "gives max). Inputs: x, optional min tensor, optional max tensor (cast to x's dtype, "
                   "broadcast numpy-style); the float attributes min/max apply where that tensor is absent, "
                   "None = unbounded. To give a max tensor without a min, pass -inf (or the integer "
                   "dtype's lowest value) as the min tensor."))


# -- prelu ---------------------------------------------------------------------------------
def _prelu_infer(ts, attrs):
    d = promote(ts[0].dtype, ts[1].dtype)
    if d.is_bool:
        raise DTypeError("prelu is not defined for bool tensors; cast to a numeric dtype first")
    return [TensorType(broadcast_shapes("prelu", ts[0].shape, ts[1].shape), d)]


def _prelu_compute(ctx, idx):
    d = ctx.out_type.dtype
    x, slope = (L.cast(d, ctx.input_bcast(i, idx)) for i in (0, 1))
    return L.select(x.lt(L.Const(0, d)), slope * x, x)


register(OpDef("prelu", "elementwise", _prelu_infer, compute=_prelu_compute, num_inputs=2,
               doc="x < 0 ? slope*x : x; slope broadcasts numpy-style (ONNX PRelu); numpy promotion"))
