"""Command line: `ubique conformance --target T`."""
from __future__ import annotations

import argparse
import sys

from ubique.errors import ToolchainError, UbiqueError

from .suite import run_conformance


def cli_main(argv: list[str] | None = None) -> int:
    """`ubique conformance --target T [--ops a,b] [--seed N] [--cases N] [--quick]`: prints the
    pass table and a summary; exit status 0 when no op failed, 1 when some did, 2 when the
    suite could not run (unknown target or op, missing toolchain)."""
    parser = argparse.ArgumentParser(
        prog="ubique conformance",
        description="Check every op of the registry on a target against the reference host backend.")
    parser.add_argument("--target", required=True, help="target to check (a registered name: ubique targets)")
    parser.add_argument("--ops", default=None, help="comma-separated op names (default: every registry op)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the cases (default 0)")
    parser.add_argument("--cases", type=int, default=3,
                        help="random cases per op in float32; every other dtype the op takes gets one (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one case per op in float32, float16, int32, int8 and bool each")
    parser.add_argument("--reference", default="host", help="reference target (default host)")
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="groups of cases checked at once in worker processes (default: the CPUs, at most 8)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers the target or its backend); repeatable")
    parser.add_argument("--failures-only", action="store_true", help="print only the rows that did not pass")
    parser.add_argument("-v", "--verbose", action="store_true", help="print progress and every failing case")
    args = parser.parse_args(argv)
    progress = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
    try:
        for module in args.imports:
            import importlib

            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 -- the user's module: report it, do not crash
                raise UbiqueError(f"--import {module}: importing it raised {type(e).__name__}: {e}") from e
        report = run_conformance(args.target, args.ops, args.seed, max(1, args.cases), args.reference,
                                 quick=args.quick, jobs=args.jobs, progress=progress)
    except (ToolchainError, UbiqueError) as e:
        print(f"ubique conformance: error: {e}", file=sys.stderr)
        return 2
    rows = [r for r in report.rows if r.status != "pass"] if args.failures_only else report.rows
    print(report.table(rows))
    if args.verbose:
        for r in report.failures():
            for c in r.cases:
                if c.status == "FAIL":
                    print(f"FAIL {c.case.label}: {c.case.describe()}\n    {c.message}")
    print(report.summary())
    return 0 if report.passed else 1
