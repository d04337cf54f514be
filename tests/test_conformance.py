"""The conformance kit for backend authors (ubique/testing/, `ubique conformance --target T`):
the generated suite passes on the host and (quick) on aarch64 under qemu; a deliberately broken
backend makes the affected op FAIL while the others pass; a backend that cannot compile an op
fails that op only (the combined graph is retried op by op); UnsupportedOpError reads as
"unsupported", a missing sample as "no sample"; every registry op is a row of the table; the
cases are deterministic; the comparison's rules; the command's exit status."""
from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

import ubique.testing as ut
from ubique.codegen.backend import register_backend
from ubique.codegen.cpu import LLVMCPUBackend
from ubique.errors import UnsupportedOpError
from ubique.ir import loop as L
from ubique.ir.registry import all_ops
from ubique.targets import get_target, host_target, register

AARCH64 = get_target("aarch64")
_missing = [tool for tool in ("qemu-aarch64", "aarch64-linux-gnu-gcc") if shutil.which(tool) is None]
needs_cross = pytest.mark.skipif(bool(_missing) and not AARCH64.runs_natively,
                                 reason=f"{' and '.join(_missing)} not installed (Debian: qemu-user, "
                                        "gcc-aarch64-linux-gnu)")


# -- test backends: host code with one deliberate defect each ---------------------------------------
class _FlipStores(L.Mutator):
    """Negates every float value a kernel stores."""

    def visit_Store(self, n):
        v = self.visit(n.value)
        return L.Store(n.buffer, [self.visit(i) for i in n.indices], -v if v.dtype.is_float else v)


def _named(kernel, op: str) -> bool:
    return op in kernel.name.split("_")  # kernel names: <module>_k<n>_<op>_<op>...


class FlipExpBackend(LLVMCPUBackend):
    """Computes `exp` with the wrong sign (a miscompiled kernel), everything else right."""
    name = "test-conformance-flip-exp"

    def schedule(self, kernel, hints, target):
        kernel = super().schedule(kernel, hints, target)
        return _FlipStores().visit(kernel) if _named(kernel, "exp") else kernel


class NoSigmoidBackend(LLVMCPUBackend):
    """Raises generating code for any module with a sigmoid kernel, aborts the process (as an
    LLVM fatal error does) for one with a sin kernel; says 'unsupported' for tanh."""
    name = "test-conformance-no-sigmoid"

    def schedule(self, kernel, hints, target):
        if _named(kernel, "tanh"):
            raise UnsupportedOpError("tanh is not implemented on this test backend")
        return super().schedule(kernel, hints, target)

    def generate(self, module, target):
        if any(_named(k, "sigmoid") for k in module.kernels):
            raise RuntimeError("this test backend cannot generate sigmoid")
        if any(_named(k, "sin") for k in module.kernels):
            os.write(2, b"LLVM ERROR: simulated fatal error in sin\n")
            os.abort()
        return super().generate(module, target)


def _test_target(name: str, backend) -> str:
    register_backend(backend, "tests/test_conformance.py")
    register(name, dataclasses.replace(host_target(), name=name, codegen=backend.name), "tests/test_conformance.py")
    return name


FLIP_EXP = _test_target("conformance-flip-exp", FlipExpBackend)
NO_SIGMOID = _test_target("conformance-no-sigmoid", NoSigmoidBackend)


# -- the suite on real targets --------------------------------------------------------------------
@pytest.fixture(scope="module")
def host_report():
    return ut.run_conformance("host")


def _builtin(report):
    """Rows of the built-in ops (other test modules may leave custom ops in the registry)."""
    return [r for r in report.rows if r.op in ut.SAMPLES]


def test_host_passes_every_op(host_report):
    """The host against itself: not a numerical check (the other targets' tests are) but of
    the kit: every registry op has a row, samples in every dtype it takes, and they compile and run."""
    report = host_report
    assert [r.op for r in report.rows] == list(all_ops())  # every registry op is a row, in order
    bad = [r for r in _builtin(report) if r.status != "pass"]
    assert not bad, report.table(bad)
    assert len(_builtin(report)) >= 110
    row = report["exp"]
    assert row.run == row.passed >= 8 and {"float32", "float64", "float16", "int32", "int8"} <= set(row.dtypes)
    assert report["cast"].run >= 8 * 8          # every source dtype to every target dtype
    table = report.table()
    for op in all_ops():
        assert f"\n{op} " in table
    if len(report.rows) == len(ut.SAMPLES):
        assert report.summary().startswith(f"{len(ut.SAMPLES)} ops passed, 0 failed, 0 not covered")


@needs_cross
def test_aarch64_quick_passes():
    report = ut.run_conformance("aarch64", ut.SAMPLES, quick=True)
    assert report.passed, report.table(report.failures())
    assert report.counts()["pass"] == len(ut.SAMPLES)
    assert report.target == "aarch64" and report.reference == host_target().name


def _plugin_target(name: str, dist: str, tools: tuple[str, ...]):
    from importlib import metadata

    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return pytest.param(name, marks=pytest.mark.skip(reason=f"plug-in {dist} not installed (scripts/test.sh "
                                                                 "installs it from examples/plugins)"))
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return pytest.param(name, marks=pytest.mark.skip(reason=f"{', '.join(missing)} not installed "
                                                                 "(scripts/install-system-deps.sh)"))
    return name


@pytest.mark.parametrize("target", [_plugin_target("c", "ubique-c-backend", ()),
                                    _plugin_target("riscv64", "ubique-riscv", ("qemu-riscv64", "riscv64-linux-gnu-gcc"))])
def test_the_example_plugins_pass_the_whole_suite(target, capsys):
    """What `ubique conformance --target c` and `--target riscv64` run: every op, full cases."""
    from ubique.cli import main

    assert main(["conformance", "--target", target]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert f"{len(ut.SAMPLES)} ops passed, 0 failed, 0 not covered on target {target}" in out


# -- defects are found and attributed to the right op --------------------------------------------
def test_a_miscompiled_op_fails_and_the_others_pass():
    report = ut.run_conformance(FLIP_EXP, ["exp", "add", "neg", "sum"], quick=True)
    assert not report.passed
    exp = report["exp"]
    assert exp.status == "FAIL" and exp.passed < exp.run
    assert "outside tolerance" in exp.message or "differ" in exp.message
    assert "exp(" in exp.message  # names the failing case (op, dtypes, shapes)
    for op in ("add", "neg", "sum"):
        assert report[op].status == "pass", report[op].row()
    assert [r.op for r in report.failures()] == ["exp"]
    assert "FAIL" in report.table() and "1 failed" in report.summary()


def test_check_op_raises_with_the_failing_rows():
    with pytest.raises(AssertionError) as info:
        ut.check_op("exp", FLIP_EXP, cases=1)
    text = str(info.value)
    assert "exp" in text and "FAIL" in text
    assert ut.check_op("add", FLIP_EXP, cases=1).passed


def test_a_crashing_compile_fails_its_op_only_and_unsupported_is_not_a_failure():
    report = ut.run_conformance(NO_SIGMOID, ["sigmoid", "add", "tanh", "sin", "relu"], quick=True, jobs=2)
    sig = report["sigmoid"]
    assert sig.status == "FAIL" and sig.passed == 0 and "cannot generate sigmoid" in sig.message
    sin = report["sin"]  # the compiling process died: only its op fails, with what it printed
    assert sin.status == "FAIL" and sin.run > 0 and sin.passed == 0
    assert "died" in sin.message and "simulated fatal error" in sin.message
    assert report["add"].status == report["relu"].status == "pass"
    tanh = report["tanh"]
    assert tanh.status == "unsupported" and tanh.run == 0 and tanh.unsupported > 0
    assert "not implemented" in tanh.message
    assert [r.op for r in report.failures()] == ["sigmoid", "sin"]
    assert "1 not covered" in report.summary()


def test_an_op_without_a_sample_is_listed(monkeypatch):
    monkeypatch.delitem(ut.SAMPLES, "topk_select")  # required attribute k: no generic sample
    report = ut.run_conformance("host", ["topk_select", "relu"], cases=1, jobs=1)
    row = report["topk_select"]
    assert row.status == "no sample" and "SAMPLES" in row.message
    assert report.passed and report.counts()["no sample"] == 1


def test_unknown_op_or_target():
    with pytest.raises(UnsupportedOpError, match="not_an_op"):
        ut.run_conformance("host", ["not_an_op"])
    with pytest.raises(UnsupportedOpError, match="no-such-target"):
        ut.run_conformance("no-such-target", ["add"])


# -- the command ------------------------------------------------------------------------------------
def test_cli(capsys):
    assert ut.cli_main(["--target", "host", "--ops", "add,exp", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "add " in out and "exp " in out and "2 ops passed, 0 failed, 0 not covered" in out
    assert ut.cli_main(["--target", FLIP_EXP, "--ops", "exp,add", "--cases", "1", "--failures-only"]) == 1
    out = capsys.readouterr().out
    assert "exp " in out and "\nadd " not in out and "1 ops passed, 1 failed" in out
    assert ut.cli_main(["--target", "host", "--ops", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


# -- cases and comparison -----------------------------------------------------------------------------
def test_cases_are_deterministic_and_independent_of_the_selection():
    ops = all_ops()
    a, _ = ut.make_cases("conv2d", ops["conv2d"], seed=3, cases=2)
    b, _ = ut.make_cases("conv2d", ops["conv2d"], seed=3, cases=2)
    c, _ = ut.make_cases("conv2d", ops["conv2d"], seed=4, cases=2)
    assert [x.dtype for x in a] == [x.dtype for x in b]
    for x, y in zip(a, b):
        assert x.attrs == y.attrs
        for u, v in zip(x.inputs, y.inputs):
            np.testing.assert_array_equal(getattr(u, "value", u), getattr(v, "value", v))
    assert any(not np.array_equal(getattr(u, "value", u), getattr(v, "value", v))
               for x, y in zip(a, c) for u, v in zip(x.inputs, y.inputs))
    # domains (besides the NaN/inf/+-0 of one case per float dtype): log of positive numbers,
    # acos within [-1, 1], gather indices in range
    log_cases = ut.make_cases("log", ops["log"])[0]
    assert any(c.specials for c in log_cases) and not all(c.specials for c in log_cases)
    for case in log_cases:
        x = case.inputs[0].astype(np.float64)
        assert (x[np.isfinite(x)] >= 0).all()
        assert case.specials or np.isfinite(x).all()
    for case in ut.make_cases("acos", ops["acos"])[0]:
        x = case.inputs[0].astype(np.float64)
        assert (np.abs(x[np.isfinite(x)]) <= 1).all()
    for case in ut.make_cases("gather", ops["gather"])[0]:
        data, ind = case.inputs
        n = data.shape[case.attrs["axis"]]
        assert ((ind >= -n) & (ind < n)).all()


def test_compare_rules():
    f = np.float32
    ok, *_ = ut.compare(np.array([1.0, np.nan], f), np.array([1.0 + 1e-6, np.nan], f))
    assert ok
    ok, _, _, _, msg = ut.compare(np.array([1.0, 2.0], f), np.array([1.0, np.nan], f))
    assert not ok and "NaN" in msg
    ok, _, _, _, msg = ut.compare(np.array([np.inf], f), np.array([-np.inf], f))
    assert not ok and "infinit" in msg
    assert not ut.compare(np.array([1.0], f), np.array([1.001], f))[0]
    assert ut.compare(np.array([1.0], f), np.array([1.0 + 3e-5], f), rtol_mult=4.0)[0]
    # ints and bools are exact; shapes and dtypes must match
    assert not ut.compare(np.array([3], np.int32), np.array([4], np.int32))[0]
    assert not ut.compare(np.zeros(3, f), np.zeros(3, np.float64))[0]
    assert not ut.compare(np.zeros(3, f), np.zeros((1, 3), f))[0]
    # data movement: exact, the sign of zeros too
    assert ut.compare(np.array([0.0], f), np.array([-0.0], f), "exact")[0]
    assert not ut.compare(np.array([0.0], f), np.array([-0.0], f), "exact", signed_zeros=True)[0]
    # accumulations: rtol also applies to the output's scale (a cancelled sum near 0)
    assert not ut.compare(np.array([1e-4, 50.0], f), np.array([1.2e-4, 50.0], f), "ew")[0]
    assert ut.compare(np.array([1e-4, 50.0], f), np.array([1.2e-4, 50.0], f), "acc")[0]
