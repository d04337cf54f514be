"""Bad input gets a typed ubique error whose message names the argument and the expected and
actual values (and, for errors met while tracing, the user's file:line)."""
from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

import ubique as ub
from ubique.ir import Graph, TensorType

THIS_FILE = os.path.abspath(__file__)


def line_of(fn, marker: str) -> str:
    """'file:line' of the source line of `fn` containing `marker`."""
    lines, start = inspect.getsourcelines(fn)
    hits = [start + k for k, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, (marker, hits)
    return f"{THIS_FILE}:{hits[0]}"


def rand(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_error_hierarchy():
    for cls, builtin in [(ub.ShapeError, ValueError), (ub.DTypeError, TypeError),
                         (ub.UnsupportedOpError, NotImplementedError), (ub.TraceError, Exception),
                         (ub.VerifyError, Exception)]:
        assert issubclass(cls, ub.UbiqueError) and issubclass(cls, builtin)


# ---------------------------------------------------------------------------------------------
# re-specialisation and Executable.run input checks
# ---------------------------------------------------------------------------------------------
def test_jit_respecialises_on_new_shapes_and_dtypes():
    @ub.jit
    def f(x, y):
        return x * y + 1.0

    a, b = rand((2, 3)), rand((3,), seed=1)
    before = ub.cache_info()
    np.testing.assert_allclose(f(a, b), a * b + 1, rtol=1e-6)
    c, d = rand((4, 5, 6)), rand((6,), seed=2)
    np.testing.assert_allclose(f(c, d), c * d + 1, rtol=1e-6)            # new shapes: fine
    e = rand((4,), np.float64)
    out = f(e, e)
    assert out.dtype == np.float64                                        # new dtype: fine
    np.testing.assert_allclose(out, e * e + 1)
    mid = ub.cache_info()
    assert (mid["compiled"] + mid["disk_hits"]) - (before["compiled"] + before["disk_hits"]) == 3
    np.testing.assert_allclose(f(a, b), a * b + 1, rtol=1e-6)            # old shapes: no new build
    after = ub.cache_info()
    assert after["compiled"] == mid["compiled"] and after["disk_hits"] == mid["disk_hits"]
    assert after["memory_hits"] == mid["memory_hits"] + 1


def _two_input_executable():
    g = Graph("two")
    x = g.add_input(TensorType((2, 3), "f32"), "lhs")
    y = g.add_input(TensorType((3,), "i32"), "rhs")
    g.outputs = [g.op("add", x, g.op("cast", y, dtype="f32"))]
    return ub.build(g)


def test_run_wrong_shape_names_input_and_shapes():
    ex = _two_input_executable()
    with pytest.raises(ub.ShapeError) as ei:
        ex.run(rand((3, 2)), np.zeros(3, np.int32))
    msg = str(ei.value)
    assert "'lhs'" in msg and "(2, 3)" in msg and "(3, 2)" in msg
    with pytest.raises(ub.ShapeError) as ei:
        ex.run(rand((2, 3)), np.zeros((1, 3), np.int32))
    msg = str(ei.value)
    assert "'rhs'" in msg and "(3,)" in msg and "(1, 3)" in msg


def test_run_wrong_dtype_names_input_and_dtypes():
    ex = _two_input_executable()
    with pytest.raises(ub.DTypeError) as ei:
        ex.run(rand((2, 3), np.float64), np.zeros(3, np.int32))
    msg = str(ei.value)
    assert "'lhs'" in msg and "float32" in msg and "float64" in msg
    with pytest.raises(ub.DTypeError) as ei:
        ex.run(rand((2, 3)), np.zeros(3, np.int64))
    msg = str(ei.value)
    assert "'rhs'" in msg and "int32" in msg and "int64" in msg


@pytest.mark.parametrize("dtype", [np.complex64, np.uint16, np.float128 if hasattr(np, "float128") else object])
def test_run_unsupported_dtype_names_input(dtype):
    ex = _two_input_executable()
    with pytest.raises(ub.DTypeError) as ei:
        ex.run(np.zeros((2, 3), dtype), np.zeros(3, np.int32))
    msg = str(ei.value)
    assert "'lhs'" in msg and "float32" in msg and np.dtype(dtype).name in msg


@pytest.mark.parametrize("count", [0, 1, 3])
def test_run_wrong_input_count(count):
    ex = _two_input_executable()
    arrays = [rand((2, 3)), np.zeros(3, np.int32), rand((2, 3))][:count]
    with pytest.raises(ub.ShapeError) as ei:
        ex.run(*arrays)
    msg = str(ei.value)
    assert "expected 2 input(s)" in msg and f"got {count}" in msg and "lhs" in msg and "rhs" in msg


def test_run_accepts_non_contiguous_inputs():
    ex = _two_input_executable()
    x = rand((3, 2)).T
    assert not x.flags.c_contiguous
    r = np.arange(3, dtype=np.int32)
    np.testing.assert_array_equal(ex.run(x, r)[0], x + r.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# errors met while tracing name the user's line
# ---------------------------------------------------------------------------------------------
def test_matmul_shape_mismatch_names_user_line():
    def model(a, b):
        h = ub.relu(a)
        return h @ b  # <-- matmul here

    f = ub.jit(model)
    with pytest.raises(ub.ShapeError) as ei:
        f(rand((2, 3)), rand((4, 5)))
    msg = str(ei.value)
    assert line_of(model, "<-- matmul here") in msg
    assert "matmul" in msg and "(2, 3)" in msg and "(4, 5)" in msg


def test_shape_error_in_user_helper_names_innermost_user_line():
    def helper(x, y):
        return x + y  # <-- helper add

    def model(a, b):
        return helper(a, b) * 2.0

    with pytest.raises(ub.ShapeError) as ei:
        ub.jit(model)(rand((2, 3)), rand((4,)))
    msg = str(ei.value)
    assert line_of(helper, "<-- helper add") in msg and "(2, 3)" in msg and "(4,)" in msg


def test_reshape_error_names_user_line():
    def model(a):
        return a.reshape(7, 1)  # <-- reshape here

    with pytest.raises(ub.ShapeError) as ei:
        ub.jit(model)(rand((2, 3)))
    msg = str(ei.value)
    assert line_of(model, "<-- reshape here") in msg and "(2, 3)" in msg and "(7, 1)" in msg


def test_index_out_of_bounds_names_user_line():
    def model(a):
        return a[5]  # <-- index here

    with pytest.raises(ub.ShapeError) as ei:
        ub.jit(model)(rand((2, 3)))
    msg = str(ei.value)
    assert "5" in msg and "size 2" in msg
    assert line_of(model, "<-- index here") in msg


def test_data_dependent_if_names_user_line():
    def model(a):
        if a.sum() > 0:  # <-- data-dependent branch
            return a
        return -a

    with pytest.raises(ub.TraceError) as ei:
        ub.jit(model)(rand((2, 3)))
    msg = str(ei.value)
    assert line_of(model, "<-- data-dependent branch") in msg
    assert "ub.where" in msg


@pytest.mark.parametrize("kind", ["while", "float", "int", "item", "numpy", "range"])
def test_other_data_dependent_python_names_user_line(kind):
    def model(a):
        s = a.max()
        if kind == "while":
            while s > 0:  # <-- use
                s = s - 1.0
            return s
        if kind == "float":
            return a * float(s)  # <-- use
        if kind == "int":
            return a * int(s)  # <-- use
        if kind == "item":
            return a * s.item()  # <-- use
        if kind == "numpy":
            return np.asarray(s)  # <-- use
        return a[: range(3)[s]]  # <-- use

    lines, start = inspect.getsourcelines(model)
    wanted = {"while": "while s > 0", "float": "float(s)", "int": "int(s)", "item": "s.item()",
              "numpy": "np.asarray(s)", "range": "range(3)[s]"}[kind]
    line = next(start + k for k, text in enumerate(lines) if wanted in text)
    with pytest.raises(ub.TraceError) as ei:
        ub.jit(model)(rand((2, 3)))
    assert f"{THIS_FILE}:{line}" in str(ei.value)


def test_shape_dependent_python_is_fine():
    @ub.jit
    def f(a):
        if a.shape[0] > 2:
            return a * 2.0
        for _ in range(a.ndim):
            a = a + 1.0
        return a

    x = rand((2, 3))
    np.testing.assert_allclose(f(x), x + 2, rtol=1e-6)
    y = rand((5, 3))
    np.testing.assert_allclose(f(y), y * 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# unsupported dtypes, ops and return values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.complex64, np.uint16, np.int16, np.uint32, np.complex128])
def test_jit_unsupported_dtype_argument(dtype):
    @ub.jit
    def f(a, b):
        return a + b

    with pytest.raises(ub.DTypeError) as ei:
        f(rand((3,)), np.ones(3, dtype))
    msg = str(ei.value)
    assert "'b'" in msg and np.dtype(dtype).name in msg and "float32" in msg  # names the supported ones


@pytest.mark.parametrize("dtype", [np.complex64, np.uint16])
def test_unsupported_dtype_constant_in_trace(dtype):
    @ub.jit
    def f(a):
        return a + np.ones(3, dtype)

    with pytest.raises(ub.DTypeError, match=np.dtype(dtype).name):
        f(rand((3,)))


@pytest.mark.parametrize("dtype", [np.complex64, np.uint16])
def test_eager_unsupported_dtype(dtype):
    with pytest.raises(ub.DTypeError, match=np.dtype(dtype).name):
        ub.exp(np.ones(3, dtype))


def test_cast_to_unsupported_dtype():
    @ub.jit
    def f(a):
        return a.astype(np.complex64)

    with pytest.raises(ub.DTypeError, match="complex64"):
        f(rand((3,)))


@pytest.mark.parametrize("index", ["int-array", "list", "bool-mask", "tensor-arg"])
def test_advanced_indexing_is_unsupported(index):
    def model(a, i):
        if index == "int-array":
            return a[np.array([0, 1])]
        if index == "list":
            return a[[0, 1]]
        if index == "bool-mask":
            return a[a > 0]
        return a[i]

    with pytest.raises(ub.UnsupportedOpError) as ei:
        ub.jit(model)(rand((3, 4)), np.array([0, 2]))
    assert "advanced indexing" in str(ei.value)


@pytest.mark.parametrize("result,type_name", [("a string", "str"), (None, "NoneType"), ({"k": 1}, "dict"),
                                              (object(), "object")])
def test_returning_a_non_tensor_is_a_trace_error(result, type_name):
    @ub.jit
    def f(a):
        return result

    with pytest.raises(ub.TraceError) as ei:
        f(rand((3,)))
    msg = str(ei.value)
    assert type_name in msg and "tensor" in msg


def test_returning_a_tuple_with_a_non_tensor_is_a_trace_error():
    @ub.jit
    def f(a):
        return a + 1.0, "label"

    with pytest.raises(ub.TraceError, match="str"):
        f(rand((3,)))


def test_returning_python_numbers_and_arrays_is_fine():
    @ub.jit
    def f(a):
        return a * 2.0, 3.5, np.arange(3, dtype=np.int32)

    x = rand((3,))
    y, s, r = f(x)
    np.testing.assert_allclose(y, 2 * x)
    assert float(s) == 3.5
    np.testing.assert_array_equal(r, [0, 1, 2])


@pytest.mark.parametrize("bad,type_name", [([1, 2, 3], "list"), ("text", "str"), (None, "NoneType")])
def test_jit_argument_of_wrong_type_names_the_argument(bad, type_name):
    @ub.jit
    def f(a, weights):
        return a * weights

    with pytest.raises(ub.TraceError) as ei:
        f(rand((3,)), bad)
    msg = str(ei.value)
    assert type_name in msg
    assert "'weights'" in msg, f"the message does not say which argument is wrong: {msg}"


def test_unsupported_python_scalar_in_trace():
    @ub.jit
    def f(a):
        return a * (1 + 2j)

    with pytest.raises(ub.TraceError, match="complex"):
        f(rand((3,)))


def test_tensor_from_another_trace_is_refused():
    saved = []

    @ub.jit
    def keep(a):
        saved.append(a)
        return a + 1.0

    @ub.jit
    def use(a):
        return a + saved[0]

    keep(rand((3,)))
    with pytest.raises(ub.TraceError, match="another trace"):
        use(rand((3,)))


# -- found in review ---------------------------------------------------------------------------
def test_jit_static_floats_are_keyed_by_bits():
    f = ub.jit(lambda x, s: x / s)
    x = np.ones(4, np.float32)
    assert np.all(f(x, 0.0) == np.inf)
    assert np.all(f(x, -0.0) == -np.inf)
    n = len(f._cache)
    f(x, float("nan")), f(x, float("nan"))
    assert len(f._cache) == n + 1  # NaN is one specialisation, not one per call


def test_jit_refuses_keyword_only_parameters():
    @ub.jit
    def f(x, *, scale=2.0):
        return x * scale

    with pytest.raises(ub.TraceError, match="keyword-only"):
        f(np.ones(3, np.float32), scale=3.0)


def test_concurrent_first_calls_compile_once():
    import threading

    f = ub.jit(lambda x: ub.tanh(x) * 3.25 + 0.125)
    x = np.linspace(-1, 1, 1237).astype(np.float32)
    before = ub.cache_info()["compiled"] + ub.cache_info()["disk_hits"]
    results, errors = [], []

    def call():
        try:
            results.append(f(x))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ub.cache_info()["compiled"] + ub.cache_info()["disk_hits"] - before == 1
    for r in results:
        np.testing.assert_allclose(r, np.tanh(x) * 3.25 + 0.125, rtol=1e-6, atol=1e-6)
