"""Conformance of the ONNX-style indexing ops (ir/ops_index.py) with numpy: gather,
gather_elements, cumsum, topk, tile, trilu, depth_to_space, space_to_depth, on
hypothesis-drawn shapes, dtypes, axes and values, plus their error paths.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import ubique as ub
from strategies import ALL_DTYPES, NUMERIC_DTYPES, arrays, dtypes, is_float, shapes
from tolerances import BF16, assert_close, assert_same, dtype_name
from ubique.errors import DTypeError, ShapeError, VerifyError
from ubique.ir.graph import Graph, TensorType


def _graph(op, arrs, **attrs):
    g = Graph(op)
    ins = [g.add_input(TensorType(a.shape, dtype_name(a.dtype)), f"x{k}") for k, a in enumerate(arrs)]
    g.outputs = g.add_node(op, ins, attrs).outputs
    return g


def _run(op, *arrs, **attrs):
    """Outputs of a one-node graph of `op` run on `arrs`."""
    return ub.build(_graph(op, arrs, **attrs)).run(*arrs)


def _types(op, *types, **attrs):
    g = Graph(op)
    ins = [g.add_input(TensorType(s, d), f"x{k}") for k, (s, d) in enumerate(types)]
    return [v.type for v in g.add_node(op, ins, attrs).outputs]


def _desc(x):
    return f"{dtype_name(x.dtype)}{tuple(x.shape)}"


def _data(data, min_dims=1, max_dims=3, dtypes_=ALL_DTYPES, **kw):
    dt = data.draw(dtypes(dtypes_), "dtype")
    shape = data.draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=4), "shape")
    return data.draw(arrays(dt, shape, **kw), "x")


def _indices(data, shape, n, label="indices"):
    """int32/int64 indices in [-n, n-1] (negative ones count from the end)."""
    dt = data.draw(st.sampled_from(["int32", "int64"]), label + " dtype")
    return data.draw(arrays(dt, shape, lo=-n, hi=n - 1), label)


# -- gather ------------------------------------------------------------------------------------
@given(data=st.data())
def test_gather_matches_take(data):
    x = _data(data)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1), "axis")
    n = x.shape[axis]
    ishape = data.draw(shapes(min_dims=0, max_dims=2, max_side=3), "indices shape")
    if n == 0:  # nothing to gather from: only empty indices are valid
        ishape = ishape + (0,)
    ind = _indices(data, ishape, max(n, 1))
    expected = np.take(x, ind, axis=axis)
    assert_same(_run("gather", x, ind, axis=axis)[0], expected, f"gather({_desc(x)}, {_desc(ind)}, axis={axis})")


def test_gather_clamps_out_of_range_indices():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ind = np.array([[-100, -5, -4, 3, 4, 100]], np.int64)
    out = _run("gather", x, ind, axis=1)[0]
    assert_same(out, np.take(x, [[0, 0, 0, 3, 3, 3]], axis=1), "clamped gather")


def test_gather_keeps_symbolic_dims_and_runs_on_them():
    g = Graph("sym")
    x = g.add_input(TensorType(("N", 4), "float32"), "x")
    i = g.add_input(TensorType((2, 3), "int32"), "i")
    y = g.op("gather", x, i, axis=1)
    assert y.type == TensorType(("N", 2, 3), "float32")
    g.outputs = [y]
    xv = np.arange(20, dtype=np.float32).reshape(5, 4)
    iv = np.array([[0, -1, 2], [3, 1, -4]], np.int32)
    assert_same(ub.build(g).run(xv, iv)[0], np.take(xv, iv, axis=1), "gather on N=5")
    # a symbolic gathered axis is read behind a run-time check, still correct
    g2 = Graph("sym2")
    x2 = g2.add_input(TensorType(("N", 4), "float32"), "x")
    i2 = g2.add_input(TensorType((3,), "int64"), "i")
    g2.outputs = [g2.op("gather", x2, i2, axis=0)]
    iv2 = np.array([4, -5, 2], np.int64)
    assert_same(ub.build(g2).run(xv, iv2)[0], np.take(xv, iv2, axis=0), "gather axis N")


# -- gather_elements ---------------------------------------------------------------------------
@given(data=st.data())
def test_gather_elements_matches_take_along_axis(data):
    x = _data(data)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1), "axis")
    a = axis % x.ndim
    n = x.shape[a]
    # off the axis, indices may be smaller than data; along it any size (0 when data is empty there)
    ishape = tuple((data.draw(st.integers(0, 3), "axis size") if n else 0) if k == a
                   else data.draw(st.integers(0, d), f"size {k}") for k, d in enumerate(x.shape))
    ind = _indices(data, ishape, max(n, 1))
    part = x[tuple(slice(None) if k == a else slice(0, s) for k, s in enumerate(ishape))]
    expected = np.take_along_axis(part, ind, axis=a)
    assert_same(_run("gather_elements", x, ind, axis=axis)[0], expected,
                f"gather_elements({_desc(x)}, {_desc(ind)}, axis={axis})")


def test_gather_elements_clamps_out_of_range_indices():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    ind = np.array([[9, -9, -1], [-3, 3, 0]], np.int32)
    assert_same(_run("gather_elements", x, ind, axis=1)[0], np.array([[2, 0, 2], [3, 5, 3]], np.int32),
                "clamped gather_elements")


# -- cumsum ------------------------------------------------------------------------------------
def _cumsum_ref(x, axis, exclusive, reverse):
    """(reference in the input dtype, the float64 sums it rounds; None for integers)."""
    acc = np.float64 if is_float(dtype_name(x.dtype)) else x.dtype
    y = np.moveaxis(x, axis, -1)
    y = y[..., ::-1] if reverse else y
    c = np.cumsum(y.astype(acc), axis=-1, dtype=acc)
    if exclusive:  # shift by one along the axis, zero first
        n = c.shape[-1]
        c = np.concatenate([np.zeros(c.shape[:-1] + (1,), acc), c[..., :-1]], axis=-1)[..., :n]
    c = np.moveaxis(c[..., ::-1] if reverse else c, -1, axis)
    return c.astype(x.dtype), (c if acc is np.float64 else None)


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@given(data=st.data())
def test_cumsum_matches_numpy(exclusive, reverse, data):
    x = _data(data, dtypes_=NUMERIC_DTYPES, lo=-100, hi=100)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1), "axis")
    expected, _ = _cumsum_ref(x, axis, exclusive, reverse)
    msg = f"cumsum({_desc(x)}, axis={axis}, exclusive={exclusive}, reverse={reverse})"
    out = _run("cumsum", x, axis=axis, exclusive=exclusive, reverse=reverse)[0]
    if is_float(dtype_name(x.dtype)):
        _, scale = _cumsum_ref(np.abs(x.astype(np.float64)), axis, exclusive, reverse)
        assert_close(out, expected, n=x.shape[axis], scale=scale, msg=msg)
    else:
        assert_same(out, expected, msg)  # integers wrap in the input dtype, as numpy's dtype=x.dtype


# -- topk --------------------------------------------------------------------------------------
def _topk_ref(x, k, axis, largest):
    """Sorted by value (NaN greatest, numpy's order), equal values by index; largest first or not."""
    key = x.astype(np.float32) if x.dtype == BF16 else x
    if largest:  # sort the reversed axis ascending, read backwards: equal values keep index order
        n = x.shape[axis]
        order = n - 1 - np.flip(np.argsort(np.flip(key, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(key, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return np.take_along_axis(x, idx, axis=axis), idx


@given(data=st.data())
def test_topk_matches_stable_argsort(data):
    # few distinct values, so ties are common; floats include NaN, +-inf and +-0
    x = _data(data, dtypes_=NUMERIC_DTYPES, lo=0, hi=3, integral=True)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1), "axis")
    n = x.shape[axis]
    k = data.draw(st.sampled_from(sorted({0, 1, n // 2, n})) if n else st.just(0), "k")
    largest = data.draw(st.booleans(), "largest")
    srt = data.draw(st.booleans(), "sorted")
    values, indices = _run("topk", x, k=k, axis=axis, largest=largest, sorted=srt)
    ev, ei = _topk_ref(x, k, axis, largest)
    msg = f"topk({_desc(x)}, k={k}, axis={axis}, largest={largest})"
    assert_same(indices, ei, msg + " indices")
    assert_same(values, ev, msg + " values")


def test_topk_nan_ties_and_signed_zero_order():
    x = np.array([1.0, np.nan, -0.0, 3.0, np.nan, 0.0, 3.0, -np.inf], np.float32)
    v, i = _run("topk", x, k=8)
    np.testing.assert_array_equal(i, [1, 4, 3, 6, 0, 2, 5, 7])
    v, i = _run("topk", x, k=8, largest=False)
    np.testing.assert_array_equal(i, [7, 2, 5, 0, 3, 6, 1, 4])
    np.testing.assert_array_equal(i, np.argsort(x, kind="stable"))


def test_topk_larger_rows_after_a_fused_transpose():
    rng = np.random.default_rng(0)
    x = rng.integers(-20, 20, size=(53, 6)).astype(np.float64)
    g = Graph("topk_t")
    xi = g.add_input(TensorType(x.shape, "float64"), "x")
    g.outputs = g.add_node("topk", [g.op("transpose", xi)], {"k": 7}).outputs
    values, indices = ub.build(g).run(x)
    ev, ei = _topk_ref(x.T, 7, -1, True)
    assert_same(indices, ei, "topk indices of x.T")
    assert_same(values, ev, "topk values of x.T")


# -- tile --------------------------------------------------------------------------------------
@given(data=st.data())
def test_tile_matches_numpy(data):
    x = _data(data, min_dims=0)
    reps = tuple(data.draw(st.lists(st.integers(0, 3), min_size=x.ndim, max_size=x.ndim), "repeats"))
    assert_same(_run("tile", x, repeats=reps)[0], np.tile(x, reps) if reps else x.copy(),
                f"tile({_desc(x)}, {reps})")


# -- trilu -------------------------------------------------------------------------------------
@given(data=st.data())
def test_trilu_matches_triu_tril(data):
    x = _data(data, min_dims=2, max_dims=4)
    k = data.draw(st.integers(-5, 5), "k")
    upper = data.draw(st.booleans(), "upper")
    expected = np.triu(x, k) if upper else np.tril(x, k)
    assert_same(_run("trilu", x, upper=upper, k=k)[0], expected, f"trilu({_desc(x)}, upper={upper}, k={k})")


# -- depth_to_space / space_to_depth -----------------------------------------------------------
def _d2s_ref(x, b, mode):
    n, c, h, w = x.shape
    if mode == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


def _s2d_ref(x, b):
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)


@given(data=st.data())
def test_depth_to_space_and_back(data):
    b = data.draw(st.integers(1, 3), "blocksize")
    mode = data.draw(st.sampled_from(["DCR", "CRD"]), "mode")
    n, c, h, w = (data.draw(st.integers(lo, hi), name) for name, lo, hi in
                  [("n", 1, 2), ("c/b^2", 1, 3), ("h", 0, 3), ("w", 1, 3)])
    dt = data.draw(dtypes(ALL_DTYPES), "dtype")
    x = data.draw(arrays(dt, (n, c * b * b, h, w)), "x")
    y = _d2s_ref(x, b, mode)
    assert_same(_run("depth_to_space", x, blocksize=b, mode=mode)[0], y, f"depth_to_space({_desc(x)}, {b}, {mode})")
    assert_same(_run("space_to_depth", y, blocksize=b)[0], _s2d_ref(y, b), f"space_to_depth({_desc(y)}, {b})")
    if mode == "DCR":  # the two are inverses
        assert_same(_s2d_ref(y, b), x, "reference round trip")


# -- errors ------------------------------------------------------------------------------------
F32, I64 = "float32", "int64"


@pytest.mark.parametrize("op, types, attrs, error, match", [
    ("gather", [((3, 4), F32), ((2,), F32)], {}, DTypeError, "gather: indices must be int32 or int64"),
    ("gather", [((3, 4), F32), ((2,), "uint8")], {}, DTypeError, "gather"),
    ("gather", [((3, 4), F32), ((2,), I64)], {"axis": 2}, ShapeError, "gather: axis 2"),
    ("gather", [((), F32), ((2,), I64)], {}, ShapeError, "gather: the input must have rank >= 1"),
    ("gather", [((0, 4), F32), ((2,), I64)], {}, ShapeError, "gather: cannot gather from axis 0 of size 0"),
    ("gather", [((3, 4), F32), ((2,), I64)], {"axis": "1"}, VerifyError, "gather"),
    ("gather", [((3, 4), F32), ((2,), I64)], {"dim": 1}, VerifyError, "gather: unknown attribute"),
    ("gather_elements", [((3, 4), F32), ((3,), I64)], {}, ShapeError, "gather_elements: indices must have the rank"),
    ("gather_elements", [((3, 4), F32), ((2, 5), I64)], {}, ShapeError, "gather_elements: indices .* exceed data"),
    ("gather_elements", [((3, 4), F32), ((2, 4), "int8")], {}, DTypeError, "gather_elements"),
    ("gather_elements", [((3, 4), F32), ((2, 4), I64)], {"axis": -3}, ShapeError, "gather_elements: axis -3"),
    ("cumsum", [((3,), "bool")], {"axis": 0}, DTypeError, "cumsum: bool"),
    ("cumsum", [((3,), F32)], {"axis": 1}, ShapeError, "cumsum: axis 1"),
    ("cumsum", [((3,), F32)], {}, VerifyError, "cumsum: missing required attribute 'axis'"),
    ("cumsum", [((), F32)], {"axis": 0}, ShapeError, "cumsum: the input must have rank >= 1"),
    ("topk", [((3, 4), F32)], {"k": 5}, ShapeError, "topk: k=5 is larger"),
    ("topk", [((3, 4), F32)], {"k": -1}, VerifyError, "topk: k must be >= 0"),
    ("topk", [((3, 4), F32)], {"k": 1, "axis": 2}, ShapeError, "topk: axis 2"),
    ("topk", [((3, 4), "bool")], {"k": 1}, DTypeError, "topk: bool"),
    ("topk", [((3, 4), F32)], {}, VerifyError, "topk: missing required attribute 'k'"),
    ("tile", [((3, 4), F32)], {"repeats": (2,)}, ShapeError, "tile: repeats"),
    ("tile", [((3, 4), F32)], {"repeats": (2, -1)}, VerifyError, "tile: repeats must be >= 0"),
    ("tile", [(("N", 4), F32)], {"repeats": (2, 1)}, ShapeError, "tile: symbolic dimension 'N'"),
    ("trilu", [((4,), F32)], {}, ShapeError, "trilu: the input must have rank >= 2"),
    ("depth_to_space", [((1, 6, 2, 2), F32)], {"blocksize": 2}, ShapeError, "depth_to_space: channel count 6"),
    ("depth_to_space", [((1, 8, 2, 2), F32)], {"blocksize": 2, "mode": "XYZ"}, VerifyError, "depth_to_space: mode"),
    ("depth_to_space", [((1, 8, 2, 2), F32)], {"blocksize": 0}, VerifyError, "depth_to_space: blocksize"),
    ("depth_to_space", [((8, 2, 2), F32)], {"blocksize": 2}, ShapeError, "depth_to_space: the input must be NCHW"),
    ("depth_to_space", [((1, 8, "H", 2), F32)], {"blocksize": 2}, ShapeError, "depth_to_space: symbolic"),
    ("space_to_depth", [((1, 2, 3, 4), F32)], {"blocksize": 2}, ShapeError, "space_to_depth: height 3"),
    ("space_to_depth", [((1, 2, 4, 5), F32)], {"blocksize": 2}, ShapeError, "space_to_depth: width 5"),
    ("space_to_depth", [((1, 2, 4, 4), F32)], {}, VerifyError, "space_to_depth: missing required attribute"),
])
def test_bad_inputs_raise_typed_errors_naming_the_op(op, types, attrs, error, match):
    with pytest.raises(error, match=match):
        _types(op, *types, **attrs)


def test_symbolic_dims_pass_through_where_no_arithmetic_is_needed():
    assert _types("gather_elements", (("N", 5), F32), (("N", 2), I64), axis=1) == [TensorType(("N", 2), F32)]
    assert _types("cumsum", (("N", "M"), F32), axis=1) == [TensorType(("N", "M"), F32)]
    assert _types("topk", (("N", "M"), F32), k=3) == [TensorType(("N", 3), F32), TensorType(("N", 3), I64)]
    assert _types("tile", (("N", 2), F32), repeats=(1, 3)) == [TensorType(("N", 6), F32)]
    assert _types("trilu", (("B", "N", "M"), F32)) == [TensorType(("B", "N", "M"), F32)]
    assert _types("depth_to_space", (("N", 8, 2, 3), F32), blocksize=2) == [TensorType(("N", 2, 4, 6), F32)]
    assert _types("space_to_depth", (("N", "C", "H", "W"), F32), blocksize=1) == \
        [TensorType(("N", "C", "H", "W"), F32)]
    with pytest.raises(ShapeError, match="gather_elements: indices"):
        _types("gather_elements", (("N", 5), F32), (("M", 2), I64), axis=1)


def test_gather_ops_fused_with_neighbours_on_larger_shapes():
    """Vectorised, threaded loops with data-dependent loads, producers and consumers inlined."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 301)).astype(np.float32)
    ind = rng.integers(-301, 301, size=(5, 203)).astype(np.int32)
    ind2 = rng.integers(-37, 37, size=(37, 301)).astype(np.int64)
    g = Graph("fused")
    xv, iv, iv2 = (g.add_input(TensorType(a.shape, dtype_name(a.dtype)), n) for a, n in
                   [(x, "x"), (ind, "i"), (ind2, "j")])
    neg = g.op("neg", xv)
    g.outputs = [g.op("add", g.op("gather", neg, g.op("transpose", iv), axis=1), g.constant(np.float32(1))),
                 g.op("mul", g.op("gather_elements", neg, iv2, axis=0), g.constant(np.float32(2)))]
    out1, out2 = ub.build(g).run(x, ind, ind2)
    assert_same(out1, np.take(-x, ind.T, axis=1) + np.float32(1), "gather fused")
    assert_same(out2, np.take_along_axis(-x, ind2, axis=0) * np.float32(2), "gather_elements fused")
