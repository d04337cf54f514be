"""Hypothesis strategies for the op conformance tests: dtypes, shapes (with size-0 and
size-1 dimensions), broadcastable shape tuples, and arrays with finite or special values.

Sizes stay small on purpose: every distinct (shape, dtype) compiles a kernel, and the
interesting behaviour (broadcasting, empty and unit dims, edges) shows at sizes <= 5.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tolerances import BF16, dtype_name

FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
INT_DTYPES = ("int8", "uint8", "int32", "int64")
ALL_DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)
NUMERIC_DTYPES = FLOAT_DTYPES + INT_DTYPES

SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -0.0)


def np_dtype(name) -> np.dtype:
    """numpy dtype for a dtype name; 'bfloat16' is ml_dtypes' bfloat16."""
    if name == "bfloat16" or (BF16 is not None and np.dtype(name) == BF16):
        return BF16
    return np.dtype(name)


def is_float(name) -> bool:
    return dtype_name(np_dtype(name)) in FLOAT_DTYPES


def is_int(name) -> bool:
    return dtype_name(np_dtype(name)) in INT_DTYPES


# numpy results that ubique has no dtype for widen to the nearest supported one (ubique's rule)
WIDEN = {"int16": "int32", "uint16": "int32", "uint32": "int64", "uint64": "int64"}


def widen(dt) -> np.dtype:
    """`dt`, or the supported dtype ubique computes in where numpy's has no ubique counterpart
    (int8 + uint8 is int16 in numpy, int32 in ubique)."""
    name = dtype_name(np_dtype(dt))
    return np_dtype(WIDEN.get(name, name))


def result_dtype(*names) -> np.dtype:
    """numpy 2 promotion of array dtypes, widened to a ubique dtype (int16 -> int32).
    bfloat16 joins the float family: with bool/int8/uint8/bfloat16 -> bfloat16, with float16
    -> float32 (neither holds the other), with int32/int64 -> float64, with float32/float64
    -> that (ubique's rule, the same as JAX's; ml_dtypes' own numpy promotion picks float16
    for bfloat16 + float16)."""
    names = [dtype_name(np_dtype(n)) for n in names]
    if "bfloat16" not in names:
        return widen(np.result_type(*[np.dtype(n) for n in names]))
    out = "bfloat16"
    for n in names:
        if n in ("bfloat16", "bool", "int8", "uint8"):
            continue
        if n == "float16":
            cand = "float32"
        elif n in ("int32", "int64"):
            cand = "float64"
        else:
            cand = n
        order = ["bfloat16", "float32", "float64"]
        out = cand if order.index(cand) > order.index(out) else out
    return np_dtype(out)


def float_result_dtype(name) -> np.dtype:
    """The dtype numpy's transcendental ufuncs (exp, sqrt...) give for an input dtype."""
    dt = np_dtype(name)
    if dt == BF16:
        return BF16
    return np.exp(np.zeros(0, dt)).dtype


# -- dtypes and shapes ------------------------------------------------------------------------
def dtypes(choices=ALL_DTYPES):
    return st.sampled_from(tuple(choices))


def shapes(min_dims=0, max_dims=4, min_side=0, max_side=4):
    """Array shapes of rank [min_dims, max_dims] whose sides include 0 and 1."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=0, max_side=4):
    """A tuple of `num_shapes` shapes that broadcast together numpy-style (ranks may differ)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=min_side, max_side=max_side).map(lambda b: b.input_shapes)


# -- values -----------------------------------------------------------------------------------
def elements(dtype, *, lo=None, hi=None, special=True, integral=False):
    """Scalar values of `dtype`: finite floats in [lo, hi] (whole range if None), plus NaN,
    +-inf and +-0 (half of the draws) when `special`; integers in [lo, hi] clipped to the
    dtype's range."""
    name = dtype_name(np_dtype(dtype))
    if name == "bool":
        return st.booleans()
    if name in INT_DTYPES:
        info = np.iinfo(name)
        lo = info.min if lo is None else max(int(math.ceil(lo)), int(info.min))
        hi = info.max if hi is None else min(int(math.floor(hi)), int(info.max))
        return st.integers(lo, hi)
    width = {"float16": 16, "float32": 32, "bfloat16": 32, "float64": 64}[name]
    if integral:
        finite = st.integers(int(lo), int(hi)).map(float)
    else:
        finite = st.floats(min_value=lo, max_value=hi, width=width, allow_nan=False, allow_infinity=False)
    if not special:
        return finite
    return st.one_of(finite, st.sampled_from(SPECIAL_FLOATS))


@st.composite
def arrays(draw, dtype, shape, *, lo=None, hi=None, special=True, integral=False):
    """A numpy array of `dtype` (a name; 'bfloat16' gives an ml_dtypes array) and `shape`."""
    name = dtype_name(np_dtype(dtype))
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    if special and name in FLOAT_DTYPES:
        # half of the arrays are all finite (numerics), half are rich in NaN/inf/+-0 (semantics)
        special = draw(st.booleans())
    if name == "bfloat16":
        src = draw(hnp.arrays(np.float32, shape, elements=elements("float32", lo=lo, hi=hi, special=special,
                                                                   integral=integral)))
        return src.astype(BF16)
    return draw(hnp.arrays(np.dtype(name), shape, elements=elements(name, lo=lo, hi=hi, special=special,
                                                                  integral=integral)))


def float_arrays(shape, dtypes_=FLOAT_DTYPES, **kw):
    """(dtype name, array) with a float dtype drawn from `dtypes_`."""
    return st.sampled_from(tuple(dtypes_)).flatmap(lambda d: arrays(d, shape, **kw).map(lambda a: (d, a)))


def axes_for(rank: int, allow_none=True):
    """An `axis` argument for a reduction over a tensor of `rank`: None, one int (possibly
    negative) or a tuple of distinct ints (possibly negative, any order)."""
    options = []
    if allow_none:
        options.append(st.none())
    if rank:
        options.append(st.integers(-rank, rank - 1))
        options.append(st.lists(st.integers(0, rank - 1), unique=True, max_size=rank).flatmap(
            lambda ax: st.tuples(*[st.sampled_from((a, a - rank)) for a in ax])))
    else:
        options.append(st.just(()))
    return st.one_of(*options)


def basic_index(shape):
    """A basic-indexing key for `shape`: ints (negative too), slices with any step (negative,
    out of range bounds), None and Ellipsis."""
    return hnp.basic_indices(shape, min_dims=0, allow_newaxis=True, allow_ellipsis=True)
