"""Running cases: combined graphs, compiled and run once per side (the reference in this
process, the target under test in a child process), compared; a group that fails is
retried op by op, then case by case."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ubique.errors import UnsupportedOpError

from .cases import Case
from .report import CaseResult
from .tolerances import compare


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


def _describe_batch(batch: list[Case]) -> str:
    ops_in = list(dict.fromkeys(c.op for c in batch))
    if len(ops_in) == 1:
        return f"{len(batch)} case(s) of {ops_in[0]}"
    return f"{len(batch)} cases of {len(ops_in)} ops ({ops_in[0]} .. {ops_in[-1]})"


def _split_cases(cases: list[Case]) -> list[list[Case]]:
    """A failed group's parts: its ops, or (one op) its cases."""
    ops = list(dict.fromkeys(c.op for c in cases))
    return [[c for c in cases if c.op == op] for op in ops] if len(ops) > 1 else [[c] for c in cases]
