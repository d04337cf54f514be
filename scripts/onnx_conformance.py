"""Runs every official ONNX node test of the imported op types through ubique (no
exclusions) and prints pass counts per op type, plus the failures with their error.

    python scripts/onnx_conformance.py [--op Conv] [--failures]

Used to keep compiler/onnx_frontend/conformance.py's EXCLUDED list honest and to
report the figure in the README.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import warnings

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", action="append", help="only these op types")
    ap.add_argument("--failures", action="store_true", help="print each failure")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("UBIQUE_CACHE_DIR", tempfile.mkdtemp(prefix="ubique-conf-"))
    from onnx.backend.test.loader import load_model_tests
    from ubique.compiler.onnx_frontend import backend
    from ubique.compiler.onnx_frontend.conformance import covered_tests, exclusion_reason

    covered = covered_tests()
    cases = {t.name: t for t in load_model_tests(kind="node")}
    stats = collections.defaultdict(lambda: [0, 0, 0])  # passed, excluded-but-passing, total
    failures = []
    for name, op in sorted(covered.items()):
        if args.op and op not in args.op:
            continue
        t = cases[name]
        stats[op][2] += 1
        try:
            _run_case(backend, t)
            stats[op][0] += 1
            if exclusion_reason(name):
                stats[op][1] += 1
                failures.append((name, "PASSES but is excluded"))
        except Exception as e:  # noqa: BLE001 - a report of every failure
            failures.append((name, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
    passed = sum(s[0] for s in stats.values())
    total = sum(s[2] for s in stats.values())
    for op, (p, _, n) in sorted(stats.items()):
        print(f"{op:24s} {p:4d} / {n:4d}")
    print(f"{'total':24s} {passed:4d} / {total:4d}  ({100.0 * passed / max(total, 1):.1f}%)")
    if args.failures:
        for name, why in failures:
            print(f"FAIL {name}: {why}")
    return 0


def _run_case(backend, t):
    model = t.model
    rep = backend.prepare(model)
    data_sets = t.data_sets or []
    from onnx.helper import tensor_dtype_to_np_dtype

    types = [tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) if i.type.HasField("tensor_type") else None
             for i in model.graph.input]
    for inputs, outputs in data_sets:
        # (the loader keeps some data as TensorProtos; the official runner reads them typed)
        inputs, outputs = [_array(x) for x in inputs], [_array(x) for x in outputs]
        got = rep.run([np.asarray(x, dtype=t) if t is not None else x for x, t in zip(inputs, types)])
        _compare(outputs, got, t.rtol, t.atol)


def _array(x):
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x


def _compare(expected, got, rtol, atol):
    """The official runner's own comparison (dtype, shape, allclose)."""
    from onnx.backend.test.runner import Runner

    Runner.assert_similar_outputs(list(expected), list(got), rtol=rtol, atol=atol)


if __name__ == "__main__":
    sys.exit(main())
