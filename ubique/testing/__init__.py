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

Modules: samples (SAMPLES, Sample, Draw: making inputs per op), cases (Case, make_cases),
tolerances (TOLERANCES, compare), runner (combined graphs compiled and run per side, retries),
workers (batches, forked child processes), report (ConformanceReport, its rows and table),
suite (run_conformance, check_op), cli (`ubique conformance`).
"""
from __future__ import annotations

from .cases import Case, make_cases
from .cli import cli_main
from .dtypes import DTYPES
from .report import CaseResult, ConformanceReport, OpResult
from .runner import _graph  # noqa: F401 -- tests/test_gpu.py builds the combined graph
from .samples import SAMPLES, Draw, Fixed, Sample, sample_for
from .suite import check_op, op_names, run_conformance
from .tolerances import TOLERANCES, compare

__all__ = ["DTYPES", "TOLERANCES", "SAMPLES", "Sample", "Draw", "Fixed", "Case", "CaseResult", "OpResult",
           "ConformanceReport", "run_conformance", "check_op", "op_names", "make_cases", "sample_for", "compare",
           "cli_main"]
