"""Conformance of ubique's elementwise ops with numpy (scipy for erf, ml_dtypes for bfloat16).

Every op runs twice per example, eagerly (`ub.exp(x)`) and through `@ub.jit`, and both
results are checked against a float64 numpy reference rounded to numpy's result dtype.
Values include NaN, +-inf and +-0; shapes include size-0 and size-1 dimensions; binary
ops get numpy-broadcastable shape pairs and every dtype pair. The last section checks
that fusing a chain into one kernel does not change its results.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from hypothesis import given, note, strategies as st

import ubique as ub
from strategies import (ALL_DTYPES, FLOAT_DTYPES, INT_DTYPES, NUMERIC_DTYPES, arrays, broadcastable_shapes,
                        dtypes, float_result_dtype, is_float, np_dtype, result_dtype, shapes, widen)
from tolerances import BF16, EPS, assert_close, assert_same, dtype_name

F64 = np.float64


def _ref(fn, *xs, out):
    """fn evaluated in float64 on the given arrays, rounded to the dtype `out`."""
    with np.errstate(all="ignore"):
        return np.asarray(fn(*[np.asarray(x).astype(F64) for x in xs])).astype(out)


def _both(op_fn, jitted, *args):
    """(eager result, jitted result) of one op."""
    return op_fn(*args), jitted(*args)


def _describe(*arrays_):
    return ", ".join(f"{dtype_name(a.dtype)}{tuple(a.shape)}" if isinstance(a, np.ndarray) else repr(a)
                     for a in arrays_)


# -- unary -------------------------------------------------------------------------------------
# op -> float64 reference; output dtype is numpy's for a transcendental ufunc (ints -> float)
UNARY_FLOAT = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "erf": scipy.special.erf,
    "sin": np.sin,
    "cos": np.cos,
}
# op -> reference in the input's own dtype (integers wrap, as numpy's do)
UNARY_SAME = {
    "neg": np.negative,
    "abs": np.abs,
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
}
_JIT_UNARY = {name: ub.jit(lambda x, _f=getattr(ub, name): _f(x)) for name in {**UNARY_FLOAT, **UNARY_SAME}}


@pytest.mark.parametrize("op", sorted(UNARY_FLOAT))
@given(data=st.data())
def test_unary_float_ops(op, data):
    dt = data.draw(dtypes(ALL_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes()), "x")
    expected = _ref(UNARY_FLOAT[op], x, out=float_result_dtype(dt))
    for how, got in zip(("eager", "jit"), _both(getattr(ub, op), _JIT_UNARY[op], x)):
        assert_close(got, expected, msg=f"{how} ub.{op}({_describe(x)})")


@pytest.mark.parametrize("op", sorted(UNARY_SAME))
@given(data=st.data())
def test_unary_same_dtype_ops(op, data):
    dt = data.draw(dtypes(NUMERIC_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes()), "x")
    if is_float(dt):
        expected = _ref(UNARY_SAME[op], x, out=x.dtype)
    else:
        with np.errstate(all="ignore"):
            expected = UNARY_SAME[op](x)  # wraps: neg(-128) == -128 in int8, as in numpy
    for how, got in zip(("eager", "jit"), _both(getattr(ub, op), _JIT_UNARY[op], x)):
        assert_close(got, expected, msg=f"{how} ub.{op}({_describe(x)})")


_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 88.0, -104.0, 1e-30], F64)


@pytest.mark.parametrize("dt", FLOAT_DTYPES)
@pytest.mark.parametrize("op", sorted(UNARY_FLOAT) + sorted(UNARY_SAME))
def test_unary_special_values(op, dt):
    """exp(inf)=inf, exp(-inf)=0, log(0)=-inf, log(-1)=nan, sqrt(-1)=nan, rsqrt(0)=inf,
    tanh/erf/sigmoid saturate, NaN propagates, relu(NaN)=NaN, ... exactly as numpy says."""
    x = _SPECIAL.astype(np_dtype(dt))
    fn = {**UNARY_FLOAT, **UNARY_SAME}[op]
    expected = _ref(fn, x, out=x.dtype)
    assert_close(getattr(ub, op)(x), expected, msg=f"ub.{op}({dt} specials {x})")


@pytest.mark.parametrize("op,raises", [("neg", True), ("abs", False), ("exp", False), ("sqrt", False)])
def test_unary_on_bool_follows_numpy(op, raises):
    """numpy: negative(bool) raises, abs(bool) -> bool, exp(bool) -> float16."""
    x = np.array([True, False, True])
    if raises:
        with pytest.raises(ub.UbiqueError):
            getattr(ub, op)(x)
        return
    np_fn = {"abs": np.abs, "exp": np.exp, "sqrt": np.sqrt}[op]
    assert_close(getattr(ub, op)(x), np_fn(x), msg=f"ub.{op}(bool)")


# -- binary ------------------------------------------------------------------------------------
ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "pow": np.power,
         "maximum": np.maximum, "minimum": np.minimum}
COMPARE = {"equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
           "greater": np.greater, "greater_equal": np.greater_equal}
BINARY = {**ARITH, **COMPARE}
_JIT_BINARY = {name: ub.jit(lambda a, b, _f=getattr(ub, name): _f(a, b)) for name in BINARY}


def _int_pow(a, b):
    """numpy's wrapping integer power; a negative exponent gives 0 (1 for base 1): ubique's
    documented definition where numpy raises."""
    with np.errstate(all="ignore"):
        r = np.power(a, np.where(b < 0, 0, b).astype(b.dtype))
    return np.where(b < 0, (a == 1).astype(r.dtype), r).astype(r.dtype)


def binary_reference(op, a, b):
    """numpy's answer for ub.<op>(a, b); a or b may be a Python scalar (weak, NEP 50)."""
    np_fn = BINARY[op]
    da = a.dtype if isinstance(a, np.ndarray) else None
    db = b.dtype if isinstance(b, np.ndarray) else None
    has_bf16 = BF16 is not None and BF16 in (da, db)
    if has_bf16:  # ml_dtypes predates NEP 50; use ubique's (JAX's) bfloat16 promotion
        arrays_ = [x.dtype for x in (a, b) if isinstance(x, np.ndarray)]
        common = result_dtype(*arrays_)
        scalar = [x for x in (a, b) if not isinstance(x, np.ndarray)]
        if scalar and isinstance(scalar[0], float) and not is_float(dtype_name(common)):
            common = np.dtype(F64)
    else:  # let numpy itself resolve the types (zero-size stand-ins keep it cheap)
        za = np.zeros(0, da) if da is not None else a
        zb = np.zeros(0, db) if db is not None else b
        with np.errstate(all="ignore"):
            common = widen(np.add(za, zb).dtype if op not in ("div",) else np_fn(za, zb).dtype)
    if op == "div" and not is_float(dtype_name(common)):
        common = np.dtype(F64)
    ca = np.asarray(a).astype(common) if isinstance(a, np.ndarray) else np.asarray(a, dtype=common)
    cb = np.asarray(b).astype(common) if isinstance(b, np.ndarray) else np.asarray(b, dtype=common)
    if op in COMPARE:
        if is_float(dtype_name(common)):
            return np_fn(ca.astype(F64), cb.astype(F64))
        return np_fn(ca, cb)
    if is_float(dtype_name(common)):
        return _ref(np_fn, ca, cb, out=common)
    if op == "pow":
        return _int_pow(ca, cb)
    with np.errstate(all="ignore"):
        return np_fn(ca, cb).astype(common)


def _value_kw(op, dt, which):
    if op == "pow":  # keep exponents small: the interesting part is signs, 0, 1 and overflow
        if which == "b":
            return dict(lo=-4, hi=12) if not is_float(dt) else dict(lo=-6.0, hi=6.0)
        return dict(lo=-20, hi=20)
    return {}


@pytest.mark.parametrize("op", sorted(BINARY))
@given(data=st.data())
def test_binary_ops_broadcast_and_promote(op, data):
    """Every dtype pair (numpy promotion), broadcastable shapes incl. 0 and 1 sides."""
    sa, sb = data.draw(broadcastable_shapes(2), "shapes")
    da = data.draw(dtypes(ALL_DTYPES), "dtype a")
    db = data.draw(dtypes(ALL_DTYPES), "dtype b")
    if op in ARITH and da == db == "bool" and op not in ("maximum", "minimum"):
        da = "int8"  # bool (op) bool: see test_bool_arithmetic_follows_numpy
    a = data.draw(arrays(da, sa, **_value_kw(op, da, "a")), "a")
    b = data.draw(arrays(db, sb, **_value_kw(op, db, "b")), "b")
    expected = binary_reference(op, a, b)  # int8 (op) uint8: numpy's int16 widened to int32
    for how, got in zip(("eager", "jit"), _both(getattr(ub, op), _JIT_BINARY[op], a, b)):
        assert_close(got, expected, msg=f"{how} ub.{op}({_describe(a, b)})")


@pytest.mark.parametrize("op", ["maximum", "minimum"])
@pytest.mark.parametrize("dt", FLOAT_DTYPES)
def test_maximum_minimum_propagate_nan(op, dt):
    a = np.array([np.nan, 1.0, np.nan, -np.inf, 0.0, -0.0], np_dtype(dt))
    b = np.array([1.0, np.nan, np.nan, np.inf, -0.0, 0.0], np_dtype(dt))
    expected = binary_reference(op, a, b)
    assert_close(getattr(ub, op)(a, b), expected, msg=f"ub.{op}({a}, {b})")


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
def test_bool_arithmetic_follows_numpy(op):
    """numpy: bool+bool and bool*bool stay bool (or/and), bool/bool is float64, bool**bool is
    int8, bool-bool raises. ubique must give the same result, or raise where numpy raises."""
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    try:
        with np.errstate(all="ignore"):
            expected = ARITH[op](a, b)
    except TypeError:
        with pytest.raises(ub.UbiqueError):
            getattr(ub, op)(a, b)
        return
    assert_close(getattr(ub, op)(a, b), expected, msg=f"ub.{op}(bool, bool)")


def test_int_division_by_zero_and_pow_edges():
    a = np.array([1, -1, 0, 7, -128, 2, 0, -2], np.int8)
    b = np.array([0, 0, 0, 2, -1, 7, 0, 3], np.int8)
    assert_close(ub.div(a, b), binary_reference("div", a, b), msg="int8 / int8 incl. x/0")
    assert_close(ub.pow(a, b), binary_reference("pow", a, b), msg="int8 ** int8 incl. 0**0, wrap")
    c = np.array([2, 3, -3, 1, -1, 0, 10], np.int64)
    e = np.array([62, 39, 40, -3, -2, 5, 19], np.int64)
    assert_close(ub.pow(c, e), binary_reference("pow", c, e), msg="int64 ** int64, wrap")


@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16", "int32"])
def test_large_arrays_cross_threads_and_vector_tails(dt):
    """Sizes past the SIMD width and the parallel grain, with ragged remainders and broadcasting."""
    rng = np.random.default_rng(3)
    a = rng.uniform(-5, 5, (7, 517, 33)).astype(np_dtype(dt)) if is_float(dt) else \
        rng.integers(-1000, 1000, (7, 517, 33)).astype(dt)
    b = rng.uniform(-5, 5, (517, 1)).astype(np_dtype(dt)) if is_float(dt) else \
        rng.integers(-1000, 1000, (517, 1)).astype(dt)
    for op in ("add", "mul", "maximum", "less"):
        assert_close(getattr(ub, op)(a, b), binary_reference(op, a, b), msg=f"ub.{op}({dt}(7,517,33), (517,1))")
    for op in ("exp", "tanh", "sqrt"):
        assert_close(getattr(ub, op)(a), _ref(UNARY_FLOAT[op], a, out=float_result_dtype(dt)),
                     msg=f"ub.{op}({dt}(7,517,33))")


_VIEWS = {
    "transposed": lambda a: a.T,
    "reversed": lambda a: a[::-1],
    "strided": lambda a: a[..., ::2],
    "fortran": np.asfortranarray,
    "broadcast": lambda a: np.broadcast_to(a[..., :1], a.shape),
}


@given(data=st.data())
def test_non_contiguous_inputs(data):
    """numpy views (transposed, negative and >1 strides, Fortran order, stride-0 broadcasts)
    are read by their strides, eagerly and through jit."""
    dt = data.draw(dtypes(NUMERIC_DTYPES), "dtype")
    base = data.draw(arrays(dt, shapes(min_dims=1, max_dims=3, min_side=1)), "base")
    view = _VIEWS[data.draw(st.sampled_from(sorted(_VIEWS)), "view")](base)
    other = data.draw(arrays(dt, view.shape), "other")
    expected = binary_reference("add", view, other)
    assert_close(ub.add(view, other), expected, msg=f"eager add on a view {view.strides} of {_describe(base)}")
    assert_close(_JIT_BINARY["add"](other, view), binary_reference("add", other, view),
                 msg=f"jit add on a view {view.strides} of {_describe(base)}")
    expected = _ref(np.exp, view, out=float_result_dtype(dt))
    assert_close(ub.exp(view), expected, msg=f"exp on a view {view.strides} of {_describe(base)}")


# -- Python scalars (weak types, NEP 50) through the traced operators --------------------------
SCALAR_EXPRS = {
    "x + 3": (lambda x: x + 3, "add", 3, False),
    "2 - x": (lambda x: 2 - x, "sub", 2, True),
    "x * 2.5": (lambda x: x * 2.5, "mul", 2.5, False),
    "x / 4": (lambda x: x / 4, "div", 4, False),
    "1.5 / x": (lambda x: 1.5 / x, "div", 1.5, True),
    "x ** 2": (lambda x: x ** 2, "pow", 2, False),
    "x > 1": (lambda x: x > 1, "greater", 1, False),
    "x <= 0.5": (lambda x: x <= 0.5, "less_equal", 0.5, False),
    "x == 0": (lambda x: x == 0, "equal", 0, False),
    "x != 2": (lambda x: x != 2, "not_equal", 2, False),
}
_JIT_SCALAR = {k: ub.jit(fn) for k, (fn, *_) in SCALAR_EXPRS.items()}


@pytest.mark.parametrize("expr", sorted(SCALAR_EXPRS))
@given(data=st.data())
def test_python_scalar_operands_are_weak(expr, data):
    fn, op, scalar, reflected = SCALAR_EXPRS[expr]
    dt = data.draw(dtypes(NUMERIC_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes(max_dims=3), **({"lo": -20, "hi": 20} if op == "pow" else {})), "x")
    expected = binary_reference(op, scalar, x) if reflected else binary_reference(op, x, scalar)
    assert_close(_JIT_SCALAR[expr](x), expected, msg=f"jit {expr} with x={_describe(x)}")


# -- where and cast ----------------------------------------------------------------------------
_JIT_WHERE = ub.jit(lambda c, a, b: ub.where(c, a, b))


@given(data=st.data())
def test_where_broadcasts_three_ways(data):
    sc, sa, sb = data.draw(broadcastable_shapes(3), "shapes")
    dc = data.draw(st.sampled_from(("bool", "bool", "int32", "float32")), "cond dtype")
    da = data.draw(dtypes(ALL_DTYPES), "dtype a")
    db = data.draw(dtypes(ALL_DTYPES), "dtype b")
    c = data.draw(arrays(dc, sc, special=False), "cond")
    a = data.draw(arrays(da, sa), "a")
    b = data.draw(arrays(db, sb), "b")
    common = result_dtype(da, db)
    expected = np.where(c, a.astype(common), b.astype(common))
    for how, got in zip(("eager", "jit"), _both(ub.where, _JIT_WHERE, c, a, b)):
        assert_same(got, expected, msg=f"{how} ub.where({_describe(c, a, b)})")


def cast_reference(x, to):
    """numpy astype, with ubique's documented definition where numpy's is undefined:
    float -> int truncates toward zero, saturates at the int range and maps NaN to 0."""
    to = np_dtype(to)
    if is_float(dtype_name(x.dtype)) and dtype_name(to) in INT_DTYPES:
        info = np.iinfo(to)
        v = np.trunc(x.astype(F64))
        out = np.zeros(x.shape, to)
        ok = np.isfinite(v) & (v > float(info.min) - 1) & (v < float(info.max) + 1)
        ok &= np.abs(v) < 2.0 ** 63  # int64's bounds are not exact float64 values
        out[ok] = v[ok].astype(np.int64).astype(to)
        out[~np.isnan(v) & (v >= float(info.max))] = info.max
        out[~np.isnan(v) & (v <= float(info.min))] = info.min
        return out
    if is_float(dtype_name(x.dtype)) and dtype_name(to) == "bool":
        return x.astype(F64) != 0
    with np.errstate(over="ignore"):  # float64 -> float16 overflows to inf, as intended
        if is_float(dtype_name(to)) and dtype_name(x.dtype) not in ("bool", "float64"):
            return x.astype(F64).astype(to)  # exact widening, then one rounding
        return x.astype(to)


@pytest.mark.parametrize("to", ALL_DTYPES)
@given(data=st.data())
def test_cast_every_dtype_pair(to, data):
    frm = data.draw(dtypes(ALL_DTYPES), "from")
    x = data.draw(arrays(frm, shapes(max_dims=3)), "x")
    expected = cast_reference(x, to)
    jitted = _JIT_CAST[to]
    for how, got in (("eager", ub.cast(x, to)), ("jit", jitted(x)), ("astype", _JIT_ASTYPE[to](x))):
        assert_close(got, expected, msg=f"{how} cast {_describe(x)} -> {to}")


_JIT_CAST = {to: ub.jit(lambda x, _t=to: ub.cast(x, _t)) for to in ALL_DTYPES}
_JIT_ASTYPE = {to: ub.jit(lambda x, _t=to: x.astype(_t)) for to in ALL_DTYPES}


def test_cast_saturates_and_maps_nan_to_zero():
    x = np.array([np.nan, np.inf, -np.inf, 1e10, -1e10, 2.9, -2.9, 127.5, -128.7, 300.0], np.float32)
    for to in INT_DTYPES:
        assert_close(ub.cast(x, to), cast_reference(x, to), msg=f"cast float32 -> {to}")


# -- fusion does not change results ------------------------------------------------------------
def _chain_exp(x, y):
    return ub.exp(x) * 2 + y


def _chain_where(x, y):
    return ub.where(x > y, ub.sqrt(abs(x)), -y) / 3


def _chain_sigmoid_gate(x, y):
    return x * ub.sigmoid(y) - ub.tanh(x) * 0.5


# name -> (fused function, same chain op by op, float64 reference, magnitude of the terms)
CHAINS = {
    "exp(x)*2+y": (_chain_exp,
                   lambda x, y: ub.add(ub.mul(ub.exp(x), 2), y),
                   lambda x, y: np.exp(x) * 2 + y,
                   lambda x, y: np.abs(np.exp(x) * 2) + np.abs(y)),
    "where(x>y, sqrt|x|, -y)/3": (_chain_where,
                                  lambda x, y: ub.div(ub.where(ub.greater(x, y), ub.sqrt(ub.abs(x)), ub.neg(y)), 3),
                                  lambda x, y: np.where(x > y, np.sqrt(np.abs(x)), -y) / 3,
                                  lambda x, y: np.abs(x) + np.abs(y)),
    "x*sigmoid(y)-tanh(x)/2": (_chain_sigmoid_gate,
                               lambda x, y: ub.sub(ub.mul(x, ub.sigmoid(y)), ub.mul(ub.tanh(x), 0.5)),
                               lambda x, y: x / (1 + np.exp(-y)) - np.tanh(x) * 0.5,
                               lambda x, y: np.abs(x) + 1),
}
_JIT_CHAINS = {name: ub.jit(fused) for name, (fused, *_) in CHAINS.items()}


@pytest.mark.parametrize("name", sorted(CHAINS))
@given(data=st.data())
def test_fused_chain_matches_numpy_and_unfused(name, data):
    """A chain compiled as one kernel agrees with numpy and with the same ops run one by
    one (each eager call is its own kernel). Inside a fused kernel float16/bfloat16
    intermediates stay in float32, so the fused result is held to float32 accumulation
    error; the op-by-op one rounds after every op, as numpy does."""
    _, unfused, ref, terms = CHAINS[name]
    sx, sy = data.draw(broadcastable_shapes(2, max_dims=3), "shapes")
    dt = data.draw(dtypes(FLOAT_DTYPES), "dtype")
    x = data.draw(arrays(dt, sx, lo=-8, hi=8), "x")
    y = data.draw(arrays(dt, sy, lo=-8, hi=8), "y")
    expected = _ref(ref, x, y, out=x.dtype)
    with np.errstate(all="ignore"):
        scale = np.broadcast_to(terms(x.astype(F64), y.astype(F64)), expected.shape)
    msg = f"{name} on {_describe(x, y)}"
    fused = _JIT_CHAINS[name](x, y)
    assert_close(fused, expected, n=4, scale=scale, msg="fused " + msg)
    one_by_one = unfused(x, y)
    note(f"fused={fused!r}\nunfused={one_by_one!r}")
    # per-op rounding: each of ~4 ops may add half an ulp of the largest term
    assert_close(one_by_one, expected, n=4, scale=scale, atol_extra=4 * EPS[dt] * scale, msg="op by op " + msg)


def test_chain_is_fused_into_one_kernel():
    """Guards the test above: if the chain stopped fusing it would no longer test fusion."""
    x = np.ones((3, 4), np.float32)
    y = np.ones((4,), np.float32)
    for name, fused in _JIT_CHAINS.items():
        assert fused.lower(x, y).num_kernels == 1, name
