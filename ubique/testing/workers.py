"""Batching cases into groups and checking each group in a forked child process, several at
a time, so that a crashing compiler fails only its op."""
from __future__ import annotations

import math
import os
import sys
from typing import Iterable

from .cases import Case
from .report import CaseResult
from .runner import _describe_batch, _Runner, _split_cases


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
