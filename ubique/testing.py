"""Conformance kit for backend authors: every op of the registry, checked on a target against
the reference host backend.

    ubique conformance --target mychip            # the pass table, one row per registry op
    ubique conformance --target mychip --quick --ops exp,conv2d

    import ubique.testing as ut
    report = ut.run_conformance("mychip")         # -> ConformanceReport
    print(report.table()); assert report.passed
    ut.check_op("conv2d", "mychip")               # in a plug-in's pytest suite: AssertionError on failure

How it works:

* The suite comes from the op registry (`ubique.ir.registry.all_ops()`), so a new op, or
  an op a plug-in registers, is in the table at once. How to make inputs and attributes
  for each op is one data table, `SAMPLES` (op name -> `Sample`); ops without an entry get
  a generic sample by their kind (elementwise ops: their arity, broadcastable shapes,
  values in [-3, 3]). An op the kit cannot make a valid case for appears as "no sample".
* Each op is tried with every dtype its type rule accepts among DTYPES: `cases` random
  cases in float32, one in each other dtype (cast: one per pair of dtypes). Cases differ in
  shapes and attribute variants; values lie in the op's domain (log of positive numbers,
  acos in [-1, 1], nonzero integer divisors, in-range gather indices...); float32's second
  case and the float64 and float16 cases also carry NaN, +-inf and +-0 (_SPECIALS_CASE).
  Everything is deterministic given the seed; a case does not depend on which other ops
  are selected.
* A case is a one-op graph whose inputs are graph inputs (a few matmul and conv2d weights
  are constants, to reach the layout passes real models take). The cases of many ops are put
  side by side into one graph that is compiled once for the reference and once for the
  target and run once each (one emulator launch for a target that runs under qemu). The
  target's run is a separate process (the native-runtime driver of runtime/emulator.py,
  run directly where the target is native), so a crashing kernel fails its op instead of
  the Python process. When a combined graph fails to compile or run, its ops are retried
  one by one and then case by case, so the table still says which op failed and why.
  Each group is checked in a forked child process, several at a time (`jobs`), so that a
  compiler crash (an LLVM fatal error) also fails only its op.
* Outputs are compared with the reference's: shapes and dtypes exactly, NaN positions
  exactly, infinities exactly, integers and bools exactly, floats within a per-dtype
  tolerance (TOLERANCES) scaled by a per-op class (`Sample.tol`, `Sample.rtol_mult`):
  see `compare` and docs/testing.md ("Conformance kit for backend authors").

A target raising UnsupportedOpError while compiling a case marks that case "unsupported"
(an honest "not implemented", not a wrong answer); an op none of whose cases ran on the
target is "unsupported" in the table. Any other error, or a wrong result, is "FAIL".
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ubique.errors import ToolchainError, UbiqueError, UnsupportedOpError

__all__ = ["DTYPES", "TOLERANCES", "SAMPLES", "Sample", "Draw", "Fixed", "Case", "CaseResult", "OpResult",
           "ConformanceReport", "run_conformance", "check_op", "op_names", "make_cases", "sample_for", "compare",
           "cli_main"]

# dtypes every op is tried with (those its type rule accepts); bfloat16 needs ml_dtypes
DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool")
_FLOATS = ("float32", "float64", "float16", "bfloat16")
# float32 gets `cases` cases per op, every other accepted dtype one (cast: every target dtype);
# the case of each float dtype that also carries NaN, +-inf and +-0 among its inputs
_SPECIALS_CASE = {"float32": 1, "float64": 0, "float16": 0, "bfloat16": 1}

# -------------------------------------------------------------------------------------------
# Tolerances
# -------------------------------------------------------------------------------------------
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


# -------------------------------------------------------------------------------------------
# Samples: how to make inputs and attributes for each op
# -------------------------------------------------------------------------------------------
class Fixed:
    """An input given to the op as a graph constant rather than a graph input (weights:
    they reach the constant-only layout passes, e.g. blocked convolutions)."""

    def __init__(self, value: np.ndarray):
        self.value = value


class Draw:
    """What a Sample's `make` uses: the dtype under test, the case's variant number and a
    seeded random generator, with helpers for values in a domain."""

    def __init__(self, rng: np.random.Generator, dtype: str, variant: int, specials: bool):
        self.rng = rng
        self.dtype = dtype
        self.variant = variant
        self.specials = specials

    # -- choices
    def pick(self, options: Sequence):
        """The variant's entry of `options` (cycles: case k of dtype j gets variant j + k)."""
        return options[self.variant % len(options)]

    def choice(self, options: Sequence):
        """A random entry of `options`."""
        return options[int(self.rng.integers(len(options)))]

    # -- values
    def x(self, shape, lo: float = -3.0, hi: float = 3.0, *, dtype: str | None = None, nonzero: bool = False,
          step: float | None = None, ints: tuple[int, int] | None = None, specials: bool | None = None) -> np.ndarray:
        """Random values of `dtype` (default: the dtype under test) in [lo, hi]. Integers:
        in `ints` if given, else in [ceil(lo), floor(hi)], clipped to the dtype's range.
        `nonzero` avoids 0 (and |x| < 0.05 for floats), `step` quantises floats (ties and
        equal values for comparisons and rounding). Floats of the specials case carry NaN,
        +-inf and +-0 at ~15% of the positions."""
        name = dtype or self.dtype
        npd = _np_dtype(name)
        shape = tuple(shape)
        if name == "bool":
            return self.rng.random(shape) < 0.5
        if name not in _FLOATS:
            info = np.iinfo(npd)
            a, b = ints if ints is not None else (math.ceil(lo), math.floor(hi))
            a, b = max(a, int(info.min)), min(b, int(info.max))
            if a > b:
                a = b = max(min(0, int(info.max)), int(info.min))
            v = self.rng.integers(a, b + 1, size=shape, dtype=np.int64)
            if nonzero:
                v = np.where(v == 0, 1 if b >= 1 else -1, v)
            return v.astype(npd)
        v = self.rng.uniform(lo, hi, size=shape)
        if step:
            v = np.round(v / step) * step
        if nonzero:
            small = np.abs(v) < 0.05
            v = np.where(small, np.where(v < 0, -0.5, 0.5), v)
        if (self.specials if specials is None else specials) and v.size:
            where = self.rng.random(shape) < 0.15
            special = self.rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0]), size=shape)
            v = np.where(where, special, v)
        return np.asarray(v).astype(npd)

    def index(self, shape, n: int, dtype: str | None = None) -> np.ndarray:
        """Indices into an axis of size n, negative ones included: [-n, n); int64 or int32."""
        name = dtype or self.pick(("int64", "int32"))
        return self.rng.integers(-n, n, size=tuple(shape)).astype(name)

    def positive(self, shape, lo=0.5, hi=2.0) -> np.ndarray:
        return self.x(shape, lo, hi, specials=False)


@dataclass(frozen=True)
class Sample:
    """How the kit makes cases for one op.

    make        fn(draw) -> (inputs, attrs): input arrays (or Fixed(array) for constants)
                and attributes, for `draw.dtype`; raise or build something infer rejects to
                skip a dtype (dtypes the op's infer rejects are dropped quietly)
    tol         tolerance class: "exact", "ew" or "acc" (see TOLERANCES)
    rtol_mult   multiplies rtol (TRANSCENDENTAL for math-library ops)
    dtypes      the dtypes to try (default: DTYPES)
    variants    number of variants `make` picks from (draw.pick); with all_variants every
                variant runs for every dtype, else variants rotate over cases and dtypes
    specials    whether float inputs of one case carry NaN/inf/+-0; "always" for every case
    """
    make: Callable[[Draw], tuple]
    tol: str = "ew"
    rtol_mult: float = 1.0
    dtypes: tuple[str, ...] | None = None
    variants: int = 1
    all_variants: bool = False
    specials: bool | str = True


# shapes for elementwise ops: a long inner axis (vector bodies and tails), odd sizes, rank 0,
# unit axes
_EW_SHAPES = [(4, 67), (3, 5, 7), (37,), (), (2, 1, 9), (1, 130)]
_EW_PAIRS = [((4, 67), (4, 67)), ((3, 1, 5), (4, 1)), ((), (2, 9)), ((6, 1), (1, 7)), ((33,), (1,)),
             ((2, 3, 1), (3, 70))]
_EW_TRIPLES = [((4, 9), (3, 4, 9), (9,)), ((2, 1), (1, 5), (2, 5)), ((), (7,), (1,)), ((3, 68), (3, 68), ())]


def _unary(lo=-3.0, hi=3.0, *, tol="ew", mult=1.0, attrs: Sequence[dict] = ({},), nonzero=False, step=None,
           ints=None, dtypes=None, specials=True) -> Sample:
    def make(d: Draw):
        return [d.x(d.choice(_EW_SHAPES), lo, hi, nonzero=nonzero, step=step, ints=ints)], dict(d.pick(attrs))
    return Sample(make, tol, mult, dtypes, len(attrs), specials=specials)


def _binary(a=(-3.0, 3.0), b=(-3.0, 3.0), *, tol="ew", mult=1.0, nonzero_b=False, step=None, ints=None,
            ints_b=None, attrs: Sequence[dict] = ({},), dtypes=None, specials=True) -> Sample:
    def make(d: Draw):
        sa, sb = d.choice(_EW_PAIRS)
        if d.rng.random() < 0.5:
            sa, sb = sb, sa
        return ([d.x(sa, *a, step=step, ints=ints), d.x(sb, *b, step=step, ints=ints_b or ints, nonzero=nonzero_b)],
                dict(d.pick(attrs)))
    return Sample(make, tol, mult, dtypes, len(attrs), specials=specials)


def _generic_elementwise(arity: int) -> Sample:
    def make(d: Draw):
        if arity == 1:
            shapes = [d.choice(_EW_SHAPES)]
        elif arity == 2:
            shapes = list(d.choice(_EW_PAIRS))
        else:
            base = d.choice(_EW_TRIPLES)
            shapes = [base[k % len(base)] for k in range(arity)]
        return [d.x(s) for s in shapes], {}
    return Sample(make, "ew")


def _generic_unary(kind: str) -> Sample:
    return Sample(lambda d: ([d.x((3, 4, 5))], {}), "exact" if kind == "injective" else "acc")


# -- per-op makers --------------------------------------------------------------------------
def _where(d):
    a, b, c = d.choice(_EW_TRIPLES)
    return [d.x(a, dtype="bool"), d.x(b), d.x(c)], {}


def _clip(d):
    shape = d.choice(_EW_SHAPES[:3])
    v = d.pick([0, 1, 2, 3])
    x = d.x(shape, -4, 4, ints=(-120, 120))
    if v == 0:
        return [x], {"min": -1.5, "max": 2.0}
    if v == 1:
        return [x], {"min": None, "max": 0.5}
    if v == 2:
        return [x, d.x((1,), -2, 0, specials=False), d.x(shape, 0, 2, specials=False)], {}
    return [x, d.x(shape, -2, 1, specials=False)], {"max": 1.0}


def _prelu(d):
    x, slope = d.pick([((2, 3, 5, 7), (3, 1, 1)), ((4, 67), (67,)), ((3, 6), (1,))])
    return [d.x(x), d.x(slope, 0, 0.5)], {}


def _cast(d):
    to = d.pick(DTYPES)
    return [d.x(d.choice(_EW_SHAPES[:3]), -300, 300, ints=(-300, 300))], {"dtype": to}


_REDUCE_AXES = [((3, 4, 5), None, False), ((3, 4, 5), (1,), True), ((3, 4, 5), (0, 2), False),
                ((2, 70), (1,), False), ((70, 3), (0,), True), ((3, 4, 5), (-1,), False)]


def _reduce(lo=-3.0, hi=3.0, ints=None):
    def make(d: Draw):
        shape, axes, keep = d.pick(_REDUCE_AXES)
        return [d.x(shape, lo, hi, ints=ints)], {"axes": axes, "keepdims": keep}
    return make


def _arg(d):
    shape, axis, keep = d.pick([((3, 4, 5), None, False), ((3, 4, 5), 1, True), ((2, 70), -1, False),
                                ((6, 5), 0, False)])
    return [d.x(shape, ints=(-20, 20))], {"axis": axis, "keepdims": keep}


def _matmul(d):
    v = d.pick([0, 1, 2, 3, 4, 5])
    a, b = [((5, 7), (7, 9)), ((2, 4, 6), (6, 67)), ((7,), (7, 5)), ((3, 1, 4, 6), (2, 6, 5)), ((6,), (6,)),
            ((9, 16), (16, 40))][v]
    rhs = d.x(b, -2, 2, ints=(-5, 5))
    return [d.x(a, -2, 2, ints=(-5, 5)), Fixed(rhs) if v == 5 else rhs], {}


def _conv2d(d):
    v = d.pick([0, 1, 2, 3])
    x, w, attrs = [
        ((2, 4, 7, 6), (6, 4, 3, 3), {"padding": (1, 1, 1, 1)}),
        ((1, 4, 9, 8), (4, 2, 3, 3), {"groups": 2, "stride": (2, 2), "dilation": (1, 2), "padding": (0, 1, 2, 1)}),
        ((1, 8, 6, 6), (8, 1, 3, 3), {"groups": 8, "padding": (1, 1, 1, 1)}),
        ((1, 8, 5, 5), (16, 8, 1, 1), {}),
    ][v]
    wv = d.x(w, -1, 1, ints=(-3, 3))
    return [d.x(x, -1, 1, ints=(-3, 3)), Fixed(wv) if v >= 2 else wv], attrs


def _pool(avg: bool):
    def make(d: Draw):
        x, attrs = d.pick([
            ((2, 3, 7, 8), {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1), "ceil_mode": True}),
            ((1, 2, 6, 5), {"kernel": (2, 2)}),
            ((1, 2, 6, 6, 4), {"kernel": (2, 2), "stride": (2, 2), "layout": "NCHWc"}),
            ((1, 3, 9, 9), {"kernel": (3, 2), "stride": (2, 3), "dilation": (2, 1), "padding": (1, 0, 1, 1)}),
        ])
        attrs = dict(attrs)
        if avg and d.variant % 2:
            attrs["count_include_pad"] = False
        return [d.x(x, ints=(-50, 50))], attrs
    return make


def _axis_op(d):
    shape, axis = d.pick([((3, 4, 17), -1), ((3, 4, 5), 0), ((2, 70), 1), ((5, 6), -2)])
    return [d.x(shape, -4, 4)], {"axis": axis}


def _layer_norm(d):
    v = d.pick([0, 1, 2])
    shape, axis = [((3, 4, 6), -1), ((2, 3, 40), -2), ((5, 17), 1)][v]
    norm = shape[axis % len(shape):]
    ins = [d.x(shape)] + [d.x(norm, specials=False) for _ in range(v)]
    return ins, {"axis": axis, "epsilon": 1e-5}


def _gather(d):
    data, ind, axis = d.pick([((5, 4, 3), (2, 3), 0), ((5, 4, 3), (6,), 1), ((5, 4, 3), (), -1),
                              ((4, 70), (3, 2), 1)])
    return [d.x(data), d.index(ind, data[axis])], {"axis": axis}


def _gather_elements(d):
    data, ind, axis = d.pick([((4, 5, 3), (4, 7, 3), 1), ((4, 5), (6, 5), 0), ((3, 6), (2, 4), -1)])
    return [d.x(data), d.index(ind, data[axis])], {"axis": axis}


def _cumsum(d):
    shape, axis, excl, rev = d.pick([((3, 6, 5), 1, False, False), ((8, 3), 0, True, False),
                                     ((4, 9), -1, False, True), ((2, 3, 40), 2, True, True)])
    return [d.x(shape, ints=(-20, 20))], {"axis": axis, "exclusive": excl, "reverse": rev}


def _topk(d):
    shape, k, axis, largest = d.pick([((4, 9), 3, -1, True), ((5, 3, 4), 2, 0, False), ((2, 40), 40, 1, True),
                                      ((6, 7), 1, -1, False)])
    return [d.x(shape, -5, 5, ints=(-8, 8))], {"k": k, "axis": axis, "largest": largest}


def _topk_rank(d):
    ins, attrs = _topk(d)
    return ins, {"axis": attrs["axis"], "largest": attrs["largest"]}


def _topk_select(d):
    shape, axis, k = d.pick([((4, 9), -1, 3), ((5, 3, 4), 0, 5), ((2, 40), 1, 7)])
    keys = d.rng.random(shape)
    ranks = np.argsort(np.argsort(keys, axis=axis, kind="stable"), axis=axis, kind="stable")
    return [ranks.astype(np.int64)], {"axis": axis, "k": k}


def _slice(d):
    shape, slices = d.pick([((5, 7, 4), (slice(1, 4), slice(None, None, -2), slice(0, 4, 3))),
                            ((6, 70), (slice(2, None), slice(3, 67, 2))),
                            ((9,), (slice(7, 1, -3),)), ((3, 4, 5), (slice(0, 1), slice(None), slice(-3, None)))])
    idx = [s.indices(n) for s, n in zip(slices, shape)]
    return [d.x(shape)], {"begin": [i[0] for i in idx], "end": [i[1] for i in idx], "step": [i[2] for i in idx]}


def _pad(d):
    shape, pads, mode, value = d.pick([((3, 5), (1, 2, 2, 0), "constant", 1.0), ((4, 6), (2, 1, 3, 2), "edge", 0.0),
                                       ((2, 4, 5), (0, 2, 3, 1, 1, 4), "reflect", 0.0),
                                       ((3, 67), (1, 2, 0, 5), "wrap", 0.0), ((5,), (3, 0), "constant", 0.0)])
    return [d.x(shape)], {"pads": pads, "mode": mode, "value": value}


def _concat(d):
    shapes, axis = d.pick([([(2, 3), (4, 3)], 0), ([(3, 2, 4), (3, 5, 4), (3, 1, 4)], 1), ([(2, 67), (2, 3)], -1),
                           ([(4,)], 0)])
    return [d.x(s) for s in shapes], {"axis": axis}


def _reshape(d):
    src, dst = d.pick([((3, 4, 5), (12, 5)), ((3, 4, 5), (5, 12)), ((6, 70), (420,)), ((2, 30), (3, 2, 10)),
                       ((1, 7), (7, 1))])
    return [d.x(src)], {"shape": dst}


def _transpose(d):
    shape, perm = d.pick([((3, 4, 5), (2, 0, 1)), ((5, 67), None), ((2, 3, 4, 5), (0, 2, 1, 3)), ((7,), (0,))])
    return [d.x(shape)], {"perm": perm}


def _broadcast_to(d):
    src, dst = d.pick([((3, 1, 5), (2, 3, 4, 5)), ((1,), (67,)), ((), (3, 4)), ((4, 1), (4, 70))])
    return [d.x(src)], {"shape": dst}


def _conv_transpose(d):
    x, w, attrs = d.pick([
        ((1, 4, 3, 5), (4, 3, 3, 3), {"stride": (2, 2), "padding": (1, 0, 1, 1), "output_padding": (1, 0)}),
        ((2, 4, 4, 3), (4, 2, 2, 3), {"groups": 2, "stride": (1, 2), "dilation": (2, 1)}),
        ((1, 3, 5, 5), (3, 4, 1, 1), {}),
    ])
    return [d.x(x, -1, 1, ints=(-3, 3)), d.x(w, -1, 1, ints=(-3, 3))], attrs


def _resize(d):
    sizes, attrs = d.pick([
        ((1, 2, 7, 3), {"mode": "nearest", "coordinate_transformation_mode": "asymmetric"}),
        ((1, 2, 8, 10), {"mode": "linear"}),
        ((1, 2, 6, 4), {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}),
        ((1, 2, 9, 7), {"mode": "nearest", "nearest_mode": "round_prefer_ceil",
                        "coordinate_transformation_mode": "pytorch_half_pixel"}),
        ((1, 2, 3, 9), {"mode": "cubic", "exclude_outside": True}),
    ])
    if d.dtype == "bool" and attrs["mode"] != "nearest":
        attrs = {"mode": "nearest"}
    elif d.dtype not in _FLOATS and attrs.get("exclude_outside"):
        # integer cubic with exclude_outside compiles for ~20 s (the rounding repeats the
        # weighted sum's expression tree): another coordinate mode instead
        attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}
    return [d.x((1, 2, 4, 5), ints=(-50, 50))], {"sizes": sizes, **attrs}


def _batch_norm(d):
    shape = d.pick([(2, 3, 4, 5), (4, 3), (2, 3, 67)])
    c = (shape[1],)
    return [d.x(shape), d.x(c, specials=False), d.x(c, specials=False), d.x(c, specials=False),
            d.positive(c)], {"epsilon": 1e-5}


def _instance_norm(d):
    shape = d.pick([(2, 3, 4, 5), (1, 4, 67)])
    c = (shape[1],)
    return [d.x(shape), d.x(c, specials=False), d.x(c, specials=False)], {"epsilon": 1e-5}


def _einsum(d):
    eq, shapes = d.pick([("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
                         ("ii->i", [(4, 4)]), ("ij->ji", [(3, 67)]), ("i,i->", [(7,), (7,)]),
                         ("...ij,...jk", [(2, 3, 4), (4, 2)]), ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
                         ("ij,kj,k->i", [(3, 4), (5, 4), (5,)])])
    return [d.x(s, -2, 2, ints=(-4, 4)) for s in shapes], {"equation": eq}


def _rnn(gates: int):
    def make(d: Draw):
        seq, batch, isz, hid = 3, 2, 4, 3
        v = d.pick([0, 1, 2, 3])
        direction = "bidirectional" if v == 2 else ("reverse" if v == 3 else "forward")
        nd = 2 if v == 2 else 1
        layout = 1 if v == 3 else 0
        x = d.x((batch, seq, isz) if layout else (seq, batch, isz), -1, 1)
        ins = [x, d.x((nd, gates * hid, isz), -0.5, 0.5, specials=False),
               d.x((nd, gates * hid, hid), -0.5, 0.5, specials=False)]
        attrs = {"direction": direction, "layout": layout}
        if v >= 1:
            state = (batch, nd, hid) if layout else (nd, batch, hid)
            ins += [d.x((nd, 2 * gates * hid), -0.5, 0.5, specials=False), d.x(state, -1, 1, specials=False)]
            attrs.update(has_B=True, has_initial_h=True)
            if gates == 4:
                ins.append(d.x(state, -1, 1, specials=False))
                attrs["has_initial_c"] = True
        if v == 2:
            attrs["clip"] = 2.0
        return ins, attrs
    return make


def _d2s(d):
    x, b, mode = d.pick([((1, 8, 3, 2), 2, "DCR"), ((2, 8, 2, 3), 2, "CRD"), ((1, 9, 2, 2), 3, "DCR")])
    return [d.x(x)], {"blocksize": b, "mode": mode}


def _s2d(d):
    x, b = d.pick([((1, 3, 4, 6), 2), ((2, 2, 6, 3), 3)])
    return [d.x(x)], {"blocksize": b}


def _trilu(d):
    shape, upper, k = d.pick([((5, 6), True, 0), ((2, 4, 5), False, 1), ((6, 4), True, -2), ((3, 67), False, 30)])
    return [d.x(shape)], {"upper": upper, "k": k}


def _tile(d):
    shape, reps = d.pick([((2, 3, 4), (2, 1, 3)), ((5,), (14,)), ((3, 1), (1, 67))])
    return [d.x(shape)], {"repeats": reps}


def _conv2d_nchwc(d):
    x, w, attrs = d.pick([((1, 2, 6, 5, 4), (2, 2, 3, 3, 4, 4), {}),
                          ((2, 1, 7, 7, 4), (3, 1, 2, 3, 4, 4), {"stride": (2, 1), "dilation": (1, 2)})])
    return [d.x(x, -1, 1, ints=(-3, 3)), d.x(w, -1, 1, ints=(-3, 3))], attrs


def _depthwise_nchwc(d):
    x, w, attrs = d.pick([((1, 2, 6, 5, 4), (2, 3, 3, 4), {"padding": (1, 1, 1, 1)}),
                          ((2, 1, 7, 6, 4), (1, 2, 3, 4), {"stride": (2, 1), "dilation": (2, 1)})])
    return [d.x(x, -1, 1, ints=(-3, 3)), d.x(w, -1, 1, ints=(-3, 3))], attrs


def _matmul_packed(d):
    a, b, n = d.pick([((5, 7), (3, 7, 4), 10), ((2, 3, 7), (2, 7, 8), 16), ((9,), (1, 9, 16), 5)])
    return [d.x(a, -2, 2, ints=(-5, 5)), d.x(b, -2, 2, ints=(-5, 5))], {"n": n}


def _constant(d):
    return [], {"value": d.x(d.choice(_EW_SHAPES[:3]))}


def _mod(d):
    ins, _ = _binary(ints=(-50, 50), nonzero_b=True).make(d)
    return ins, {"fmod": d.pick([0, 1])}


def _isinf(d):
    return [d.x(d.choice(_EW_SHAPES), specials=True)], d.pick([{}, {"detect_positive": False},
                                                                {"detect_negative": False}])


_T = TRANSCENDENTAL
_ARITH = (-120, 120)  # integer range of arithmetic ops: int8 products and sums wrap

#: op name -> Sample. Plug-ins may add entries for the ops they register.
SAMPLES: dict[str, Sample] = {
    # -- data movement (exact, including the sign of zeros)
    "reshape": Sample(_reshape, "exact", variants=5),
    "transpose": Sample(_transpose, "exact", variants=4),
    "broadcast_to": Sample(_broadcast_to, "exact", variants=4),
    "concat": Sample(_concat, "exact", variants=4),
    "slice": Sample(_slice, "exact", variants=4),
    "pad": Sample(_pad, "exact", variants=5),
    "constant": Sample(_constant, "exact"),
    "identity": _unary(tol="exact"),
    "gather": Sample(_gather, "exact", variants=4),
    "gather_elements": Sample(_gather_elements, "exact", variants=3),
    "tile": Sample(_tile, "exact", variants=3),
    "trilu": Sample(_trilu, "exact", variants=4),
    "depth_to_space": Sample(_d2s, "exact", variants=3),
    "space_to_depth": Sample(_s2d, "exact", variants=2),
    # -- math functions (values inside each function's domain)
    "exp": _unary(-5, 5, mult=_T),
    "log": _unary(0.05, 10, mult=_T),
    "sqrt": _unary(0, 10),
    "rsqrt": _unary(0.05, 10),
    "tanh": _unary(-4, 4, mult=_T),
    "erf": _unary(-3, 3, mult=_T),
    "sin": _unary(-6, 6, mult=_T),
    "cos": _unary(-6, 6, mult=_T),
    "tan": _unary(-1.4, 1.4, mult=_T),
    "asin": _unary(-1, 1, mult=_T),
    "acos": _unary(-1, 1, mult=_T),
    "atan": _unary(-5, 5, mult=_T),
    "sinh": _unary(-4, 4, mult=_T),
    "cosh": _unary(-4, 4, mult=_T),
    "asinh": _unary(-5, 5, mult=_T),
    "acosh": _unary(1, 10, mult=_T),
    "atanh": _unary(-0.99, 0.99, mult=_T),
    "sigmoid": _unary(-8, 8, mult=_T),
    "reciprocal": _unary(-4, 4, nonzero=True),
    "neg": _unary(tol="exact", ints=_ARITH),
    "abs": _unary(tol="exact", ints=_ARITH),
    "relu": _unary(tol="exact", ints=_ARITH),
    "floor": _unary(-5, 5, tol="exact", step=0.25),
    "ceil": _unary(-5, 5, tol="exact", step=0.25),
    "round": _unary(-5, 5, tol="exact", step=0.25),
    "sign": _unary(-2, 2, tol="exact", step=0.5),
    "isnan": _unary(tol="exact", specials="always"),
    "isinf": Sample(_isinf, "exact", variants=3, specials="always"),
    "logical_not": _unary(-2, 2, tol="exact", step=1.0),
    "bitwise_not": _unary(tol="exact", ints=_ARITH),
    # -- binary arithmetic and comparisons (numpy broadcasting)
    "add": _binary(ints=_ARITH),
    "sub": _binary(ints=_ARITH),
    "mul": _binary(ints=_ARITH),
    "div": _binary(nonzero_b=True, ints=_ARITH, ints_b=(-9, 9)),
    "pow": _binary((0.1, 3.0), (-3.0, 3.0), mult=_T, ints=(-3, 3), ints_b=(-2, 5)),
    "maximum": _binary(tol="exact", ints=_ARITH),
    "minimum": _binary(tol="exact", ints=_ARITH),
    "mod": Sample(_mod, "ew", variants=2),
    **{name: _binary((-2, 2), (-2, 2), tol="exact", step=0.5)
       for name in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                    "logical_and", "logical_or", "logical_xor")},
    **{name: _binary(tol="exact", ints=_ARITH) for name in ("bitwise_and", "bitwise_or", "bitwise_xor")},
    "where": Sample(_where, "exact"),
    "cast": Sample(_cast, "exact", variants=len(DTYPES), all_variants=True),
    # -- activations
    "hard_sigmoid": _unary(-4, 4, attrs=({}, {"alpha": 0.3, "beta": 0.4})),
    "hard_swish": _unary(-4, 4),
    "leaky_relu": _unary(-4, 4, attrs=({}, {"alpha": 0.2})),
    "elu": _unary(-4, 4, mult=_T, attrs=({}, {"alpha": 0.5})),
    "selu": _unary(-4, 4, mult=_T),
    "celu": _unary(-4, 4, mult=_T, attrs=({}, {"alpha": 2.0})),
    "softplus": _unary(-6, 6, mult=_T),
    "softsign": _unary(-4, 4),
    "mish": _unary(-4, 4, mult=_T),
    "silu": _unary(-6, 6, mult=_T),
    "thresholded_relu": _unary(-4, 4, tol="exact", attrs=({}, {"alpha": 0.5})),
    "shrink": _unary(-4, 4, attrs=({}, {"bias": 0.25, "lambd": 1.0})),
    "clip": Sample(_clip, "exact", variants=4),
    "prelu": Sample(_prelu, "ew", variants=3),
    "gelu": _unary(-4, 4, mult=_T, attrs=({"approximate": "none"}, {"approximate": "tanh"})),
    # -- reductions
    "sum": Sample(_reduce(ints=_ARITH), "acc", variants=len(_REDUCE_AXES)),
    "prod": Sample(_reduce(0.7, 1.4, ints=(-2, 2)), "acc", variants=len(_REDUCE_AXES)),
    "max": Sample(_reduce(ints=_ARITH), "exact", variants=len(_REDUCE_AXES)),
    "min": Sample(_reduce(ints=_ARITH), "exact", variants=len(_REDUCE_AXES)),
    "mean": Sample(_reduce(ints=_ARITH), "acc", variants=len(_REDUCE_AXES)),
    "argmax": Sample(_arg, "exact", variants=4),
    "argmin": Sample(_arg, "exact", variants=4),
    "cumsum": Sample(_cumsum, "acc", variants=4),
    "topk": Sample(_topk, "exact", variants=4),
    "topk_rank": Sample(_topk_rank, "exact", variants=4),
    "topk_select": Sample(_topk_select, "exact", dtypes=("int64",), variants=3),
    # -- contractions, windows, normalisation
    "matmul": Sample(_matmul, "acc", variants=6),
    "einsum": Sample(_einsum, "acc", variants=8),
    "conv2d": Sample(_conv2d, "acc", variants=4),
    "conv_transpose2d": Sample(_conv_transpose, "acc", variants=3),
    "max_pool2d": Sample(_pool(False), "exact", variants=4),
    "avg_pool2d": Sample(_pool(True), "acc", variants=4),
    "global_avg_pool": Sample(lambda d: ([d.x(d.pick([(2, 3, 5, 4), (1, 2, 9, 9)]))], {}), "acc", variants=2),
    "softmax": Sample(_axis_op, "acc", _T, variants=4),
    "log_softmax": Sample(_axis_op, "acc", _T, variants=4),
    "layer_norm": Sample(_layer_norm, "acc", variants=3),
    "batch_norm": Sample(_batch_norm, "acc", variants=3),
    "instance_norm": Sample(_instance_norm, "acc", variants=2),
    "resize": Sample(_resize, "acc", variants=5),
    "lstm": Sample(_rnn(4), "acc", _T, dtypes=_FLOATS, variants=4),
    "gru": Sample(_rnn(3), "acc", _T, dtypes=_FLOATS, variants=4),
    # -- blocked-layout ops (made by the layout passes; tested directly too)
    "conv2d_nchwc": Sample(_conv2d_nchwc, "acc", variants=2),
    "depthwise_conv2d_nchwc": Sample(_depthwise_nchwc, "acc", variants=2),
    "matmul_packed": Sample(_matmul_packed, "acc", variants=3),
}


def _np_dtype(name: str) -> np.dtype:
    from ubique.ir.dtypes import dtype_of

    return dtype_of(name).to_numpy()


def _dtype_name(a: np.ndarray) -> str:
    from ubique.ir.dtypes import dtype_of

    return dtype_of(a.dtype).name


def _available_dtypes() -> tuple[str, ...]:
    try:
        _np_dtype("bfloat16")
    except UbiqueError:  # no ml_dtypes: bfloat16 arrays cannot cross the API
        return tuple(d for d in DTYPES if d != "bfloat16")
    return DTYPES


def sample_for(name: str, opdef=None) -> Sample | None:
    """The Sample of op `name`: its SAMPLES entry, else a generic one by kind, else None."""
    if name in SAMPLES:
        return SAMPLES[name]
    if opdef is None:
        from ubique.ir.registry import get_op

        opdef = get_op(name)
    if opdef.kind == "source":
        return None
    lo = opdef.num_inputs if isinstance(opdef.num_inputs, int) else opdef.num_inputs[0]
    if opdef.kind == "elementwise" and lo >= 1:
        return _generic_elementwise(lo)
    if lo == 1 and not any(a.required for a in opdef.attrs.values()):
        return _generic_unary(opdef.kind)
    return None


# -------------------------------------------------------------------------------------------
# Cases
# -------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One graph node to check: op, attributes, input values (constants as Fixed)."""
    op: str
    dtype: str
    index: int
    inputs: list
    attrs: dict
    sample: Sample
    specials: bool
    num_outputs: int = 1

    @property
    def label(self) -> str:
        return f"{self.dtype} case {self.index}"

    def describe(self) -> str:
        shapes = ", ".join(("const " if isinstance(a, Fixed) else "")
                           + f"{_dtype_name(_value(a))}{tuple(_value(a).shape)}" for a in self.inputs)
        attrs = {k: v for k, v in self.attrs.items() if k != "value"}
        extra = " with NaN/inf/+-0 inputs" if self.specials else ""
        return f"{self.op}({shapes}){' ' + repr(attrs) if attrs else ''}{extra}"

    def feeds(self) -> list[np.ndarray]:
        return [a for a in self.inputs if not isinstance(a, Fixed)]

    def add_to(self, g, prefix: str) -> list:
        from ubique.ir.dtypes import dtype_of
        from ubique.ir.graph import TensorType

        values = []
        for j, a in enumerate(self.inputs):
            if isinstance(a, Fixed):
                values.append(g.constant(a.value, dtype_of(a.value.dtype)))
            else:
                values.append(g.add_input(TensorType(a.shape, dtype_of(a.dtype)), f"{prefix}_{j}"))
        return g.add_node(self.op, values, dict(self.attrs)).outputs


def _value(a):
    return a.value if isinstance(a, Fixed) else a


def make_cases(name: str, opdef, seed: int = 0, cases: int = 3) -> tuple[list[Case], str]:
    """The cases of one op (and, when there are none, why)."""
    from ubique.ir.graph import Graph

    sample = sample_for(name, opdef)
    if sample is None:
        if opdef.kind == "source":
            return [], "a source op without a sample (ubique.testing.SAMPLES)"
        req = sorted(a for a, s in opdef.attrs.items() if s.required)
        return [], (f"no sample for this {opdef.kind} op (required attributes: {', '.join(req) or 'none'}, "
                    f"inputs: {opdef.num_inputs}); add one to ubique.testing.SAMPLES")
    dtypes = [d for d in (sample.dtypes or DTYPES) if d in _available_dtypes()]
    out: list[Case] = []
    why = ""
    for dtype in dtypes:
        j = DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES)  # (stable with or without bfloat16)
        if sample.all_variants:
            n = max(cases, sample.variants) if dtype == "float32" else sample.variants
        else:
            n = max(1, cases) if dtype == "float32" else 1
        for k in range(n):
            variant = k if sample.all_variants else j + k
            specials = dtype in _FLOATS and (sample.specials == "always"
                                             or (bool(sample.specials) and k == _SPECIALS_CASE[dtype]))
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), j, k])
            try:
                inputs, attrs = sample.make(Draw(rng, dtype, variant, specials))
                case = Case(name, dtype, k, list(inputs), dict(attrs), sample, specials)
                outs = case.add_to(Graph("probe"), "x")  # the op's type rule accepts it
            except UbiqueError as e:
                why = why or f"{dtype}: {e}"
                continue
            except Exception as e:  # noqa: BLE001 -- a sample bug: say so instead of crashing the suite
                why = why or f"{dtype}: making the sample raised {type(e).__name__}: {e}"
                continue
            case.num_outputs = len(outs)
            out.append(case)
    return out, ("" if out else f"no dtype among {', '.join(dtypes)} gave a valid case ({why})")


# -------------------------------------------------------------------------------------------
# Comparison
# -------------------------------------------------------------------------------------------
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


# -------------------------------------------------------------------------------------------
# Results
# -------------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    case: Case
    status: str                  # "pass", "FAIL", "unsupported" or "reference failed"
    max_error: float = 0.0
    ratio: float = 0.0           # largest error / allowed error
    tolerance: str = ""
    message: str = ""


@dataclass
class OpResult:
    """One row of the table."""
    op: str
    kind: str
    status: str                  # "pass", "FAIL", "no sample" or "unsupported"
    passed: int = 0
    run: int = 0
    unsupported: int = 0
    dtypes: tuple[str, ...] = ()
    max_error: float = 0.0       # of the case closest to its tolerance
    tolerance: str = ""
    message: str = ""
    cases: list[CaseResult] = field(default_factory=list)

    ratio: float = 0.0           # that case's error / allowed error

    def row(self) -> str:
        ran = self.run > 0 and bool(self.tolerance)  # (cases that raised have no error to show)
        cases = f"{self.passed}/{self.run}" if self.run else "-"
        err = f"{self.max_error:.2g}" if ran else "-"
        ratio = _percent(self.ratio) if ran and not self.tolerance.startswith("exact") else "-"
        line = (f"{self.op:<23} {self.kind:<11} {cases:>7} {err:>8} {ratio:>7}  {self.tolerance:<22} "
                f"{self.status}")
        if self.message and self.status == "pass":
            return f"{line} ({self.message})"
        return f"{line}\n    {self.message}" if self.message else line


_HEADER = (f"{'op':<23} {'kind':<11} {'cases':>7} {'max err':>8} {'err/tol':>7}  {'tolerance':<22} status")


@dataclass
class ConformanceReport:
    target: str
    reference: str
    rows: list[OpResult]
    seconds: float = 0.0
    seed: int = 0

    @property
    def passed(self) -> bool:
        """No op failed (ops without a sample or unsupported by the target do not fail)."""
        return not self.failures()

    def failures(self) -> list[OpResult]:
        return [r for r in self.rows if r.status == "FAIL"]

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "FAIL": 0, "no sample": 0, "unsupported": 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        detail = f" ({c['no sample']} no sample, {c['unsupported']} unsupported)" if c["no sample"] or c[
            "unsupported"] else ""
        return (f"{c['pass']} ops passed, {c['FAIL']} failed, {c['no sample'] + c['unsupported']} not covered"
                f"{detail} on target {self.target} against {self.reference} ({self.seconds:.1f} s, seed {self.seed})")

    def table(self, rows: Iterable[OpResult] | None = None) -> str:
        return "\n".join([_HEADER, "-" * len(_HEADER)] + [r.row() for r in (self.rows if rows is None else rows)])

    def __getitem__(self, op: str) -> OpResult:
        for r in self.rows:
            if r.op == op:
                return r
        raise KeyError(op)


_SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}


def _percent(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "-"
    return "0" if ratio == 0 else ("<1%" if ratio < 0.01 else f"{ratio:.0%}")


def _summarise(op: str, kind: str, results: list[CaseResult], why: str) -> OpResult:
    if not results:
        return OpResult(op, kind, "no sample", message=why)
    ran = [r for r in results if r.status in ("pass", "FAIL")]
    fails = [r for r in results if r.status == "FAIL"]
    unsupported = [r for r in results if r.status == "unsupported"]
    ref_failed = [r for r in results if r.status == "reference failed"]
    row = OpResult(op, kind, "pass", passed=len(ran) - len(fails), run=len(ran), unsupported=len(unsupported),
                   dtypes=tuple(dict.fromkeys(r.case.dtype for r in ran)), cases=results)
    measured = [r for r in ran if not math.isnan(r.ratio)]  # (not the cases that raised)
    if measured:
        worst = max(measured, key=lambda r: (r.ratio, r.max_error))
        row.max_error, row.ratio, row.tolerance = worst.max_error, worst.ratio, worst.tolerance
    notes = []
    if fails:
        row.status = "FAIL"
        first = fails[0]
        notes.append(f"{first.case.label}, {first.case.describe()}: {first.message}")
        if len(fails) > 1:
            notes.append(f"(+{len(fails) - 1} more failing case(s), dtypes "
                         f"{', '.join(dict.fromkeys(r.case.dtype for r in fails))})")
    elif not ran:
        row.status = "unsupported" if unsupported else "no sample"
        source = unsupported or ref_failed
        notes.append(("" if unsupported else "the reference failed: ") + source[0].message)
    if row.status != "unsupported" and unsupported:
        notes.append(f"{len(unsupported)} case(s) unsupported: "
                     f"{', '.join(dict.fromkeys(r.case.dtype for r in unsupported))}")
    if ref_failed and ran:
        notes.append(f"{len(ref_failed)} case(s) failed on the reference: {ref_failed[0].message}")
    row.message = " ".join(notes)
    return row


# -------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------
class _Side:
    """Compiles and runs graphs for one target: in this process (the reference), or through
    the native-runtime driver in a child process (the target under test; under its emulator
    where it does not run here)."""

    def __init__(self, target, isolated: bool, timeout: float):
        from ubique.targets.registry import get_target

        self.target = get_target(target)
        self.isolated = isolated and self.target.device == "cpu"
        self.timeout = timeout
        if self.target.device == "cpu" and (self.isolated or not self.target.runs_natively):
            from ubique.runtime.emulator import build_driver, emulator_command

            emulator_command(self.target)   # a missing emulator or compiler: ToolchainError now, once
            build_driver(self.target)

    def same_code(self, other: "_Side") -> bool:
        """Whether both sides compile identically (the program can be shared)."""
        return (self.target.device == other.target.device == "cpu" and self.target.key == other.target.key
                and self.target.name == other.target.name)

    def compile(self, g):
        from ubique.compiler.pipeline import compile_graph

        if self.target.device != "cpu":  # another device: its runtime runs the model in this process
            import ubique

            return ubique.compile(g, target=self.target)
        return compile_graph(g, self.target, name="conf")

    def run(self, program, feeds: list[np.ndarray]) -> list[np.ndarray]:
        if self.target.device != "cpu":
            return [np.asarray(o) for o in program.run(feeds)]
        if self.isolated or not self.target.runs_natively:
            from ubique.runtime.emulator import EmulatedProgram

            with EmulatedProgram(program, threads=2, timeout=self.timeout) as p:
                return p.run(*feeds)
        from ubique.runtime.executable import load_program

        return [np.asarray(o) for o in load_program(program).run(*feeds)]


def _graph(cases: list[Case]):
    from ubique.ir.graph import Graph

    g = Graph("conformance")
    spans, feeds = [], []
    for n, case in enumerate(cases):
        outs = case.add_to(g, f"c{n}")
        spans.append((len(g.outputs), len(outs)))
        g.outputs.extend(outs)
        feeds.extend(case.feeds())
    return g, feeds, spans


def _error_text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(e).__name__}: {text}"


class _Runner:
    """Runs groups of cases on both sides and compares; a group that fails to compile or
    run on either side is retried op by op, then case by case."""

    def __init__(self, ref: _Side, tgt: _Side, progress: Callable[[str], None] | None):
        self.ref, self.tgt = ref, tgt
        self.shared = ref.same_code(tgt)  # one compile serves both sides
        self.ref_out: dict[int, list | BaseException] = {}
        self.progress = progress

    def run(self, cases: list[Case]) -> dict[int, CaseResult]:
        results: dict[int, CaseResult] = {}
        todo = [c for c in cases if id(c) not in self.ref_out]
        program = None
        if todo:
            try:
                g, feeds, spans = _graph(todo)
                program = self.ref.compile(g)
                outs = self.ref.run(program, feeds)
                for c, (s, n) in zip(todo, spans):
                    self.ref_out[id(c)] = outs[s:s + n]
            except Exception as e:  # noqa: BLE001
                if len(todo) > 1:
                    return self._split(cases)
                self.ref_out[id(todo[0])] = e
                program = None
        ok_cases = []
        for c in cases:
            out = self.ref_out[id(c)]
            if isinstance(out, BaseException):
                results[id(c)] = CaseResult(c, "reference failed", message=_error_text(out))
            else:
                ok_cases.append(c)
        if not ok_cases:
            return results
        try:
            g, feeds, spans = _graph(ok_cases)
            if not (self.shared and program is not None and len(ok_cases) == len(todo) == len(cases)):
                program = self.tgt.compile(g)
            outs = self.tgt.run(program, feeds)
        except Exception as e:  # noqa: BLE001 -- anything a plug-in raises fails its op, not the suite
            if len(ok_cases) > 1:
                results.update(self._split(ok_cases))
                return results
            c = ok_cases[0]
            status = "unsupported" if isinstance(e, UnsupportedOpError) else "FAIL"
            results[id(c)] = CaseResult(c, status, math.nan, math.nan, message=_error_text(e))
            return results
        for c, (s, n) in zip(ok_cases, spans):
            results[id(c)] = self._compare(c, outs[s:s + n], self.ref_out[id(c)])
        return results

    def _split(self, cases: list[Case]) -> dict[int, CaseResult]:
        groups = _split_cases(cases)
        if self.progress:
            self.progress(f"  {_describe_batch(cases)} failed: retrying its {len(groups)} parts")
        results: dict[int, CaseResult] = {}
        for group in groups:
            results.update(self.run(group))
        return results

    @staticmethod
    def _compare(case: Case, got: list, want: list) -> CaseResult:
        from ubique.ir.registry import get_op

        if len(got) != len(want):
            return CaseResult(case, "FAIL", math.nan, math.nan,
                          message=f"{len(got)} outputs, the reference has {len(want)}")
        signed = get_op(case.op).kind == "injective" or case.op in ("identity", "constant")
        worst = CaseResult(case, "pass")
        for k, (g, w) in enumerate(zip(got, want)):
            ok, err, ratio, tol, msg = compare(g, w, case.sample.tol, case.sample.rtol_mult, signed)
            if not ok:
                where = f"output {k}: " if len(want) > 1 else ""
                return CaseResult(case, "FAIL", err, ratio, tol, where + msg)
            if (ratio, err) >= (worst.ratio, worst.max_error):
                worst = CaseResult(case, "pass", err, ratio, tol)
        return worst


def op_names() -> list[str]:
    """Names of every registry op, in registry order (for pytest parametrisation)."""
    from ubique.ir.registry import all_ops

    return list(all_ops())


def run_conformance(target, ops: Iterable[str] | str | None = None, seed: int = 0, cases: int = 3,
                    reference="host", *, quick: bool = False, jobs: int | None = None, chunk: int = 300,
                    timeout: float = 600, progress: Callable[[str], None] | None = None) -> ConformanceReport:
    """Checks every registry op (or `ops`) on `target` against `reference`.

    Each op runs `cases` random cases in float32 and one in every other dtype it accepts
    (cast: one per target dtype). `quick`: one case per dtype, only float32, float16, int32,
    int8 and bool. Cases of up to `chunk` at a time share one graph, compiled once per side;
    each group is checked in a forked child process (a compiler crash fails its op, not the
    run), `jobs` at a time (default: the CPUs, at most 8); `timeout` bounds one run of the
    target (seconds).

    Raises:
        ToolchainError: the target's compiler or emulator is missing.
        UnsupportedOpError: unknown target.
    """
    from ubique.ir.registry import all_ops

    t0 = time.perf_counter()
    registry = all_ops()
    if isinstance(ops, str):
        ops = [o.strip() for o in ops.split(",") if o.strip()]
    names = list(registry) if ops is None else list(dict.fromkeys(ops))
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UnsupportedOpError(f"unknown op(s) {', '.join(unknown)}: not in the op registry")
    ref = _Side(reference, isolated=False, timeout=timeout)
    tgt = _Side(target, isolated=True, timeout=timeout)
    if quick:
        cases = 1
    per_op: dict[str, tuple[list[Case], str]] = {}
    for name in names:
        made, why = make_cases(name, registry[name], seed, cases)
        if quick:
            made = [c for c in made if c.dtype in ("float32", "float16", "int32", "int8", "bool")] or made[:1]
        per_op[name] = (made, why)
    runner = _Runner(ref, tgt, progress)
    all_cases = [c for made, _ in per_op.values() for c in made]
    if jobs is None:
        jobs = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if jobs > 1:  # several groups per worker, so that heavy ops (convolutions, rnns) spread out
        chunk = min(chunk, max(40, -(-len(all_cases) // (4 * jobs))))
    batches = list(_batches([per_op[n][0] for n in names], chunk))
    results = _run_all(runner, batches, jobs, progress)
    rows = [_summarise(n, registry[n].kind, [results[id(c)] for c in per_op[n][0]], per_op[n][1]) for n in names]
    assert len(results) == len(all_cases)
    return ConformanceReport(tgt.target.name, ref.target.name, rows, time.perf_counter() - t0, seed)


def _describe_batch(batch: list[Case]) -> str:
    ops_in = list(dict.fromkeys(c.op for c in batch))
    if len(ops_in) == 1:
        return f"{len(batch)} case(s) of {ops_in[0]}"
    return f"{len(batch)} cases of {len(ops_in)} ops ({ops_in[0]} .. {ops_in[-1]})"


def _split_cases(cases: list[Case]) -> list[list[Case]]:
    """A failed group's parts: its ops, or (one op) its cases."""
    ops = list(dict.fromkeys(c.op for c in cases))
    return [[c for c in cases if c.op == op] for op in ops] if len(ops) > 1 else [[c] for c in cases]


def _child(runner: _Runner, cases: list[Case], conn, log: str) -> None:
    """In a forked process: checks `cases`, sends plain results (cases hold functions, which
    do not pickle; the parent has the same cases in the same order)."""
    import faulthandler

    try:
        fd = os.open(log, os.O_WRONLY)
        os.dup2(fd, 2)  # what a crashing compiler prints (LLVM ERROR: ...) goes into the message
        sys.stderr = os.fdopen(2, "w", closefd=False)
        faulthandler.disable()  # (pytest's would print the Python stack of a crash to the terminal)
        runner.progress = None
        res = runner.run(cases)
        conn.send([(r.status, r.max_error, r.ratio, r.tolerance, r.message) for r in (res[id(c)] for c in cases)])
    finally:
        conn.close()


def _run_all(runner: _Runner, batches: list[list[Case]], jobs: int, progress) -> dict[int, CaseResult]:
    """Checks the groups, each in a forked child process, `jobs` at a time: a compiler that
    crashes the process (an LLVM fatal error, a plug-in's segfault) fails its group, which
    is retried op by op, then case by case, in fresh children; the children see everything
    registered at run time (targets, backends, passes), as fork copies this process. Targets
    of another device than the CPU (their runtime state may not survive a fork), or a
    platform without fork, run the groups here, one after the other."""
    import multiprocessing
    import tempfile
    from collections import deque
    from multiprocessing.connection import wait

    results: dict[int, CaseResult] = {}
    if not (runner.tgt.target.device == runner.ref.target.device == "cpu"
            and "fork" in multiprocessing.get_all_start_methods()):
        for batch in batches:
            if progress:
                progress(_describe_batch(batch))
            results.update(runner.run(batch))
        return results
    ctx = multiprocessing.get_context("fork")
    todo = deque(batches)
    running: dict = {}  # connection -> (process, cases, log file)
    try:
        while todo or running:
            while todo and len(running) < max(1, jobs):
                cases = todo.popleft()
                if progress:
                    progress(_describe_batch(cases))
                receive, send = ctx.Pipe(duplex=False)
                log = tempfile.NamedTemporaryFile(prefix="ubique-conformance-", suffix=".log", delete=False)
                log.close()
                proc = ctx.Process(target=_child, args=(runner, cases, send, log.name))
                proc.start()
                send.close()
                running[receive] = (proc, cases, log.name)
            for conn in wait(list(running)):
                proc, cases, log = running.pop(conn)
                try:
                    plain = conn.recv()
                except (EOFError, OSError):
                    plain = None
                conn.close()
                proc.join()
                with open(log, errors="replace") as f:
                    err = " ".join(f.read().split()[-60:])
                os.unlink(log)
                if plain is not None:
                    for c, r in zip(cases, plain):
                        results[id(c)] = CaseResult(c, *r)
                elif len(cases) > 1:
                    if progress:
                        progress(f"  the process checking {_describe_batch(cases)} died "
                                 f"(exit status {proc.exitcode}): retrying its parts")
                    todo.extendleft(reversed(_split_cases(cases)))
                else:
                    results[id(cases[0])] = CaseResult(
                        cases[0], "FAIL", math.nan, math.nan, message=f"the process compiling and running it died "
                        f"(exit status {proc.exitcode}){': ' + err if err else ''}")
    finally:
        for proc, _, log in running.values():
            proc.kill()
            proc.join()
            os.unlink(log)
    return results


# The driver that runs a target's program takes at most 1024 tensor arguments (inputs,
# outputs, weights); a combined graph stays well below, leaving room for weights that
# decompositions add.
_MAX_ARGS = 600


def _args(case: Case) -> int:
    return len(case.inputs) + case.num_outputs


def _batches(per_op: list[list[Case]], chunk: int) -> Iterable[list[Case]]:
    """Groups of whole ops (an op larger than a group is split) of at most `chunk` cases and
    _MAX_ARGS driver arguments."""
    batch: list[Case] = []
    args = 0
    for made in per_op:
        need = sum(_args(c) for c in made)
        if batch and (len(batch) + len(made) > chunk or args + need > _MAX_ARGS):
            yield batch
            batch, args = [], 0
        for c in made:
            if batch and (len(batch) >= chunk or args + _args(c) > _MAX_ARGS):
                yield batch
                batch, args = [], 0
            batch.append(c)
            args += _args(c)
    if batch:
        yield batch


def check_op(name: str | Iterable[str], target, *, seed: int = 0, cases: int = 3, reference="host",
             allow_unsupported: bool = True) -> ConformanceReport:
    """Checks one op (or several) on `target`, for a plug-in's pytest suite:

        @pytest.mark.parametrize("op", ubique.testing.op_names())
        def test_op(op):
            ubique.testing.check_op(op, "mychip")

    Raises AssertionError with the failing table rows when an op fails, has no sample or
    (allow_unsupported=False) is unsupported. Returns the report otherwise."""
    report = run_conformance(target, [name] if isinstance(name, str) else list(name), seed, cases, reference)
    bad = {"FAIL", "no sample"} | (set() if allow_unsupported else {"unsupported"})
    rows = [r for r in report.rows if r.status in bad]
    if rows:
        raise AssertionError(f"conformance of target {report.target} against {report.reference}:\n"
                             + report.table(rows))
    return report


# -------------------------------------------------------------------------------------------
# Command line: `ubique conformance --target T`
# -------------------------------------------------------------------------------------------
def cli_main(argv: list[str] | None = None) -> int:
    """`ubique conformance --target T [--ops a,b] [--seed N] [--cases N] [--quick]`: prints the
    pass table and a summary; exit status 0 when no op failed, 1 when some did, 2 when the
    suite could not run (unknown target or op, missing toolchain)."""
    parser = argparse.ArgumentParser(
        prog="ubique conformance",
        description="Check every op of the registry on a target against the reference host backend.")
    parser.add_argument("--target", required=True, help="target to check (a registered name: ubique targets)")
    parser.add_argument("--ops", default=None, help="comma-separated op names (default: every registry op)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the cases (default 0)")
    parser.add_argument("--cases", type=int, default=3,
                        help="random cases per op in float32; every other dtype the op takes gets one (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one case per op in float32, float16, int32, int8 and bool each")
    parser.add_argument("--reference", default="host", help="reference target (default host)")
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="groups of cases checked at once in worker processes (default: the CPUs, at most 8)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers the target or its backend); repeatable")
    parser.add_argument("--failures-only", action="store_true", help="print only the rows that did not pass")
    parser.add_argument("-v", "--verbose", action="store_true", help="print progress and every failing case")
    args = parser.parse_args(argv)
    progress = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
    try:
        for module in args.imports:
            import importlib

            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 -- the user's module: report it, do not crash
                raise UbiqueError(f"--import {module}: importing it raised {type(e).__name__}: {e}") from e
        report = run_conformance(args.target, args.ops, args.seed, max(1, args.cases), args.reference,
                                 quick=args.quick, jobs=args.jobs, progress=progress)
    except (ToolchainError, UbiqueError) as e:
        print(f"ubique conformance: error: {e}", file=sys.stderr)
        return 2
    rows = [r for r in report.rows if r.status != "pass"] if args.failures_only else report.rows
    print(report.table(rows))
    if args.verbose:
        for r in report.failures():
            for c in r.cases:
                if c.status == "FAIL":
                    print(f"FAIL {c.case.label}: {c.case.describe()}\n    {c.message}")
    print(report.summary())
    return 0 if report.passed else 1


if __name__ == "__main__":  # python -m ubique.testing --target T
    sys.exit(cli_main(sys.argv[1:]))
