"""Samples: how the conformance kit makes inputs and attributes for each op (`SAMPLES`, op
name -> `Sample`), the value generators they use (`Draw`) and the generic samples of ops
without an entry (`sample_for`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .dtypes import _FLOATS, DTYPES, _np_dtype
from .tolerances import TRANSCENDENTAL


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
