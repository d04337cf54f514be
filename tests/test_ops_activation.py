"""Conformance of the activation ops (ONNX semantics) with float64 numpy references.

Float activations give numpy's float result dtype and compute float16/bfloat16 in float32,
with their attributes as constants of that compute dtype; the references below use the
same constants (rounded to float32 unless the result is float64), so the tolerances of
tests/tolerances.py measure only the arithmetic. clip and prelu keep integer dtypes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ubique as ub
from ubique.build import build, compile_program
from ubique.ir.graph import Graph, TensorType
from ubique.ir.serialize import dumps, loads
from strategies import (ALL_DTYPES, FLOAT_DTYPES, INT_DTYPES, NUMERIC_DTYPES, arrays, broadcastable_shapes,
                        dtypes, float_result_dtype, np_dtype, result_dtype, shapes)
from tolerances import assert_close, assert_same, dtype_name

F64 = np.float64


def run_op(op, *xs, **attrs):
    g = Graph(op)
    ins = [g.add_input(TensorType(x.shape, dtype_name(x.dtype)), f"x{k}") for k, x in enumerate(xs)]
    g.outputs = [g.op(op, *ins, **attrs)]
    return build(g).run(*xs)[0]


def describe(*xs):
    return ", ".join(f"{dtype_name(x.dtype)}{tuple(x.shape)}" for x in xs)


# -- float activations ---------------------------------------------------------------------------
def _softplus(x):
    return np.logaddexp(0.0, x)


def _hard_sigmoid(x, alpha, beta):
    return np.maximum(0.0, np.minimum(1.0, alpha * x + beta))


# op -> (reference(x, **attrs), {attr: strategy}); references are the ONNX formulas in float64
ACTIVATIONS = {
    "hard_sigmoid": (_hard_sigmoid, {"alpha": st.floats(0.05, 1.0), "beta": st.floats(0.0, 1.0)}),
    "hard_swish": (lambda x: x * _hard_sigmoid(x, 1 / 6, 0.5), {}),
    "leaky_relu": (lambda x, alpha: np.where(x < 0, alpha * x, x), {"alpha": st.floats(0.0, 2.0)}),
    "elu": (lambda x, alpha: np.where(x < 0, alpha * np.expm1(x), x), {"alpha": st.floats(0.1, 3.0)}),
    "selu": (lambda x, alpha, gamma: gamma * np.where(x > 0, x, alpha * np.expm1(x)),
             {"alpha": st.floats(0.5, 2.0), "gamma": st.floats(0.5, 2.0)}),
    "celu": (lambda x, alpha: np.maximum(0.0, x) + np.minimum(0.0, alpha * np.expm1(x / alpha)),
             {"alpha": st.floats(0.25, 3.0)}),
    "softplus": (_softplus, {}),
    "softsign": (lambda x: x / (1.0 + np.abs(x)), {}),
    "mish": (lambda x: x * np.tanh(_softplus(x)), {}),
    "silu": (lambda x: x / (1.0 + np.exp(-x)), {}),
    "thresholded_relu": (lambda x, alpha: np.where(x > alpha, x, 0.0), {"alpha": st.floats(-2.0, 2.0)}),
    "shrink": (lambda x, bias, lambd: np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0.0)),
               {"bias": st.floats(-2.0, 2.0), "lambd": st.floats(0.0, 2.0)}),
}
DEFAULTS = {"hard_sigmoid": {"alpha": 0.2, "beta": 0.5}, "leaky_relu": {"alpha": 0.01}, "elu": {"alpha": 1.0},
            "selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
            "celu": {"alpha": 1.0}, "thresholded_relu": {"alpha": 1.0}, "shrink": {"bias": 0.0, "lambd": 0.5}}


def activation_reference(op, x, attrs):
    """The ONNX formula in float64 with the attributes as ubique's constants (float32 unless
    the result is float64), rounded to the result dtype."""
    out = float_result_dtype(dtype_name(x.dtype))
    const = F64 if dtype_name(out) == "float64" else np.float32
    attrs = {k: float(const(v)) for k, v in {**DEFAULTS.get(op, {}), **attrs}.items()}
    with np.errstate(all="ignore"):
        return np.asarray(ACTIVATIONS[op][0](x.astype(F64), **attrs)).astype(out)


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
@given(data=st.data())
def test_activation(op, data):
    """Every dtype (integers give floats, as exp), any shape, specials; attributes default
    or drawn."""
    dt = data.draw(dtypes(ALL_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes()), "x")
    strategies_ = ACTIVATIONS[op][1]
    attrs = data.draw(st.fixed_dictionaries(strategies_), "attrs") if data.draw(st.booleans(), "set attrs") else {}
    assert_close(run_op(op, x, **attrs), activation_reference(op, x, attrs), msg=f"{op}({describe(x)}, {attrs})")


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
@given(data=st.data())
def test_activation_moderate_values(op, data):
    """Values where the formulas' branches and curvature matter (|x| <= 30)."""
    dt = data.draw(dtypes(FLOAT_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes(), lo=-30.0, hi=30.0, special=False), "x")
    assert_close(run_op(op, x), activation_reference(op, x, {}), msg=f"{op}({describe(x)})")


_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 3.0, -3.0, 20.0, -20.0,
                     88.0, -104.0, 1e-30, -1e-30, 1e-6, -1e-6], F64)


@pytest.mark.parametrize("dt", FLOAT_DTYPES)
@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activation_special_values(op, dt):
    """NaN gives NaN (0 for thresholded_relu and shrink, which select a constant), infinities
    follow the ONNX formula, softplus does not overflow, tiny inputs keep their precision."""
    x = _SPECIAL.astype(np_dtype(dt))
    assert_close(run_op(op, x), activation_reference(op, x, {}), msg=f"{op}({dt} specials {x})")


@pytest.mark.parametrize("dt", FLOAT_DTYPES)
def test_activation_long_arrays(dt):
    """Rows past the SIMD width (vector exp/expm1/log1p/tanh calls) with a ragged tail."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.uniform(-12, 12, 600), _SPECIAL]).reshape(1, -1).astype(np_dtype(dt))
    x = np.broadcast_to(x, (3, x.shape[1])).copy()
    for op in ACTIVATIONS:
        assert_close(run_op(op, x), activation_reference(op, x, {}), msg=f"{op}({describe(x)})")


def test_softplus_is_stable_far_out():
    x = np.array([-800.0, -50.0, 50.0, 800.0, 1e300], F64)
    assert_close(run_op("softplus", x), _softplus(x), msg="softplus float64")
    assert_close(run_op("softplus", x.astype(np.float32)), _softplus(x).astype(np.float32), msg="softplus float32")


# -- clip ----------------------------------------------------------------------------------------
def clip_reference(x, lo, hi):
    """np.minimum(np.maximum(x, lo), hi) in x's dtype; None bounds nothing (min > max gives max)."""
    with np.errstate(all="ignore"):
        if lo is not None:
            x = np.maximum(x, lo)
        if hi is not None:
            x = np.minimum(x, hi)
    return x


def _bound_attr(data, dt, label):
    """None, or a float bound: for float x a value of x's dtype (so the comparison is exact), for
    integer x any float (ubique rounds it inward: ceil for min, floor for max)."""
    if data.draw(st.booleans(), f"{label} set"):
        if dt in FLOAT_DTYPES:
            return float(data.draw(arrays(dt, ()), label).astype(F64))
        return data.draw(st.one_of(st.floats(-300, 300), st.sampled_from([math.inf, -math.inf, 1e30])), label)
    return None


def _int_bound(v, dt, lower):
    if v is None:
        return None
    info = np.iinfo(dt)
    w = math.ceil(v) if lower and math.isfinite(v) else math.floor(v) if math.isfinite(v) else v
    return np.array(min(max(w, info.min), info.max), dt)


@given(data=st.data())
def test_clip_with_attribute_bounds(data):
    dt = data.draw(dtypes(NUMERIC_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes()), "x")
    lo, hi = _bound_attr(data, dt, "min"), _bound_attr(data, dt, "max")
    attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None or data.draw(st.booleans())}
    if dt in FLOAT_DTYPES:
        expected = clip_reference(x, None if lo is None else np.array(lo, x.dtype),
                                  None if hi is None else np.array(hi, x.dtype))
    else:
        expected = clip_reference(x, _int_bound(lo, dt, True), _int_bound(hi, dt, False))
    assert_same(run_op("clip", x, **attrs), expected, msg=f"clip({describe(x)}, {attrs})")


@given(data=st.data())
def test_clip_with_tensor_bounds(data):
    """min (and max) as tensors of x's dtype, broadcasting numpy-style; a missing max tensor
    falls back to the max attribute."""
    dt = data.draw(dtypes(NUMERIC_DTYPES), "dtype")
    n = data.draw(st.sampled_from((2, 3)), "inputs")
    sx, *sbounds = data.draw(broadcastable_shapes(n), "shapes")
    x = data.draw(arrays(dt, sx), "x")
    bounds = [data.draw(arrays(dt, s), f"bound {k}") for k, s in enumerate(sbounds)]
    attrs = {}
    hi = bounds[1] if n == 3 else None
    if n == 2 and data.draw(st.booleans(), "max attribute"):
        hi = data.draw(arrays(dt, ()), "max attr")
        attrs["max"] = float(hi.astype(F64))
    expected = np.broadcast_to(clip_reference(x, bounds[0], hi), np.broadcast_shapes(sx, *sbounds))
    assert_same(run_op("clip", x, *bounds, **attrs), expected, msg=f"clip({describe(x, *bounds)}, {attrs})")


def test_clip_nan_and_crossed_bounds():
    x = np.array([np.nan, -np.inf, np.inf, -2.0, 0.5, 3.0], np.float32)
    assert_same(run_op("clip", x, min=-1.0, max=1.0), np.clip(x, -1.0, 1.0), msg="clip keeps NaN")
    assert_same(run_op("clip", x, min=2.0, max=1.0), np.where(np.isnan(x), x, np.float32(1.0)),
                msg="min > max gives max")
    assert_same(run_op("clip", x), x, msg="no bounds: identity")
    i = np.array([-128, -5, 0, 5, 127], np.int8)
    assert_same(run_op("clip", i, min=-3.5, max=1e10), np.array([-3, -3, 0, 5, 127], np.int8), msg="int8 clip")
    assert_same(run_op("clip", i, min=math.inf), np.full(5, 127, np.int8), msg="int8 clip at +inf")


def test_clip_graph_round_trips_and_accepts_numpy_scalars():
    g = Graph("clip")
    x = g.add_input(TensorType((3,), "f32"), "x")
    g.outputs = [g.op("clip", x, min=np.float32(-0.5), max=math.inf)]
    g2 = loads(dumps(g))
    xv = np.array([-1.0, 0.25, np.inf], np.float32)
    assert_same(build(g2).run(xv)[0], np.clip(xv, -0.5, np.inf), msg="clip after round trip")


# -- prelu ---------------------------------------------------------------------------------------
@given(data=st.data())
def test_prelu_broadcasts_slope(data):
    sx, ss = data.draw(broadcastable_shapes(2), "shapes")
    dx, ds = data.draw(dtypes(NUMERIC_DTYPES), "dtype x"), data.draw(dtypes(NUMERIC_DTYPES), "dtype slope")
    x, slope = data.draw(arrays(dx, sx), "x"), data.draw(arrays(ds, ss, lo=-3, hi=3), "slope")
    common = result_dtype(dx, ds)
    if dtype_name(common) in FLOAT_DTYPES:
        with np.errstate(all="ignore"):
            x64, s64 = x.astype(F64), slope.astype(F64)
            expected = np.where(x64 < 0, x64 * s64, x64).astype(common)
    else:
        with np.errstate(all="ignore"):
            xc, sc = x.astype(common), slope.astype(common)
            expected = np.where(xc < 0, xc * sc, xc)  # integer products wrap, as in numpy
    assert_close(run_op("prelu", x, slope), expected, msg=f"prelu({describe(x, slope)})")


# -- errors, fusion --------------------------------------------------------------------------------
@pytest.mark.parametrize("op,dts,attrs,words", [
    ("clip", ["bool"], {}, ["clip", "bool"]),
    ("clip", ["float32", "bool"], {}, ["clip", "bool"]),
    ("prelu", ["bool", "bool"], {}, ["prelu", "bool"]),
    ("clip", ["int32"], {"min": math.nan}, ["clip", "NaN", "int32"]),
])
def test_bad_dtypes_raise_dtype_error(op, dts, attrs, words):
    g = Graph("bad")
    ins = [g.add_input(TensorType((2,), dt), f"x{k}") for k, dt in enumerate(dts)]
    with pytest.raises(ub.DTypeError) as ei:
        g.op(op, *ins, **attrs)
    msg = str(ei.value)
    assert all(w in msg for w in words), msg


def test_bad_attributes_raise_verify_error():
    g = Graph("bad")
    x = g.add_input(TensorType((2,), "f32"), "x")
    with pytest.raises(ub.VerifyError, match="min"):
        g.op("clip", x, min="low")
    with pytest.raises(ub.VerifyError, match="alpha"):
        g.op("leaky_relu", x, alpha="big")
    with pytest.raises(ub.VerifyError, match="unknown attribute"):
        g.op("elu", x, beta=1.0)


@pytest.mark.parametrize("dt", INT_DTYPES + ("bool",))
def test_activations_on_integers_give_floats(dt):
    x = np.array([0, 1, 3], dt)
    out = run_op("silu", x)
    assert dtype_name(out.dtype) == dtype_name(float_result_dtype(dt))


def test_activation_chain_is_one_kernel():
    """Activations are elementwise computes: with a producer and a consumer they fuse."""
    g = Graph("chain")
    x = g.add_input(TensorType((4, 8), "f16"), "x")
    s = g.add_input(TensorType((8,), "f16"), "slope")
    y = g.op("prelu", g.op("mish", g.op("clip", x, min=-6.0, max=6.0)), s)
    g.outputs = [g.op("hard_swish", g.op("elu", y, alpha=0.5))]
    assert compile_program(g).num_kernels == 1
    xv = np.linspace(-8, 8, 32).reshape(4, 8).astype(np.float16)
    sv = np.linspace(-1, 1, 8).astype(np.float16)
    x64 = np.clip(xv.astype(F64), -6, 6)
    m = x64 * np.tanh(_softplus(x64))
    y64 = np.where(m < 0, m * sv.astype(F64), m)
    e = np.where(y64 < 0, 0.5 * np.expm1(y64), y64)
    expected = (e * _hard_sigmoid(e, 1 / 6, 0.5)).astype(np.float16)
    assert_close(build(g).run(xv, sv)[0], expected, rtol_mult=2, msg="fused f16 chain")
