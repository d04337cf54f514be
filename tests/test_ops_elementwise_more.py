"""Conformance of the ONNX-facing elementwise ops with numpy: rounding and sign, inverse and
hyperbolic trigonometry, reciprocal, isnan/isinf, logical and bitwise ops, mod.

Graphs are built directly with the graph IR (these ops have no `ub.` function) and run
through `ubique.build.build`. References are numpy in float64, rounded once to the result
dtype; values include NaN, +-inf and +-0, shapes include size-0 and size-1 dimensions.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ubique as ub
from ubique.build import build
from ubique.ir.graph import Graph, TensorType
from strategies import (ALL_DTYPES, FLOAT_DTYPES, INT_DTYPES, NUMERIC_DTYPES, arrays, broadcastable_shapes,
                        dtypes, float_result_dtype, np_dtype, result_dtype, shapes)
from tolerances import assert_close, assert_same, dtype_name

F64 = np.float64


def run_op(op, *xs, **attrs):
    """ubique's result of `op` on numpy arrays, through a one-node graph."""
    g = Graph(op)
    ins = [g.add_input(TensorType(x.shape, dtype_name(x.dtype)), f"x{k}") for k, x in enumerate(xs)]
    g.outputs = [g.op(op, *ins, **attrs)]
    return build(g).run(*xs)[0]


def ref(fn, *xs, out):
    """fn evaluated in float64 on the given arrays, rounded to the dtype `out`."""
    with np.errstate(all="ignore"):
        return np.asarray(fn(*[np.asarray(x).astype(F64) for x in xs])).astype(out)


def describe(*xs):
    return ", ".join(f"{dtype_name(x.dtype)}{tuple(x.shape)}" for x in xs)


# -- math functions: numpy's float result dtype ------------------------------------------------
UNARY_FLOAT = {
    "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
    "reciprocal": np.reciprocal,
}


@pytest.mark.parametrize("op", sorted(UNARY_FLOAT))
@given(data=st.data())
def test_unary_float_ops(op, data):
    dt = data.draw(dtypes(ALL_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes()), "x")
    expected = ref(UNARY_FLOAT[op], x, out=float_result_dtype(dt))
    assert_close(run_op(op, x), expected, msg=f"{op}({describe(x)})")


_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.5707963,
                     3.0, 88.0, -89.0, 1e-30, 0.999, -0.999], F64)


@pytest.mark.parametrize("dt", FLOAT_DTYPES)
@pytest.mark.parametrize("op", sorted(UNARY_FLOAT))
def test_unary_float_special_values(op, dt):
    """asin(2)=nan, acosh(0.5)=nan, atanh(+-1)=+-inf, cosh(-inf)=inf, 1/-0=-inf, NaN propagates."""
    x = _SPECIAL.astype(np_dtype(dt))
    assert_close(run_op(op, x), ref(UNARY_FLOAT[op], x, out=x.dtype), msg=f"{op}({dt} specials {x})")


@pytest.mark.parametrize("dt", ["float32", "float64", "float16", "bfloat16"])
def test_unary_float_long_arrays_use_vector_calls(dt):
    """Rows past the SIMD width (the vector libm path) with a ragged tail."""
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-3, 3, 500), _SPECIAL]).reshape(2, -1).astype(np_dtype(dt))
    for op, fn in UNARY_FLOAT.items():
        assert_close(run_op(op, x), ref(fn, x, out=x.dtype), msg=f"{op}({describe(x)})")


# -- rounding and sign: the input dtype --------------------------------------------------------
ROUNDING = {"floor": np.floor, "ceil": np.ceil, "round": np.round, "sign": np.sign}


@pytest.mark.parametrize("op", sorted(ROUNDING))
@given(data=st.data())
def test_rounding_and_sign_keep_dtype(op, data):
    """Exact, including the sign of zero (floor(-0.5) = -1, ceil(-0.5) = -0, round(-0.5) = -0,
    sign(-0) = 0) and half-to-even rounding; integers are whole already (sign gives -1/0/1)."""
    dt = data.draw(dtypes(NUMERIC_DTYPES), "dtype")
    half_steps = data.draw(st.booleans(), "halves")  # many exact .5 ties
    kw = dict(lo=-8, hi=8, integral=True) if half_steps and dt in FLOAT_DTYPES else {}
    x = data.draw(arrays(dt, shapes(), **kw), "x")
    if kw:
        x = (x.astype(F64) / 2).astype(x.dtype)
    if dt in INT_DTYPES:
        expected = np.sign(x) if op == "sign" else x  # integers are whole already
    else:
        expected = ref(ROUNDING[op], x, out=x.dtype)
    assert_same(run_op(op, x), expected, msg=f"{op}({describe(x)})")


def test_round_is_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999998, 1e20, -1e-30], np.float32)
    assert_same(run_op("round", x), np.round(x), msg="round")


# -- predicates and logical not: bool results --------------------------------------------------
def _isinf_ref(pos, neg):
    return lambda x: (np.isposinf(x) & pos) | (np.isneginf(x) & neg)


@given(data=st.data())
def test_isnan_isinf_logical_not(data):
    dt = data.draw(dtypes(ALL_DTYPES), "dtype")
    x = data.draw(arrays(dt, shapes()), "x")
    pos, neg = data.draw(st.booleans(), "detect_positive"), data.draw(st.booleans(), "detect_negative")
    x64 = x.astype(F64)
    assert_same(run_op("isnan", x), np.isnan(x64), msg=f"isnan({describe(x)})")
    assert_same(run_op("isinf", x, detect_positive=pos, detect_negative=neg), _isinf_ref(pos, neg)(x64),
                msg=f"isinf({describe(x)}, detect_positive={pos}, detect_negative={neg})")
    assert_same(run_op("logical_not", x), np.logical_not(x64), msg=f"logical_not({describe(x)})")


@given(data=st.data())
def test_bitwise_not(data):
    dt = data.draw(dtypes(INT_DTYPES + ("bool",)), "dtype")
    x = data.draw(arrays(dt, shapes()), "x")
    assert_same(run_op("bitwise_not", x), np.invert(x), msg=f"bitwise_not({describe(x)})")


# -- binary: logical, bitwise, mod ---------------------------------------------------------------
LOGICAL = {"logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor}
BITWISE = {"bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor}


@pytest.mark.parametrize("op", sorted(LOGICAL))
@given(data=st.data())
def test_logical_binary(op, data):
    """Any dtypes (nonzero and NaN count as true, as in numpy), broadcasting, bool result."""
    sa, sb = data.draw(broadcastable_shapes(2), "shapes")
    a = data.draw(arrays(data.draw(dtypes(ALL_DTYPES), "dtype a"), sa), "a")
    b = data.draw(arrays(data.draw(dtypes(ALL_DTYPES), "dtype b"), sb), "b")
    assert_same(run_op(op, a, b), LOGICAL[op](a.astype(F64), b.astype(F64)), msg=f"{op}({describe(a, b)})")


@pytest.mark.parametrize("op", sorted(BITWISE))
@given(data=st.data())
def test_bitwise_binary(op, data):
    """Integer and bool dtype pairs, numpy promotion (int8 & uint8: int16 in numpy, int32 here)."""
    sa, sb = data.draw(broadcastable_shapes(2), "shapes")
    da, db = (data.draw(dtypes(INT_DTYPES + ("bool",)), f"dtype {w}") for w in "ab")
    a, b = data.draw(arrays(da, sa), "a"), data.draw(arrays(db, sb), "b")
    common = result_dtype(da, db)
    assert_same(run_op(op, a, b), BITWISE[op](a.astype(common), b.astype(common)), msg=f"{op}({describe(a, b)})")


MOD = {0: np.mod, 1: np.fmod}


def mod_reference(a, b, fmod):
    common = result_dtype(dtype_name(a.dtype), dtype_name(b.dtype))
    if dtype_name(common) in FLOAT_DTYPES:
        return ref(MOD[fmod], a, b, out=common)
    with np.errstate(all="ignore"):  # x % 0 is 0 for integers in numpy (with a warning)
        return MOD[fmod](a.astype(common), b.astype(common))


@pytest.mark.parametrize("fmod", [0, 1])
@given(data=st.data())
def test_mod(fmod, data):
    """fmod=0: the divisor's sign (np.mod); fmod=1: the dividend's (np.fmod). Every numeric
    dtype pair, broadcasting, zero divisors, NaN and infinities."""
    sa, sb = data.draw(broadcastable_shapes(2), "shapes")
    da, db = (data.draw(dtypes(NUMERIC_DTYPES), f"dtype {w}") for w in "ab")
    small = data.draw(st.booleans(), "small values")  # small divisors make non-trivial remainders
    kw = dict(lo=-20, hi=20) if small else {}
    a, b = data.draw(arrays(da, sa, **kw), "a"), data.draw(arrays(db, sb, **kw), "b")
    assert_close(run_op("mod", a, b, fmod=fmod), mod_reference(a, b, fmod), msg=f"mod({describe(a, b)}, fmod={fmod})")


@pytest.mark.parametrize("dt", INT_DTYPES)
@pytest.mark.parametrize("fmod", [0, 1])
def test_integer_mod_edges(dt, fmod):
    """x mod 0 is 0 (defined; numpy gives 0 too) and INT_MIN mod -1 is 0: neither traps."""
    info = np.iinfo(dt)
    a = np.array([7, -7, 7, -7, 0, 5, info.min, info.max, info.min, 3], dt) if info.min < 0 else \
        np.array([7, 0, 5, 255, 0, 3], dt)
    b = np.array([3, 3, -3, -3, 0, 0, -1, 0, 0, 1], dt) if info.min < 0 else np.array([3, 0, 0, 0, 1, 1], dt)
    assert_same(run_op("mod", a, b, fmod=fmod), mod_reference(a, b, fmod), msg=f"mod {dt} fmod={fmod}")


@pytest.mark.parametrize("dt", FLOAT_DTYPES)
def test_float_mod_signs_and_specials(dt):
    a = np.array([5.5, -5.5, 5.5, -5.5, -0.0, 0.0, 3.0, np.inf, -5.0, 5.0, np.nan, 1.0], np_dtype(dt))
    b = np.array([2.0, 2.0, -2.0, -2.0, 2.0, -2.0, 0.0, 2.0, np.inf, -np.inf, 1.0, np.nan], np_dtype(dt))
    for fmod in (0, 1):
        got, expected = run_op("mod", a, b, fmod=fmod), mod_reference(a, b, fmod)
        assert_close(got, expected, msg=f"mod {dt} fmod={fmod}")
        zero = expected.astype(F64) == 0  # remainders of zero carry numpy's sign too
        assert (np.signbit(got.astype(F64)[zero]) == np.signbit(expected.astype(F64)[zero])).all(), (got, expected)


def test_long_arrays_mod_and_bitwise():
    """Past the SIMD width, with broadcasting and a ragged tail."""
    rng = np.random.default_rng(5)
    a = rng.integers(-1000, 1000, (3, 531)).astype(np.int32)
    b = rng.integers(-9, 9, (531,)).astype(np.int32)
    for fmod in (0, 1):
        assert_same(run_op("mod", a, b, fmod=fmod), mod_reference(a, b, fmod), msg=f"mod int32 fmod={fmod}")
    assert_same(run_op("bitwise_xor", a, b), a ^ b, msg="bitwise_xor")
    af, bf = a.astype(np.float32) / 7, b.astype(np.float32) / 3
    for fmod in (0, 1):
        assert_close(run_op("mod", af, bf, fmod=fmod), mod_reference(af, bf, fmod), msg=f"mod float32 fmod={fmod}")


# -- bad dtypes and attributes ---------------------------------------------------------------------
@pytest.mark.parametrize("op,dts,words", [
    ("floor", ["bool"], ["floor", "bool"]),
    ("ceil", ["bool"], ["ceil", "bool"]),
    ("round", ["bool"], ["round", "bool"]),
    ("sign", ["bool"], ["sign", "bool"]),
    ("bitwise_not", ["float32"], ["bitwise_not", "float32"]),
    ("bitwise_and", ["int32", "float32"], ["bitwise_and", "float64"]),
    ("bitwise_or", ["float16", "float16"], ["bitwise_or", "float16"]),
    ("bitwise_xor", ["bool", "bfloat16"], ["bitwise_xor", "bfloat16"]),
    ("mod", ["bool", "bool"], ["mod", "bool"]),
])
def test_bad_dtypes_raise_dtype_error(op, dts, words):
    g = Graph("bad")
    ins = [g.add_input(TensorType((2,), dt), f"x{k}") for k, dt in enumerate(dts)]
    with pytest.raises(ub.DTypeError) as ei:
        g.op(op, *ins)
    msg = str(ei.value)
    assert all(w in msg for w in words), msg
    assert "cast" in msg, msg  # says what would fix it


def test_mod_fmod_must_be_0_or_1():
    g = Graph("bad")
    x = g.add_input(TensorType((2,), "f32"), "x")
    with pytest.raises(ub.VerifyError, match="fmod"):
        g.op("mod", x, x, fmod=2)


def test_elementwise_chain_fuses_into_one_kernel():
    """The new ops are plain elementwise computes: a chain of them is one kernel."""
    from ubique.build import compile_program

    g = Graph("chain")
    x = g.add_input(TensorType((4, 5), "f32"), "x")
    y = g.op("mod", g.op("floor", g.op("sinh", x)), g.op("abs", g.op("atan", x)), fmod=1)
    g.outputs = [g.op("logical_and", g.op("isinf", y), g.op("logical_not", g.op("isnan", x)))]
    assert compile_program(g).num_kernels == 1
    xv = np.linspace(-100, 100, 20, dtype=np.float32).reshape(4, 5)
    with np.errstate(all="ignore"):
        expected = np.isinf(np.fmod(np.floor(np.sinh(xv)), np.abs(np.arctan(xv)))) & ~np.isnan(xv)
    assert_same(build(g).run(xv)[0], expected, msg="fused chain")
