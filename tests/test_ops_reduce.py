"""Conformance of ubique's reductions (sum mean max min prod argmax argmin) and matmul with numpy.

Reductions run over every kind of `axis` (None, an int, negative ints, tuples in any order,
the empty tuple) with and without keepdims, on every dtype, with NaN/inf and size-0/1
dimensions. Each example runs eagerly (`ub.sum(x, ...)`) and jitted through the method
form (`x.sum(...)`). Float tolerances scale with the reduction length (tolerances.py).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import ubique as ub
from strategies import (ALL_DTYPES, FLOAT_DTYPES, NUMERIC_DTYPES, arrays, axes_for, dtypes, is_float, np_dtype,
                        result_dtype, shapes)
from tolerances import BF16, assert_close, dtype_name

F64 = np.float64


def _norm_axes(axis, rank):
    if axis is None:
        return tuple(range(rank))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % rank for a in axes) if rank else ()


def _count(shape, axis):
    return math.prod(shape[a] for a in _norm_axes(axis, len(shape)))


def reduction_dtype(op, dt):
    """numpy's result dtype, except the documented deviation: sum/prod of uint8 is int64."""
    name = dtype_name(np_dtype(dt))
    if op in ("max", "min"):
        return np_dtype(name)
    if name == "bfloat16":
        return BF16
    if op == "mean":
        return np.mean(np.zeros(1, np_dtype(name))).dtype  # ints and bool -> float64
    if name in ("bool", "int8", "uint8", "int32", "int64"):
        return np.dtype(np.int64)
    return np_dtype(name)


def reduction_reference(op, x, axis, keepdims):
    out = reduction_dtype(op, dtype_name(x.dtype))
    np_fn = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min, "mean": np.mean}[op]
    if is_float(dtype_name(out)):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice is NaN
            return np.asarray(np_fn(x.astype(F64), axis=axis, keepdims=keepdims)).astype(out), True
    if op in ("sum", "prod"):
        with np.errstate(all="ignore"):
            return np.asarray(np_fn(x.astype(np.int64), axis=axis, keepdims=keepdims)).astype(out), False
    return np.asarray(np_fn(x, axis=axis, keepdims=keepdims)), False


def _values(op, dt):
    if op == "prod":  # keep products in range so that rounding, not overflow, is what is tested
        return dict(lo=-2, hi=2) if is_float(dt) else dict(lo=-3, hi=3)
    if op in ("sum", "mean") and dt in ("float16", "bfloat16"):
        return dict(lo=-100, hi=100)  # sums stay well inside float16's range (65504)
    return {}


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "prod"])
@given(data=st.data())
def test_reductions_any_axes(op, data):
    dt = data.draw(dtypes(ALL_DTYPES), "dtype")
    shape = data.draw(shapes(), "shape")
    x = data.draw(arrays(dt, shape, **_values(op, dt)), "x")
    axis = data.draw(axes_for(len(shape)), "axis")
    keepdims = data.draw(st.booleans(), "keepdims")
    n = _count(shape, axis)
    msg = f"ub.{op}({dt}{shape}, axis={axis}, keepdims={keepdims})"
    jitted = ub.jit(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims))
    if op in ("max", "min") and n == 0 and x.size == 0 and _norm_axes(axis, len(shape)):
        with pytest.raises(ValueError):  # numpy: zero-size array to reduction with no identity
            np.max(x, axis=axis)
        for fn in (lambda: getattr(ub, op)(x, axis=axis, keepdims=keepdims), lambda: jitted(x)):
            with pytest.raises(ub.ShapeError):
                fn()
        return
    expected, is_fl = reduction_reference(op, x, axis, keepdims)
    kw = {}
    if is_fl and op in ("sum", "mean", "prod"):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scale = {"sum": np.sum, "mean": np.mean, "prod": np.prod}[op](np.abs(x.astype(F64)), axis=axis,
                                                                         keepdims=keepdims)
        kw = dict(n=max(n, 1), scale=scale)
    assert_close(getattr(ub, op)(x, axis=axis, keepdims=keepdims), expected, msg="eager " + msg, **kw)
    assert_close(jitted(x), expected, msg="jit " + msg, **kw)


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("dt", FLOAT_DTYPES)
def test_max_min_propagate_nan(op, dt):
    """numpy.max/min return NaN when any element is NaN, wherever it sits."""
    x = np.array([[1.0, np.nan, 3.0, -np.inf], [np.nan, 2.0, 0.0, 5.0], [4.0, 1.0, np.inf, np.nan]], np_dtype(dt))
    for axis in (None, 0, 1):
        expected, _ = reduction_reference(op, x, axis, False)
        assert_close(getattr(ub, op)(x, axis=axis), expected, msg=f"ub.{op}({x.tolist()}, axis={axis})")


@pytest.mark.parametrize("op", ["sum", "prod", "mean"])
def test_empty_reductions_give_identity(op):
    x = np.zeros((0, 3), np.float32)
    for axis in (None, 0, (0, 1)):
        expected, _ = reduction_reference(op, x, axis, False)  # 0, 1, NaN (mean of nothing)
        assert_close(getattr(ub, op)(x, axis=axis), expected, msg=f"ub.{op}(float32(0, 3), axis={axis})")


# -- argmax / argmin ---------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["argmax", "argmin"])
@given(data=st.data())
def test_argmax_argmin_first_index_nan_wins(op, data):
    """Index of the first extreme; ties resolve to the first; a NaN counts as the extreme
    (numpy returns the first NaN). Few distinct values make ties common."""
    dt = data.draw(dtypes(ALL_DTYPES), "dtype")
    shape = data.draw(shapes(), "shape")
    integral = data.draw(st.booleans(), "few distinct values")
    kw = dict(lo=-3, hi=3, integral=True) if integral and is_float(dt) else \
        dict(lo=-3, hi=3) if integral and dt != "bool" else {}
    x = data.draw(arrays(dt, shape, **kw), "x")
    rank = len(shape)
    axis = data.draw(st.none() | st.integers(-rank, rank - 1) if rank else st.none(), "axis")
    keepdims = data.draw(st.booleans(), "keepdims")
    msg = f"ub.{op}({dt}{shape}, axis={axis}, keepdims={keepdims})"
    jitted = ub.jit(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims))
    ref_in = x.astype(F64) if is_float(dt) else x
    np_fn = getattr(np, op)
    empty = x.size == 0 if axis is None else shape[axis] == 0
    if empty:
        with pytest.raises(ValueError):
            np_fn(ref_in, axis=axis)
        for fn in (lambda: getattr(ub, op)(x, axis=axis, keepdims=keepdims), lambda: jitted(x)):
            with pytest.raises(ub.ShapeError):
                fn()
        return
    expected = np.asarray(np_fn(ref_in, axis=axis, keepdims=keepdims)).astype(np.int64)
    assert_close(getattr(ub, op)(x, axis=axis, keepdims=keepdims), expected, msg="eager " + msg)
    assert_close(jitted(x), expected, msg="jit " + msg)


@pytest.mark.parametrize("dt", FLOAT_DTYPES)
def test_argmax_argmin_with_nan_and_ties(dt):
    x = np.array([[1.0, 3.0, 3.0, np.nan, np.nan], [-np.inf, -np.inf, 0.0, 0.0, np.inf],
                  [2.0, np.nan, -1.0, -1.0, 5.0]], np_dtype(dt))
    for op in ("argmax", "argmin"):
        for axis in (None, 0, 1, -1):
            expected = np.asarray(getattr(np, op)(x.astype(F64), axis=axis)).astype(np.int64)
            assert_close(getattr(ub, op)(x, axis=axis), expected, msg=f"ub.{op}({x.tolist()}, axis={axis})")


# -- matmul ------------------------------------------------------------------------------------
_MATMUL_SHAPES = hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=3, min_side=0,
                                                   max_side=4).map(lambda b: b.input_shapes)
_JIT_MATMUL = ub.jit(lambda a, b: a @ b)


def matmul_reference(a, b):
    common = result_dtype(dtype_name(a.dtype), dtype_name(b.dtype))
    if is_float(dtype_name(common)):
        a64, b64 = a.astype(common).astype(F64), b.astype(common).astype(F64)
        with np.errstate(all="ignore"):
            return np.matmul(a64, b64).astype(common), np.matmul(np.abs(a64), np.abs(b64))
    with np.errstate(all="ignore"):  # wraps modulo 2**bits like the narrow accumulation does
        return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(common), None


@given(data=st.data())
def test_matmul_batched_broadcast_and_1d(data):
    """numpy.matmul: 1-D operands promoted and squeezed, batch dims broadcast, K = 0 gives 0."""
    sa, sb = data.draw(_MATMUL_SHAPES, "shapes")
    da = data.draw(dtypes(NUMERIC_DTYPES), "dtype a")
    db = data.draw(st.sampled_from((da, da, da)) | dtypes(NUMERIC_DTYPES), "dtype b")
    special = data.draw(st.booleans(), "special values")
    a = data.draw(arrays(da, sa, lo=-10, hi=10, special=special), "a")
    b = data.draw(arrays(db, sb, lo=-10, hi=10, special=special), "b")
    msg = f"ub.matmul({dtype_name(a.dtype)}{sa}, {dtype_name(b.dtype)}{sb})"
    expected, scale = matmul_reference(a, b)
    k = sa[-1]
    kw = dict(n=max(k, 1), scale=scale) if scale is not None else {}
    assert_close(ub.matmul(a, b), expected, msg="eager " + msg, **kw)
    assert_close(_JIT_MATMUL(a, b), expected, msg="jit a @ b " + msg, **kw)


@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16", "int32"])
def test_matmul_larger_than_a_vector_register(dt):
    """Sizes past the SIMD width and any tile size, with a ragged remainder."""
    rng = np.random.default_rng(0)
    a = rng.uniform(-2, 2, (2, 37, 70)).astype(np_dtype(dt)) if is_float(dt) else \
        rng.integers(-50, 50, (2, 37, 70)).astype(dt)
    b = rng.uniform(-2, 2, (70, 45)).astype(np_dtype(dt)) if is_float(dt) else \
        rng.integers(-50, 50, (70, 45)).astype(dt)
    expected, scale = matmul_reference(a, b)
    kw = dict(n=70, scale=scale) if scale is not None else {}
    assert_close(ub.matmul(a, b), expected, msg=f"ub.matmul {dt} (2,37,70)@(70,45)", **kw)


def test_matmul_of_bool_follows_numpy():
    """numpy.matmul on bools is a logical (or-of-ands) product giving bool."""
    a = np.array([[True, False], [False, False]])
    b = np.array([[True, True], [True, False]])
    assert_close(ub.matmul(a, b), np.matmul(a, b), msg="ub.matmul(bool, bool)")


def test_mean_of_large_int64_does_not_wrap():
    """numpy accumulates the mean of integers in float64, so it cannot overflow."""
    x = np.array([2 ** 62, 2 ** 62, 2 ** 62], np.int64)
    assert_close(ub.mean(x), np.mean(x), msg="ub.mean(int64 [2**62]*3)")


@pytest.mark.parametrize("dt", ["float32", "float16", "int32"])
def test_large_reductions_cross_threads_and_vector_tails(dt):
    """Sizes well past the SIMD width and the parallel grain, with ragged remainders."""
    rng = np.random.default_rng(2)
    x = (rng.uniform(-4, 4, (5, 301, 67)) if is_float(dt) else rng.integers(-1000, 1000, (5, 301, 67)))
    x = x.astype(np_dtype(dt))
    for axis in (None, 0, 1, 2, (0, 2), -1):
        for op in ("sum", "max", "min", "mean"):
            expected, is_fl = reduction_reference(op, x, axis, False)
            kw = {}
            if is_fl and op in ("sum", "mean"):
                # seeded random-sign data: rounding errors add up like a random walk, so a
                # sqrt(n) bound is ample here (and still catches a count that is off by one)
                scale = getattr(np, op)(np.abs(x.astype(F64)), axis=axis)
                kw = dict(n=4 * math.isqrt(_count(x.shape, axis)) + 4, scale=scale)
            assert_close(getattr(ub, op)(x, axis=axis), expected, msg=f"ub.{op}({dt}(5,301,67), axis={axis})", **kw)
        for op in ("argmax", "argmin"):
            if axis is None or isinstance(axis, int):
                expected = np.asarray(getattr(np, op)(x.astype(F64), axis=axis)).astype(np.int64)
                assert_close(getattr(ub, op)(x, axis=axis), expected, msg=f"ub.{op}({dt}(5,301,67), axis={axis})")


@pytest.mark.parametrize("dt", ["float16", "bfloat16"])
def test_mean_of_half_precision_counts_exactly(dt):
    """The mean of ones is exactly 1, whatever the count: a count of 70000 does not fit in
    float16 (max 65504) and 383 is not a bfloat16 value, so the divisor must not be rounded
    to the input dtype. numpy computes half-precision means in float32."""
    for shape, axis in [((70000,), None), ((2, 383), 1), ((3, 300, 300), (1, 2))]:
        x = np.ones(shape, np_dtype(dt))
        expected = np.ones(np.mean(np.ones(shape, np.float32), axis=axis).shape, np_dtype(dt))
        assert_close(ub.mean(x, axis=axis), expected, rtol_mult=0.0, msg=f"ub.mean(ones{shape} {dt}, axis={axis})")
