"""The documented tolerance table and the rules comparing a target's output with the
reference's (docs/testing.md, "Conformance kit for backend authors")."""
from __future__ import annotations

import math

import numpy as np

from .dtypes import _FLOATS, _dtype_name

# (rtol, atol) per float dtype: the numbers of the op tests' tests/tolerances.py (copied: this
# module must not import the test suite). A result passes when
#     |target - reference| <= atol + rtol * mult * |reference|                      ("ew")
#     |target - reference| <= atol + rtol * mult * (|reference| + scale)            ("acc")
# with scale = max(1, largest finite |reference| of that output). Both sides are ubique
# builds, so an op whose arithmetic is fixed by IEEE 754 agrees far better than this; the
# room is for what legitimately differs between backends: a vector math library (glibc's
# libmvec is allowed 4 ulp) against scalar libm, FMA contraction, the order of a sum.
#   float64  1e-12 / 1e-14   libm doubles are within ~1 ulp (2.2e-16): thousands of ulp of room,
#                            yet any wrong formula is off by far more
#   float32  1e-5 / 1e-6     ~84 ulp (1.2e-7); atol covers results that cancel to ~0
#   float16  2e-3 / 1e-5     11 significant bits: ~2 ulp (one extra rounding through float32)
#   bfloat16 1.6e-2 / 1e-4   8 significant bits: ~2 ulp
#   ints, bool               exact (integer arithmetic wraps the same in any order)
TOLERANCES = {
    "float64": (1e-12, 1e-14),
    "float32": (1e-5, 1e-6),
    "float16": (2e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-4),
}
# Tolerance classes (Sample.tol):
#   "exact"  data movement and selection (reshape, gather, max, relu, where, cast, round...):
#            the same values; for injective ops (pure data movement) also the sign of zeros
#   "ew"     elementwise arithmetic: each result within rtol*mult of the reference's
#   "acc"    ops that accumulate (sum, matmul, conv, pooling, norms, softmax, rnns): reordering
#            a sum shifts a result in proportion to its terms, not to the (possibly cancelled)
#            result, so rtol also applies to the output's scale
# Per-op multipliers (Sample.rtol_mult): TRANSCENDENTAL ops (4x: vector math libraries are
# allowed a few ulp where scalar libm is within one, and composites round several times).
TRANSCENDENTAL = 4.0

# dtype names as the tolerance text shows them
_SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}


def compare(got, want, tol: str = "ew", rtol_mult: float = 1.0, signed_zeros: bool = False
            ) -> tuple[bool, float, float, str, str]:
    """Compares one output of the target (`got`) with the reference's (`want`).

    Returns (ok, max_error, ratio, tolerance text, message): max_error is the largest
    |got - want| over finite elements, ratio the largest error / allowed error."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, math.inf, math.inf, "", f"shape {got.shape} != reference {want.shape}"
    dname = _dtype_name(want)
    if _dtype_name(got) != dname:
        return False, math.inf, math.inf, "", f"dtype {_dtype_name(got)} != reference {dname}"
    if dname not in _FLOATS:
        bad = got != want
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if bad.any() else 0.0
        return (not bad.any(), err, math.inf if bad.any() else 0.0, "exact",
                _mismatch(bad, got, want, "differ") if bad.any() else "")
    rtol, atol = TOLERANCES[dname]
    rtol *= rtol_mult
    if tol == "exact":
        text = "exact" + (", +-0 too" if signed_zeros else "")
    else:
        text = f"{_SHORT[dname]} rtol {rtol:.0e}{' x scale' if tol == 'acc' else ''}"
    a, e = got.astype(np.float64), want.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    finite = np.isfinite(a) & np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):
        err_all = np.where(finite, np.abs(a - e), 0.0)
    max_err = float(err_all.max()) if err_all.size else 0.0
    if (nan_a != nan_e).any():
        return False, max_err, math.inf, text, _mismatch(nan_a != nan_e, got, want, "have NaN in one result only")
    inf_bad = (np.isinf(a) | np.isinf(e)) & ~nan_e & (a != e)
    if inf_bad.any():
        return False, max_err, math.inf, text, _mismatch(inf_bad, got, want, "differ in infinities")
    if tol == "exact":
        bad = finite & (a != e)
        if signed_zeros:
            bad |= ~nan_e & (np.signbit(a) != np.signbit(e))
        return (not bad.any(), max_err, math.inf if bad.any() else 0.0, text,
                _mismatch(bad, got, want, "differ") if bad.any() else "")
    limit = atol + rtol * np.abs(e)
    if tol == "acc":
        scale = max(1.0, float(np.abs(e[np.isfinite(e)]).max(initial=0.0)))
        limit = limit + rtol * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_all = np.where(finite, err_all / limit, 0.0)
    ratio = float(ratio_all.max()) if ratio_all.size else 0.0
    bad = finite & (err_all > limit)
    return (not bad.any(), max_err, ratio, text,
            _mismatch(bad, got, want, f"outside tolerance ({text}, atol {atol:g})") if bad.any() else "")


def _mismatch(bad, got, want, what: str, limit: int = 3) -> str:
    where = np.argwhere(bad)[:limit]
    shown = "; ".join(f"at {tuple(int(i) for i in ix)}: got {got[tuple(ix)]!r}, reference {want[tuple(ix)]!r}"
                      for ix in where)
    return f"{int(bad.sum())} of {bad.size} elements {what}: {shown}"
