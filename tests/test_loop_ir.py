"""Loop IR infrastructure: the printer, the verifier (loop_verify.verify_kernel) and the
schedule primitives of compiler/schedule.py, checked both on the printed structure and by
compiling and running the scheduled kernels (ModuleEmitter -> compile_llvm_ir -> link)."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

import ubique as ub
from ubique.codegen.cpu import compile_llvm_ir
from ubique.codegen.llvm_emit import ModuleEmitter
from ubique.compiler import schedule as S
from ubique.compiler.fusion import fuse as fuse_groups
from ubique.compiler.lower import lower_group
from ubique.compiler.passes import decompose
from ubique.ir import loop as L
from ubique.ir.dtypes import DType
from ubique.ir.loop_printer import print_kernel
from ubique.ir.loop_verify import verify_kernel
from ubique.runtime import native
from ubique.runtime.executable import link_program_object

F32, F64, I32, I64 = DType.float32, DType.float64, DType.int32, DType.int64


def c32(v):
    return L.Const(v, F32)


# ---------------------------------------------------------------------------------------------
# running a hand-built kernel
# ---------------------------------------------------------------------------------------------
class _Compiled:
    def __init__(self, dll, fn):
        self.dll, self.fn = dll, fn  # keep the library loaded while fn is used


def compile_kernel(kernel: L.Kernel, tmp_path) -> _Compiled:
    target = ub.targets.host_target()
    verify_kernel(kernel)
    mod = ModuleEmitter("t_" + kernel.name, target.vector_bits, target.triple)
    mod.add_kernel(kernel)
    code = compile_llvm_ir(str(mod.module), target)
    so = link_program_object(code.obj, tmp_path / f"{kernel.name}_{len(os.listdir(tmp_path))}.so")
    native.lib()
    dll = ctypes.CDLL(os.fspath(so), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    address = ctypes.cast(getattr(dll, kernel.name), ctypes.c_void_p).value
    return _Compiled(dll, native.entry_pointer(address))


def run_kernel(kernel: L.Kernel, arrays, tmp_path, dims=()):
    """Runs `kernel` on C-contiguous numpy arrays (in ABI order); outputs are written in place."""
    compiled = compile_kernel(kernel, tmp_path)
    for a, b in zip(arrays, kernel.params):
        assert a.flags.c_contiguous and a.dtype == b.dtype.to_numpy()
    args = native.make_pointer_array(len(arrays))
    for k, a in enumerate(arrays):
        args[k] = native.ffi.cast("void *", a.ctypes.data)
    dims_ptr = native.make_dims_array(dims) if dims else native.ffi.NULL
    native.call_entry(compiled.fn, args, dims_ptr, 0)


# A 2-D kernel whose result depends on every index in a position-dependent way:
# out[i, j] = a[i, j] * 2 + b[j] + f32(i * N + j)
M, N = 7, 13


def affine_kernel(m=M, n=N, name="affine"):
    a, b, out = L.Buffer("a", F32, [m, n]), L.Buffer("b", F32, [n]), L.Buffer("out", F32, [m, n])
    i, j = L.Var("i"), L.Var("j")
    body = L.For(i, m, L.For(j, n, L.Store(out, [i, j], a[i, j] * c32(2.0) + b[j] + L.cast(F32, i * n + j))))
    return L.Kernel(name, [a, b, out], [], body)


def affine_inputs(m=M, n=N):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    ref = a * np.float32(2) + b + np.arange(m * n, dtype=np.float32).reshape(m, n)
    return a, b, ref


def with_body(k: L.Kernel, body: L.Stmt) -> L.Kernel:
    return L.Kernel(k.name, k.params, k.dims, body)


def loops(s) -> list[tuple[str, str, str]]:
    """(var, extent text, kind) of every loop, outermost first."""
    from ubique.ir.loop_printer import print_expr

    return [(n.var.name, print_expr(n.extent), n.kind) for n in L.walk(s) if isinstance(n, L.For)]


# ---------------------------------------------------------------------------------------------
# printer
# ---------------------------------------------------------------------------------------------
def test_printer_exact_text():
    x, out = L.Buffer("x", F32, [L.Var("n"), 4]), L.Buffer("out", F64, [L.Var("n")])
    i, r, acc, t = L.Var("i"), L.Var("r"), L.Var("acc", F64), L.Var("t", F32)
    body = L.For(i, L.Var("n"), L.Alloc(acc, L.Const(0.0, F64), L.Seq([
        L.For(r, 4, L.Let(t, x[i, r], L.If(t.gt(c32(0.0)),
                                           L.Assign(acc, acc + L.cast(F64, t)),
                                           L.Assign(acc, acc - L.Const(1.0, F64)))), "unrolled"),
        L.Store(out, [i], L.select(acc.lt(L.Const(1e3, F64)), acc, L.call("sqrt", acc))),
    ])), "parallel")
    k = L.Kernel("demo", [x, out], [L.Var("n")], body)
    verify_kernel(k)
    assert print_kernel(k) == "\n".join([
        "kernel demo(x: f32[n, 4], out: f64[n]) dims(n) {",
        "  parallel for i in 0..n {",
        "    var acc: f64 = 0.0",
        "    unrolled for r in 0..4 {",
        "      let t: f32 = x[i, r]",
        "      if t > 0.0 {",
        "        acc = acc + f64(t)",
        "      } else {",
        "        acc = acc - 1.0",
        "      }",
        "    }",
        "    out[i] = select(acc < 1000.0, acc, sqrt(acc))",
        "  }",
        "}",
    ])


def test_printer_precedence_and_constants():
    i, j = L.Var("i"), L.Var("j")
    e = (i + j) * L.Const(3, I64) - i // (j % L.Const(2, I64))
    assert repr(e) == "(i + j) * 3 - i // (j % 2)"
    assert repr(L.Const(5, I32)) == "5:i32"
    assert repr(L.Const(True, DType.bool)) == "true"
    assert repr(L.Const(0.5, DType.float16)) == "0.5:f16"
    assert repr(L.binary("max", i, j)) == "max(i, j)"


def test_index_builders_fold_integer_constants():
    i = L.Var("i")
    assert L.binary("add", L.Const(2, I64), L.Const(3, I64)) == L.Const(5, I64)
    assert i * 1 == i and i + 0 == i and 0 + i == i
    assert (i * 0) == L.Const(0, I64)
    # float identities are not folded (x * 0 is not 0 for NaN)
    xf = L.Var("x", F32)
    assert isinstance(xf * c32(0.0), L.Binary)


# ---------------------------------------------------------------------------------------------
# verifier
# ---------------------------------------------------------------------------------------------
OUT1 = L.Buffer("out", F32, [4])
OUT2 = L.Buffer("out", F32, [4, 4])
IN1 = L.Buffer("inp", F32, [4])
i_, j_ = L.Var("i"), L.Var("j")
acc_ = L.Var("acc", F32)


def _k(body, params=(OUT1,), dims=()):
    return L.Kernel("bad", list(params), list(dims), body)


BAD_KERNELS = {
    "var-out-of-scope-in-index": (_k(L.For(i_, 4, L.Store(OUT1, [j_], c32(1.0)))),
                                  ["'j'", "outside its scope"]),
    "var-out-of-scope-after-loop": (_k(L.Seq([L.For(i_, 4, L.Store(OUT1, [i_], c32(1.0))),
                                              L.Store(OUT1, [i_], c32(1.0))])), ["'i'", "outside its scope"]),
    "var-out-of-scope-in-value": (_k(L.For(i_, 4, L.Store(OUT1, [i_], L.cast(F32, j_)))),
                                  ["'j'", "outside its scope"]),
    "var-out-of-scope-in-extent": (_k(L.For(i_, L.Var("m"), L.Store(OUT1, [i_], c32(1.0)))),
                                   ["'m'", "outside its scope"]),
    "let-var-out-of-scope": (_k(L.Seq([L.For(i_, 4, L.Let(L.Var("t", F32), c32(1.0), L.Store(OUT1, [i_], c32(1.0)))),
                                       L.For(j_, 4, L.Store(OUT1, [j_], L.Var("t", F32)))])),
                             ["'t'", "outside its scope"]),
    "too-many-indices-store": (_k(L.For(i_, 4, L.Store(OUT1, [i_, i_], c32(1.0)))),
                               ["out", "rank 1", "2 indices"]),
    "too-few-indices-store": (_k(L.For(i_, 4, L.Store(OUT2, [i_], c32(1.0))), params=[OUT2]),
                              ["out", "rank 2", "1 indices"]),
    "wrong-index-count-load": (_k(L.For(i_, 4, L.Store(OUT1, [i_], L.Load(IN1, [i_, i_]))), params=[IN1, OUT1]),
                               ["inp", "rank 1", "2 indices"]),
    "store-dtype-mismatch": (_k(L.For(i_, 4, L.Store(OUT1, [i_], L.Const(1.0, F64)))),
                             ["store of a f64 value", "out (f32)"]),
    "binary-dtype-mismatch": (_k(L.For(i_, 4, L.Store(OUT1, [i_], L.Binary("add", c32(1.0), L.Const(1.0, F64))))),
                              ["add", "f32 and f64"]),
    "compare-dtype-mismatch": (_k(L.For(i_, 4, L.If(L.Compare("lt", i_, L.Const(2, I32)),
                                                     L.Store(OUT1, [i_], c32(1.0))))),
                               ["lt", "i64 and i32"]),
    "float-index": (_k(L.For(i_, 4, L.Store(OUT1, [L.cast(F32, i_)], c32(1.0)))),
                    ["index", "f32", "not an integer"]),
    "select-bad-condition": (_k(L.For(i_, 4, L.Store(OUT1, [i_], L.Select(c32(1.0), c32(1.0), c32(2.0))))),
                             ["select", "bool condition"]),
    "let-dtype-mismatch": (_k(L.For(i_, 4, L.Let(L.Var("t", F32), L.Const(1, I64), L.Store(OUT1, [i_], c32(1.0))))),
                           ["t is f32", "i64"]),
    "alloc-dtype-mismatch": (_k(L.For(i_, 4, L.Alloc(acc_, L.Const(0.0, F64), L.Store(OUT1, [i_], acc_)))),
                             ["acc is f32", "f64"]),
    "assign-dtype-mismatch": (_k(L.For(i_, 4, L.Alloc(acc_, c32(0.0), L.Seq([
        L.Assign(acc_, L.Const(1.0, F64)), L.Store(OUT1, [i_], acc_)])))), ["acc is f32", "assigned a f64"]),
    "assign-undeclared": (_k(L.For(i_, 4, L.Seq([L.Assign(acc_, c32(1.0)), L.Store(OUT1, [i_], c32(1.0))]))),
                          ["assignment to 'acc'", "not a local"]),
    "assign-to-let": (_k(L.For(i_, 4, L.Let(acc_, c32(0.0), L.Seq([L.Assign(acc_, c32(1.0)),
                                                                    L.Store(OUT1, [i_], acc_)])))),
                      ["assignment to 'acc'", "not a local"]),
    "assign-to-loop-var": (_k(L.For(i_, 4, L.Seq([L.Assign(i_, L.Const(0, I64)), L.Store(OUT1, [i_], c32(1.0))]))),
                           ["assignment to 'i'", "not a local"]),
    "assign-outside-alloc": (_k(L.Seq([L.For(i_, 4, L.Alloc(acc_, c32(0.0), L.Store(OUT1, [i_], acc_))),
                                       L.Assign(acc_, c32(1.0))])), ["assignment to 'acc'", "not a local"]),
    "parallel-in-vectorized": (_k(L.For(i_, 4, L.For(j_, 4, L.Store(OUT2, [i_, j_], c32(1.0)), "parallel"),
                                        "vectorized"), params=[OUT2]),
                               ["parallel loop j", "nested"]),
    "parallel-in-parallel": (_k(L.For(i_, 4, L.For(j_, 4, L.Store(OUT2, [i_, j_], c32(1.0)), "parallel"),
                                      "parallel"), params=[OUT2]),
                             ["parallel loop j", "nested"]),
    "parallel-deep-in-vectorized": (_k(L.For(i_, 4, L.For(L.Var("k"), 1, L.For(j_, 4, L.Store(
        OUT2, [i_, j_], c32(1.0)), "parallel")), "vectorized"), params=[OUT2]), ["parallel loop j", "nested"]),
    "shadowed-loop-var": (_k(L.For(i_, 4, L.For(i_, 4, L.Store(OUT2, [i_, i_], c32(1.0)))), params=[OUT2]),
                          ["'i'", "shadows"]),
    "loop-var-shadows-dim": (_k(L.For(L.Var("n"), 4, L.Store(OUT1, [L.Var("n")], c32(1.0))), dims=[L.Var("n")]),
                             ["'n'", "shadows"]),
    "unknown-buffer": (_k(L.For(i_, 4, L.Store(OUT1, [i_], L.Buffer("ghost", F32, [4])[i_]))),
                       ["'ghost'", "not a parameter"]),
    "buffer-shape-differs-from-param": (_k(L.For(i_, 4, L.Store(OUT1, [i_], c32(1.0))),
                                           params=[L.Buffer("out", F32, [5])]), ["'out'", "not a parameter"]),
    "duplicate-param": (_k(L.For(i_, 4, L.Store(OUT1, [i_], c32(1.0))), params=[OUT1, OUT1]),
                        ["two parameters named 'out'"]),
    "unlowered-reduce": (_k(L.For(i_, 4, L.Store(OUT1, [i_], L.Reduce("sum", [(j_, 4)], c32(1.0))))),
                         ["Reduce", "lowered"]),
}


@pytest.mark.parametrize("case", sorted(BAD_KERNELS))
def test_verifier_rejects(case):
    kernel, fragments = BAD_KERNELS[case]
    with pytest.raises(ub.VerifyError) as ei:
        verify_kernel(kernel)
    msg = str(ei.value)
    assert msg.startswith("kernel bad: ")
    for f in fragments:
        assert f in msg, (f, msg)


def test_verifier_accepts_good_kernels():
    verify_kernel(affine_kernel())
    # vectorized inside parallel is fine; locals declared with var may be assigned
    good = _k(L.For(i_, 4, L.For(j_, 4, L.Alloc(acc_, c32(0.0), L.Seq([
        L.Assign(acc_, acc_ + c32(1.0)), L.Store(OUT2, [i_, j_], acc_)])), "vectorized"), "parallel"), params=[OUT2])
    verify_kernel(good)
    # symbolic dims are in scope everywhere
    n = L.Var("n")
    x = L.Buffer("x", F32, [n])
    verify_kernel(L.Kernel("sym", [x], [n], L.For(i_, n, L.Store(x, [i_], L.cast(F32, n - i_)))))


def _unscheduled_kernels(fn, *args):
    graph, _ = ub.jit(fn).trace(*args)
    g = decompose(graph)
    return [lower_group(grp, f"k{k}") for k, grp in enumerate(fuse_groups(g))]


def test_verifier_accepts_lowered_kernels():
    x = np.ones((5, 6), np.float32)
    for lk in _unscheduled_kernels(lambda a: ub.softmax(a @ a.T, axis=-1).argmax(axis=1), x):
        verify_kernel(lk.kernel)
        verify_kernel(S.default_schedule(lk.kernel, lk.output.type.rank, lk.work, 16, 2))


# ---------------------------------------------------------------------------------------------
# schedule primitives: structure
# ---------------------------------------------------------------------------------------------
def test_split_with_remainder_structure():
    k = affine_kernel()
    s = S.split(k.body, "j", 4)
    assert loops(s) == [("i", "7", "serial"), ("j_o", "4", "serial"), ("j_i", "min(4, 13 - j_o * 4)", "serial")]
    text = print_kernel(with_body(k, s))
    assert "out[i, j_o * 4 + j_i]" in text and "b[j_o * 4 + j_i]" in text
    verify_kernel(with_body(k, s))


def test_split_without_remainder_structure():
    k = affine_kernel(6, 12)
    s = S.split(k.body, "j", 4)
    assert loops(s) == [("i", "6", "serial"), ("j_o", "3", "serial"), ("j_i", "4", "serial")]
    s = S.split(k.body, "i", 6)
    assert loops(s) == [("i_o", "1", "serial"), ("i_i", "6", "serial"), ("j", "12", "serial")]


def test_split_symbolic_extent_structure():
    n = L.Var("n")
    x = L.Buffer("x", F32, [n])
    k = L.Kernel("sym", [x], [n], L.For(i_, n, L.Store(x, [i_], c32(1.0)), "vectorized"))
    s = S.split(k.body, "i", 8)
    # the kind moves to the inner loop; the outer one is serial
    assert loops(s) == [("i_o", "(n + 7) // 8", "serial"), ("i_i", "min(8, n - i_o * 8)", "vectorized")]
    verify_kernel(with_body(k, s))


def test_fuse_structure():
    k = affine_kernel()
    s = S.fuse(k.body, "i", "j")
    assert loops(s) == [("i_j", "91", "serial")]
    assert "out[i_j // 13, i_j % 13]" in print_kernel(with_body(k, s))


def test_reorder_structure():
    k = affine_kernel()
    s = S.reorder(S.parallel(k.body, "i"), "i", "j")
    assert loops(s) == [("j", "13", "serial"), ("i", "7", "parallel")]


@pytest.mark.parametrize("prim,kind", [(S.vectorize, "vectorized"), (S.parallel, "parallel"), (S.unroll, "unrolled")])
def test_set_kind_structure(prim, kind):
    k = affine_kernel()
    s = prim(k.body, "j")
    assert loops(s) == [("i", "7", "serial"), ("j", "13", kind)]
    assert f"{kind} for j in 0..13" in print_kernel(with_body(k, s))
    assert loops(k.body)[1][2] == "serial"  # primitives return new trees, never mutate


def test_schedule_errors():
    k = affine_kernel()
    with pytest.raises(ub.VerifyError, match="no loop named 'zz'"):
        S.split(k.body, "zz", 2)
    with pytest.raises(ub.VerifyError, match="fuse needs 'i' directly inside 'j'"):
        S.fuse(k.body, "j", "i")
    with pytest.raises(ub.VerifyError, match="reorder needs"):
        S.reorder(k.body, "j", "i")


def _triangle():
    t = L.Buffer("t", F32, [8, 8])
    return L.Kernel("tri", [t], [], L.For(i_, 8, L.For(j_, i_ + 1, L.Store(t, [i_, j_], c32(1.0)))))


def test_reorder_refuses_dependent_extent():
    with pytest.raises(ub.VerifyError, match="depends on 'i'"):
        S.reorder(_triangle().body, "i", "j")


def test_fuse_refuses_dependent_extent():
    """Fusing i with a j whose extent depends on i has no product space: fuse must refuse it
    (as reorder does), not return a loop `for i_j in 0..8 * (i + 1)` that uses i out of scope."""
    k = _triangle()
    with pytest.raises(ub.VerifyError, match="'i'"):
        S.fuse(k.body, "i", "j")


@pytest.mark.parametrize("factor", [0, -4])
def test_split_refuses_non_positive_factor(factor):
    k = affine_kernel()
    with pytest.raises(ub.UbiqueError, match=str(factor)):
        S.split(k.body, "j", factor)


# ---------------------------------------------------------------------------------------------
# schedule primitives: execution (results must be bitwise identical to the unscheduled kernel)
# ---------------------------------------------------------------------------------------------
SCHEDULES = {
    "none": lambda s: s,
    "split-j-4-remainder": lambda s: S.split(s, "j", 4),
    "split-j-13-exact": lambda s: S.split(s, "j", 13),
    "split-j-32-larger": lambda s: S.split(s, "j", 32),
    "split-i-3": lambda s: S.split(s, "i", 3),
    "split-i-7-exact": lambda s: S.split(s, "i", 7),
    "fuse": lambda s: S.fuse(s, "i", "j"),
    "reorder": lambda s: S.reorder(s, "i", "j"),
    "vectorize": lambda s: S.vectorize(s, "j"),
    "parallel": lambda s: S.parallel(s, "i"),
    "unroll": lambda s: S.unroll(s, "j"),
    "split-vectorize-inner": lambda s: S.vectorize(S.split(s, "j", 4), "j_i"),
    "split-parallel-outer-vectorize": lambda s: S.vectorize(S.parallel(S.split(s, "i", 2), "i_o"), "j"),
    "fuse-parallel": lambda s: S.parallel(S.fuse(s, "i", "j"), "i_j"),
    "fuse-vectorize": lambda s: S.vectorize(S.fuse(s, "i", "j"), "i_j"),
    "fuse-split-parallel-vectorize": lambda s: S.vectorize(S.parallel(S.split(S.fuse(s, "i", "j"), "i_j", 16),
                                                                      "i_j_o"), "i_j_i"),
    "reorder-vectorize-strided": lambda s: S.vectorize(S.reorder(s, "i", "j"), "i"),
    "split-reorder": lambda s: S.reorder(S.split(s, "j", 4), "i", "j_o"),
    "split-split": lambda s: S.split(S.split(s, "j", 8), "j_i", 3),
    "unroll-split-inner": lambda s: S.unroll(S.split(s, "j", 5), "j_i"),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_preserve_results(name, tmp_path):
    k = affine_kernel(name="affine_" + name.replace("-", "_"))
    scheduled = with_body(k, SCHEDULES[name](k.body))
    verify_kernel(scheduled)
    a, b, ref = affine_inputs()
    out = np.full((M, N), np.nan, np.float32)
    run_kernel(scheduled, [a, b, out], tmp_path)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("factor", [1, 5, 16])
def test_split_symbolic_extent_runs(factor, tmp_path):
    n = L.Var("n")
    x, y = L.Buffer("x", F32, [n]), L.Buffer("y", F32, [n])
    k = L.Kernel(f"sym{factor}", [x, y], [n], L.For(i_, n, L.Store(y, [i_], x[i_] * c32(3.0) + L.cast(F32, i_))))
    s = S.vectorize(S.split(k.body, "i", factor), "i_i")
    kk = with_body(k, s)
    compiled = compile_kernel(kk, tmp_path)
    for size in sorted({0, 1, factor - 1, factor, 3 * factor + 1, 100}):
        xs = np.arange(size, dtype=np.float32) - 7
        ys = np.full(size, np.nan, np.float32)
        args = native.make_pointer_array(2)
        args[0] = native.ffi.cast("void *", xs.ctypes.data)
        args[1] = native.ffi.cast("void *", ys.ctypes.data)
        native.call_entry(compiled.fn, args, native.make_dims_array([size]), 0)
        np.testing.assert_array_equal(ys, xs * np.float32(3) + np.arange(size, dtype=np.float32))


def test_schedule_a_lowered_reduction_kernel(tmp_path):
    """Take an unscheduled kernel from lowering (a matmul + bias), schedule its output and
    reduction loops by hand, and check it still computes the same values."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 11)).astype(np.float32)
    w = rng.standard_normal((11, 10)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    (lk,) = _unscheduled_kernels(lambda x, y, z: x @ y + z, a, w, b)
    kern = lk.kernel
    names = [n.var.name for n in L.walk(kern.body) if isinstance(n, L.For)]
    assert names[:2] == ["i0", "i1"] and len(names) == 3
    red = names[2]
    base_out = np.full((6, 10), np.nan, np.float32)
    run_kernel(with_body(kern, kern.body), [a, w, b, base_out], tmp_path)
    np.testing.assert_allclose(base_out, a @ w + b, rtol=1e-5, atol=1e-5)
    variants = {
        "split-reduction": S.split(kern.body, red, 4),
        "reorder-outputs": S.reorder(kern.body, "i0", "i1"),
        "fuse-outputs-parallel": S.parallel(S.fuse(kern.body, "i0", "i1"), "i0_i1"),
        "split-out-vectorize": S.vectorize(S.split(kern.body, "i1", 4), "i1_i"),
    }
    for vname, body in variants.items():
        kk = L.Kernel(f"{kern.name}_{vname.replace('-', '_')}", kern.params, kern.dims, body)
        out = np.full((6, 10), np.nan, np.float32)
        run_kernel(kk, [a, w, b, out], tmp_path)
        if vname == "split-reduction":  # same summation order -> same bits
            np.testing.assert_array_equal(out, base_out, err_msg=vname)
        else:
            np.testing.assert_allclose(out, base_out, rtol=1e-6, atol=1e-6, err_msg=vname)


def test_default_schedule_parallelises_big_kernels():
    big = _unscheduled_kernels(lambda x: ub.exp(x), np.ones((64, 1024), np.float32))[0]
    s = S.default_schedule(big.kernel, 2, big.work, 16, 4)
    kinds = [kind for _, _, kind in loops(s.body)]
    assert "parallel" in kinds and kinds[-1] == "vectorized"
    verify_kernel(s)
    small = _unscheduled_kernels(lambda x: ub.exp(x), np.ones((4, 8), np.float32))[0]
    s = S.default_schedule(small.kernel, 2, small.work, 16, 4)
    assert [kind for _, _, kind in loops(s.body)] == ["serial", "vectorized"]


# -- found in review ---------------------------------------------------------------------------
from ubique.errors import VerifyError  # noqa: E402
from ubique.ir.dtypes import DType  # noqa: E402


def _reduction_kernel():
    from ubique.ir import loop as L

    x = L.Buffer("x", DType.float32, [8, 100])
    out = L.Buffer("out", DType.float32, [8])
    i, r = L.Var("i0"), L.Var("r0")
    acc = L.Var("acc", DType.float32)
    body = L.For(i, 8, L.Alloc(acc, L.Const(0.0, DType.float32), L.Seq([
        L.For(r, 100, L.Assign(acc, acc + x[i, r])), L.Store(out, [i], acc)])))
    return L.Kernel("k", [x, out], [], body)


def test_vector_width_must_be_a_power_of_two():
    from ubique.compiler import schedule as S

    k = _reduction_kernel()
    with pytest.raises(VerifyError, match="power of two"):
        S.vectorize(k.body, "r0", 12)
    S.vectorize(k.body, "r0", 32)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 11])
def test_peel_of_a_symbolic_extent_covers_every_iteration(n, tmp_path):
    """peel over a loop whose extent is a symbolic size: main blocks plus an n % f tail."""
    from ubique.compiler import schedule as S
    from ubique.ir import loop as L

    x = L.Buffer("x", DType.float32, [L.Var("n")])
    out = L.Buffer("out", DType.float32, [L.Var("n")])
    i = L.Var("i0")
    body = S.peel(L.For(i, L.Var("n"), L.Store(out, [i], x[i] * 2.0)), "i0", 4)
    kernel = L.Kernel("k", [x, out], [L.Var("n")], body)
    xs = np.arange(n, dtype=np.float32) + 1
    res = np.full(n, -1, np.float32)
    run_kernel(kernel, [xs, res], tmp_path, dims=(n,))
    np.testing.assert_array_equal(res, xs * 2)


def test_verifier_rejects_non_reduction_assign_in_vectorized_loop():
    from ubique.ir import loop as L
    from ubique.ir.loop_verify import verify_kernel

    k = _reduction_kernel()
    acc = L.Var("acc", DType.float32)
    x = k.params[0]
    bad_body = L.For(L.Var("i0"), 8, L.Alloc(acc, L.Const(0.0, DType.float32), L.Seq([
        L.For(L.Var("r0"), 100, L.Assign(acc, x[L.Var("i0"), L.Var("r0")]), "vectorized"),
        L.Store(k.params[1], [L.Var("i0")], acc)])))
    with pytest.raises(VerifyError, match="declared outside vectorized loop"):
        verify_kernel(L.Kernel("k", k.params, [], bad_body))
    racy = L.Alloc(acc, L.Const(0.0, DType.float32), L.Seq([
        L.For(L.Var("i0"), 8, L.For(L.Var("r0"), 100, L.Assign(acc, acc + x[L.Var("i0"), L.Var("r0")])),
              "parallel"),
        L.Store(k.params[1], [L.Const(0, L.I64)], acc)]))
    with pytest.raises(VerifyError, match="data race"):
        verify_kernel(L.Kernel("k", k.params, [], racy))
    good = L.Kernel("k", k.params, [], _reduction_kernel().body)
    from ubique.compiler import schedule as S
    verify_kernel(L.Kernel("k", k.params, [], S.vectorize(good.body, "r0", 32)))


@pytest.mark.parametrize("src, dst, n", [(I64, DType.uint8, 37), (I64, I32, 29), (I32, DType.int8, 61), (F64, F32, 13)])
def test_guarded_narrowing_store_stays_in_bounds(src, dst, n, tmp_path):
    """A guarded loop with a known trip count, as the GPU emulator runs (for t in 0..64: if
    t < n: out[t] = dst(x[t])): LLVM vectorises it with masked stores; with AVX-512 the last,
    one-lane store must write one element, not a whole source element (an LLVM 22 bug that
    codegen/llvm_workarounds.py steers around). Bytes after the output must stay as they were."""
    x, out = L.Buffer("x", src, [64]), L.Buffer("out", dst, [n])
    t = L.Var("t")
    body = L.For(t, 64, L.If(L.compare("lt", t, n), L.Store(out, [t], L.cast(dst, x[t]))))
    kernel = L.Kernel(f"narrow_{src.short}_{dst.short}", [x, out], [], body)
    xs = (np.arange(64) * 7 - 100).astype(src.to_numpy())
    canary = np.full(n * dst.itemsize + 64, 0xAB, np.uint8)  # the output, then 64 bytes that must not change
    run_kernel(kernel, [xs, canary[:n * dst.itemsize].view(dst.to_numpy())], tmp_path)
    np.testing.assert_array_equal(canary[:n * dst.itemsize].view(dst.to_numpy()), xs[:n].astype(dst.to_numpy()))
    assert (canary[n * dst.itemsize:] == 0xAB).all(), "the kernel wrote past its output"
