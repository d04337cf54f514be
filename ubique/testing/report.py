"""Results: per-case results, the table's rows (OpResult) and the ConformanceReport with its
table and summary."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from .cases import Case


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
