"""Conformance of ubique's data-movement ops with numpy: reshape (incl. -1), transpose,
broadcast_to, concat, basic indexing (ints, negative steps, None, Ellipsis), pad in the
constant/edge/reflect modes, expand_dims and squeeze, alone and chained in one jitted
function. Data movement is exact: values, NaN and the sign of zero must survive.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, note, strategies as st

import ubique as ub
from strategies import ALL_DTYPES, arrays, basic_index, dtypes, is_float, is_int, result_dtype, shapes
from tolerances import assert_same, dtype_name


def _desc(x):
    return f"{dtype_name(x.dtype)}{tuple(x.shape)}"


def _array(data, max_dims=4, min_dims=0, max_side=4, dtype=None, shape=None):
    dt = dtype or data.draw(dtypes(ALL_DTYPES), "dtype")
    shape = shape if shape is not None else data.draw(shapes(min_dims=min_dims, max_dims=max_dims,
                                                             max_side=max_side), "shape")
    return data.draw(arrays(dt, shape), "x")


# -- reshape -----------------------------------------------------------------------------------
@st.composite
def reshape_targets(draw, shape):
    """A shape with the same number of elements, possibly with one -1."""
    size = math.prod(shape)
    if size == 0:
        target = list(draw(shapes(min_dims=1, max_dims=4, max_side=3)))
        target[draw(st.integers(0, len(target) - 1))] = 0
    else:
        factors, n, p = [], size, 2
        while n > 1:
            while n % p == 0:
                factors.append(p)
                n //= p
            p += 1
        factors = draw(st.permutations(factors))
        ndims = draw(st.integers(1 if factors else 0, max(len(factors), 1) + 1))
        target = [1] * ndims
        for f in factors:
            target[draw(st.integers(0, ndims - 1))] *= f
    if target and draw(st.booleans()):
        k = draw(st.integers(0, len(target) - 1))
        rest = math.prod(d for j, d in enumerate(target) if j != k)
        if rest > 0:
            target[k] = -1
    return tuple(target)


@given(data=st.data())
def test_reshape_including_minus_one(data):
    x = _array(data)
    target = data.draw(reshape_targets(x.shape), "target")
    expected = x.reshape(target)
    assert_same(ub.reshape(x, target), expected, f"ub.reshape({_desc(x)}, {target})")
    assert_same(ub.jit(lambda t: t.reshape(target))(x), expected, f"jit x.reshape({target}) on {_desc(x)}")
    if target:
        assert_same(ub.jit(lambda t: t.reshape(*target))(x), expected, f"jit x.reshape(*{target}) on {_desc(x)}")


def test_reshape_errors_match_numpy():
    x = np.zeros((2, 3), np.float32)
    for bad in [(4, 2), (-1, -1), (5, -1), (0, -1)]:
        with pytest.raises(ValueError):
            x.reshape(bad)
        with pytest.raises(ub.ShapeError):
            ub.reshape(x, bad)


# -- transpose ---------------------------------------------------------------------------------
@given(data=st.data())
def test_transpose_any_permutation(data):
    x = _array(data)
    perm = data.draw(st.none() | st.permutations(range(x.ndim)).map(tuple), "perm")
    expected = np.transpose(x, perm)
    assert_same(ub.transpose(x, perm), expected, f"ub.transpose({_desc(x)}, {perm})")
    fn = (lambda t: t.T) if perm is None else (lambda t: t.transpose(perm))
    assert_same(ub.jit(fn)(x), expected, f"jit transpose {perm} on {_desc(x)}")


# -- broadcast_to ------------------------------------------------------------------------------
@st.composite
def broadcast_targets(draw, shape):
    lead = draw(st.lists(st.integers(0, 3), max_size=2))
    own = [draw(st.integers(0, 3)) if d == 1 else d for d in shape]
    return tuple(lead + own)


@given(data=st.data())
def test_broadcast_to(data):
    x = _array(data, max_dims=3)
    target = data.draw(broadcast_targets(x.shape), "target")
    expected = np.broadcast_to(x, target)
    assert_same(ub.broadcast_to(x, target), expected, f"ub.broadcast_to({_desc(x)}, {target})")
    assert_same(ub.jit(lambda t: ub.broadcast_to(t, target))(x), expected, f"jit broadcast_to {target}")


def test_broadcast_to_incompatible_raises():
    with pytest.raises(ub.ShapeError):
        ub.broadcast_to(np.zeros((3,), np.float32), (2, 4))


# -- concat ------------------------------------------------------------------------------------
@given(data=st.data())
def test_concat_with_promotion_and_empty_parts(data):
    shape = data.draw(shapes(min_dims=1, max_dims=3), "base shape")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), "axis")
    k = data.draw(st.integers(1, 4), "count")
    xs = []
    for i in range(k):
        s = list(shape)
        s[axis] = data.draw(st.integers(0, 3), f"size {i}")
        xs.append(data.draw(arrays(data.draw(dtypes(ALL_DTYPES), f"dtype {i}"), tuple(s)), f"x{i}"))
    common = result_dtype(*[dtype_name(x.dtype) for x in xs])
    msg = f"concat([{', '.join(_desc(x) for x in xs)}], axis={axis})"
    expected = np.concatenate([x.astype(common) for x in xs], axis=axis)
    assert_same(ub.concat(xs, axis=axis), expected, "eager " + msg)
    jitted = ub.jit(lambda *ts: ub.concatenate(list(ts), axis=axis))
    assert_same(jitted(*xs), expected, "jit " + msg)


def test_concat_mismatched_shapes_raise():
    with pytest.raises(ub.ShapeError):
        ub.concat([np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)], axis=0)


# -- indexing ----------------------------------------------------------------------------------
@given(data=st.data())
def test_basic_indexing_ints_slices_none_ellipsis(data):
    x = _array(data, max_side=5)
    key = data.draw(basic_index(x.shape), "key")
    expected = x[key]
    assert_same(ub.getitem(x, key), np.asarray(expected), f"ub.getitem({_desc(x)}, {key!r})")
    assert_same(ub.jit(lambda t: t[key])(x), np.asarray(expected), f"jit x[{key!r}] on {_desc(x)}")


def test_indexing_with_negative_steps_and_out_of_range_bounds():
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    keys = [(slice(None, None, -1),), (slice(10, -10, -2), None, Ellipsis, 1), (Ellipsis, slice(-100, 100, 3)),
            (-1, slice(3, 0, -1), slice(None, None, -2)), (None, 0, None, Ellipsis, None), (slice(2, 1),),
            (1, -2, -3), (Ellipsis,), ()]
    for key in keys:
        assert_same(ub.getitem(x, key), np.asarray(x[key]), f"x[{key!r}]")


def test_indexing_errors_match_numpy():
    x = np.zeros((2, 3), np.float32)
    for key in [(2,), (0, -4), (0, 0, 0), (Ellipsis, Ellipsis)]:
        with pytest.raises(IndexError):
            x[key]
        with pytest.raises(ub.ShapeError):
            ub.getitem(x, key)


# -- pad ---------------------------------------------------------------------------------------
@st.composite
def pad_widths(draw, rank):
    """pad_width in each form numpy takes: int, (n,), (before, after), ((b0, a0), ...)."""
    w = st.integers(0, 4)
    form = draw(st.sampled_from(["int", "pair", "per-axis"] if rank else ["int"]))
    if form == "int":
        return draw(w)
    if form == "pair":
        return (draw(w), draw(w))
    return tuple((draw(w), draw(w)) for _ in range(rank))


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "wrap"])
@given(data=st.data())
def test_pad_three_modes(mode, data):
    x = _array(data, max_dims=3)
    pw = data.draw(pad_widths(x.ndim), "pad_width")
    kwargs = {}
    if mode == "constant":
        dt = dtype_name(x.dtype)
        cv = data.draw(st.sampled_from([0.0, -1.5, 2.0, float("nan")] if is_float(dt) else
                                       [0, 1] if dt == "bool" else [0, 7, 100]), "constant_values")
        kwargs["constant_values"] = cv
    msg = f"ub.pad({_desc(x)}, {pw}, mode={mode!r}, {kwargs})"
    try:
        expected = np.pad(x, pw, mode=mode, **kwargs)
    except ValueError:  # numpy: edge/reflect cannot extend an empty axis
        with pytest.raises(ub.ShapeError):
            ub.pad(x, pw, mode=mode, **kwargs)
        return
    assert_same(ub.pad(x, pw, mode=mode, **kwargs), expected, "eager " + msg)
    assert_same(ub.jit(lambda t: ub.pad(t, pw, mode=mode, **kwargs))(x), expected, "jit " + msg)


def test_reflect_pad_wider_than_the_axis():
    """numpy reflects repeatedly when the pad exceeds the axis length."""
    x = np.arange(3, dtype=np.int32)
    for pw in [(2, 2), (4, 5), (7, 0)]:
        assert_same(ub.pad(x, pw, mode="reflect"), np.pad(x, pw, mode="reflect"), f"reflect {pw} on arange(3)")


# -- expand_dims / squeeze ---------------------------------------------------------------------
@given(data=st.data())
def test_expand_dims_and_squeeze(data):
    x = _array(data, max_dims=3, max_side=2)
    axis = data.draw(st.integers(-x.ndim - 1, x.ndim), "expand axis")
    expected = np.expand_dims(x, axis)
    assert_same(ub.expand_dims(x, axis), expected, f"expand_dims({_desc(x)}, {axis})")
    assert_same(ub.jit(lambda t: ub.expand_dims(t, axis))(x), expected, f"jit expand_dims({_desc(x)}, {axis})")
    ones = [k for k, d in enumerate(x.shape) if d == 1]
    choices = [st.none()]
    if ones:
        choices += [st.sampled_from(ones), st.sampled_from(ones).map(lambda a: a - x.ndim),
                    st.lists(st.sampled_from(ones), unique=True).map(tuple)]
    sq = data.draw(st.one_of(*choices), "squeeze axis")
    expected = np.squeeze(x, sq)
    assert_same(ub.squeeze(x, sq), expected, f"squeeze({_desc(x)}, {sq})")
    assert_same(ub.jit(lambda t: ub.squeeze(t, sq))(x), expected, f"jit squeeze({_desc(x)}, {sq})")


def test_squeeze_of_a_non_unit_axis_raises():
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError):
        np.squeeze(x, 1)
    with pytest.raises(ub.ShapeError):
        ub.squeeze(x, 1)


# -- chains of shape ops in one jitted function (fused index arithmetic) ------------------------
@given(data=st.data())
def test_chains_of_shape_ops_in_one_function(data):
    x = _array(data, max_dims=3)
    steps, ref = [], x
    for i in range(data.draw(st.integers(1, 4), "steps")):
        kind = data.draw(st.sampled_from(["transpose", "index", "reshape", "pad", "broadcast", "neg", "concat"]),
                         f"op {i}")
        if kind == "transpose":
            perm = data.draw(st.permutations(range(ref.ndim)).map(tuple), f"perm {i}")
            ref = np.transpose(ref, perm)
            steps.append((kind, perm, lambda t, p=perm: t.transpose(p)))
        elif kind == "index":
            key = data.draw(basic_index(ref.shape), f"key {i}")
            ref = np.asarray(ref[key])
            steps.append((kind, key, lambda t, k=key: t[k]))
        elif kind == "reshape":
            target = data.draw(reshape_targets(ref.shape), f"target {i}")
            ref = ref.reshape(target)
            steps.append((kind, target, lambda t, s=target: t.reshape(s)))
        elif kind == "pad" and ref.size:
            pw = data.draw(pad_widths(ref.ndim), f"pad {i}")
            mode = data.draw(st.sampled_from(["constant", "edge", "reflect", "wrap"]), f"mode {i}")
            ref = np.pad(ref, pw, mode=mode)
            steps.append((kind, (pw, mode), lambda t, p=pw, m=mode: ub.pad(t, p, mode=m)))
        elif kind == "broadcast":
            target = data.draw(broadcast_targets(ref.shape), f"target {i}")
            ref = np.broadcast_to(ref, target)
            steps.append((kind, target, lambda t, s=target: ub.broadcast_to(t, s)))
        elif kind == "neg" and (is_float(dtype_name(ref.dtype)) or is_int(dtype_name(ref.dtype))):
            with np.errstate(all="ignore"):
                ref = -ref
            steps.append((kind, None, lambda t: -t))
        elif kind == "concat" and ref.ndim:
            ref = np.concatenate([ref, ref[::-1]], axis=-1)
            steps.append((kind, None, lambda t: ub.concat([t, t[::-1]], axis=-1)))
    note(f"steps: {[(k, a) for k, a, _ in steps]}")

    def chain(t):
        for _, _, fn in steps:
            t = fn(t)
        return t

    assert_same(ub.jit(chain)(x), np.asarray(ref), f"chain {[(k, a) for k, a, _ in steps]} on {_desc(x)}")


def test_concat_of_only_empty_parts():
    """numpy gives an empty array when every part is empty along the axis."""
    xs = [np.zeros((2, 0), np.float32), np.zeros((2, 0), np.float32)]
    assert_same(ub.concat(xs, axis=1), np.concatenate(xs, axis=1), "concat of (2,0) and (2,0) on axis 1")
    assert_same(ub.concat([np.zeros((0,), np.int32)]), np.zeros((0,), np.int32), "concat of one (0,)")


def test_large_shape_ops_cross_threads_and_vector_tails():
    x = np.arange(4 * 173 * 39, dtype=np.float32).reshape(4, 173, 39)
    assert_same(ub.transpose(x, (2, 0, 1)), np.transpose(x, (2, 0, 1)), "transpose (4,173,39)")
    assert_same(ub.getitem(x, (slice(None, None, -1), slice(3, None, 5), Ellipsis)), x[::-1, 3::5, ...],
                "x[::-1, 3::5, ...] (4,173,39)")
    assert_same(ub.pad(x, ((1, 2), (0, 0), (30, 31)), mode="reflect"),
                np.pad(x, ((1, 2), (0, 0), (30, 31)), mode="reflect"), "reflect pad (4,173,39)")
    assert_same(ub.concat([x, x[:, :5]], axis=1), np.concatenate([x, x[:, :5]], axis=1), "concat (4,173,39)")
