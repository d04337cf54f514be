"""Per-dtype tolerances for the op conformance tests, and the one comparison they all use.

Every reference in the conformance suite is computed in float64 from the very same
input values ubique sees (float16/bfloat16/float32 inputs are exactly representable
in float64), then rounded once to the result dtype. The reference is therefore the
correctly rounded answer, and the tolerances below bound how far a correct
implementation may stray from it:

* elementwise: `|actual - expected| <= atol + rtol * |expected|`
* reductions (sum, mean, matmul, conv, pooling, softmax...): additionally
  `+ n * ACCUMULATE_EPS[dtype] * scale`, where `n` is the number of terms folded
  into one output element and `scale` is the same reduction applied to the absolute
  values (sum |x|, |a| @ |b|, ...). That is the classic worst-case bound for
  floating-point summation in any order, so it holds for serial, pairwise, blocked
  and vectorised accumulation alike, yet it stays tight for well-conditioned data.

Integers and bools are compared exactly: integer arithmetic wraps modulo 2**bits in
numpy and in ubique, independent of evaluation order.

See docs/testing.md for the reasoning in prose.
"""
from __future__ import annotations

import numpy as np

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - the test extra installs it
    BF16 = None

# Machine epsilon (the spacing of floats just above 1.0) of each float dtype.
EPS = {
    "float64": 2.0 ** -52,   # 2.2e-16
    "float32": 2.0 ** -23,   # 1.2e-7
    "float16": 2.0 ** -10,   # 9.8e-4
    "bfloat16": 2.0 ** -7,   # 7.8e-3
}

# (rtol, atol) for one elementwise op, i.e. one rounding of a libm-quality result.
ELEMENTWISE = {
    # libm's double functions are within ~1 ulp (2.2e-16); composite ops such as sigmoid
    # or gelu round a handful of times. 1e-12 leaves ~4500 ulp of head room and still
    # catches any wrong formula. atol 1e-14 only matters where the result is ~0 by
    # cancellation (sin near k*pi, gelu near 0).
    "float64": (1e-12, 1e-14),
    # float32 libm functions (expf, tanhf, erff...) are within a few ulp (1 ulp = 1.2e-7);
    # rtol 1e-5 is ~84 ulp, enough for composites evaluated in float32 (sigmoid, gelu)
    # and for FMA contraction, and 100x tighter than any real mistake. atol 1e-6 covers
    # results near zero produced by cancellation, where relative error is meaningless.
    "float32": (1e-5, 1e-6),
    # float16 results are rounded to 11 significant bits: the reference itself sits within
    # half an ulp (4.9e-4) of the exact value and ubique may land one ulp away (double
    # rounding through float32, or a per-op rounding when ops are not fused). 2e-3 is
    # ~2 ulp. atol 1e-5 is ~160 float16 subnormal steps (6e-8), a floor for values that
    # cancel to ~0.
    "float16": (2e-3, 1e-5),
    # bfloat16 keeps 8 significant bits: ulp at 1.0 is 7.8e-3; 1.6e-2 is ~2 ulp for the
    # same reasons as float16. atol 1e-4 is the near-zero floor (bfloat16 has float32's
    # exponent range, so there is no subnormal concern at this size).
    "bfloat16": (1.6e-2, 1e-4),
}

# Precision in which ubique accumulates reductions of each dtype: float16 and bfloat16
# are widened to float32 inside kernels (documented in DESIGN / codegen), so their sums
# are bounded by float32's epsilon, then rounded once to the result dtype (covered by the
# elementwise rtol). A factor 2 over the textbook (n-1)*u bound (u = eps/2) is implicit.
ACCUMULATE_EPS = {
    "float64": EPS["float64"],
    "float32": EPS["float32"],
    "float16": EPS["float32"],
    "bfloat16": EPS["float32"],
}


def dtype_name(dtype) -> str:
    return "bfloat16" if BF16 is not None and np.dtype(dtype) == BF16 else np.dtype(dtype).name


def is_float_dtype(dtype) -> bool:
    return dtype_name(dtype) in EPS


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for one elementwise result of `dtype`; (0, 0) for ints and bool."""
    return ELEMENTWISE.get(dtype_name(dtype), (0.0, 0.0))


def _first_mismatches(bad, actual, expected, limit=6) -> str:
    idx = np.argwhere(bad)[:limit]
    lines = [f"  at {tuple(int(i) for i in ix)}: got {actual[tuple(ix)]!r}, expected {expected[tuple(ix)]!r}"
             for ix in idx]
    return "\n".join(lines)


def assert_close(actual, expected, *, n: int = 1, scale=None, rtol_mult: float = 1.0, atol_extra=0.0,
                 check_dtype: bool = True, msg: str = "") -> None:
    """Asserts `actual` (ubique's output) matches `expected` (the numpy reference).

    Checks type (a numpy array), shape and dtype exactly; NaN and +-inf positions exactly;
    finite values within `atol + rtol*|expected| + n*ACCUMULATE_EPS*scale (+ atol_extra)`
    with (rtol, atol) from ELEMENTWISE scaled by `rtol_mult`. Integers/bools compare exactly.
    """
    assert isinstance(actual, (np.ndarray, np.generic)), f"{msg}: got {type(actual).__name__}, not an array"
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != expected {expected.shape}"
    if check_dtype:
        assert dtype_name(actual.dtype) == dtype_name(expected.dtype), \
            f"{msg}: dtype {dtype_name(actual.dtype)} != expected {dtype_name(expected.dtype)}"
    name = dtype_name(expected.dtype)
    if not is_float_dtype(expected.dtype):
        bad = actual != expected
        assert not bad.any(), (f"{msg}: {int(bad.sum())} of {bad.size} {name} elements differ\n"
                               + _first_mismatches(bad, actual, expected))
        return
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_bad = np.isnan(a) != np.isnan(e)
    assert not nan_bad.any(), (f"{msg}: NaN positions differ ({int(nan_bad.sum())} elements)\n"
                               + _first_mismatches(nan_bad, actual, expected))
    inf_bad = (np.isinf(a) | np.isinf(e)) & ~np.isnan(e) & (a != e)
    assert not inf_bad.any(), (f"{msg}: infinities differ ({int(inf_bad.sum())} elements)\n"
                               + _first_mismatches(inf_bad, actual, expected))
    rtol, atol = tolerance(name)
    rtol *= rtol_mult
    finite = np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):
        limit = atol + np.nan_to_num(np.asarray(atol_extra, np.float64), nan=0.0) + rtol * np.abs(e)
        if scale is not None:
            scale = np.nan_to_num(np.abs(np.asarray(scale, np.float64)), nan=0.0)  # NaN terms: checked above
            limit = limit + n * ACCUMULATE_EPS[name] * scale
        err = np.abs(a - e)
    bad = finite & ~(err <= limit)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err - limit, -np.inf)), bad.shape)
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {bad.size} {name} elements outside tolerance "
            f"(rtol={rtol:g}, atol={atol:g}, n={n}); worst at {tuple(int(i) for i in worst)}: "
            f"got {a[worst]!r}, expected {e[worst]!r}, |err|={err[worst]:.3g} > {limit[worst]:.3g}\n"
            + _first_mismatches(bad, actual, expected))


def assert_same(actual, expected, msg: str = "") -> None:
    """Exact equality for data movement (shape ops): same shape, dtype, values, NaN and -0.0."""
    assert isinstance(actual, (np.ndarray, np.generic)), f"{msg}: got {type(actual).__name__}, not an array"
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != expected {expected.shape}"
    assert dtype_name(actual.dtype) == dtype_name(expected.dtype), \
        f"{msg}: dtype {dtype_name(actual.dtype)} != expected {dtype_name(expected.dtype)}"
    if is_float_dtype(expected.dtype):
        a, e = actual.astype(np.float64), expected.astype(np.float64)
        bad = ~((a == e) | (np.isnan(a) & np.isnan(e))) | ((np.signbit(a) != np.signbit(e)) & ~np.isnan(e))
    else:
        bad = actual != expected
    assert not bad.any(), (f"{msg}: {int(bad.sum())} of {bad.size} elements differ\n"
                           + _first_mismatches(bad, actual, expected))
