"""The official ONNX node tests (shipped inside the `onnx` package) run through ubique's
ONNX backend, via onnx.backend.test.BackendTest.

Every node test of the op types ubique imports runs, except the cases listed with a
reason in compiler/onnx_frontend/conformance.py's EXCLUDED (see docs/onnx.md for the
current figure; `python scripts/onnx_conformance.py` recounts it).
"""
from __future__ import annotations

import re

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test")

from onnx.backend.test import BackendTest  # noqa: E402

from ubique.compiler.onnx_frontend import backend  # noqa: E402
from ubique.compiler.onnx_frontend.conformance import EXCLUDED, covered_tests, exclusion_reason  # noqa: E402

COVERED = covered_tests()
RUN = sorted(name for name in COVERED if exclusion_reason(name) is None)
REQUIRED_FRACTION = 0.70  # issue 3: at least 70% of the node tests of the imported op types pass

_suite = BackendTest(backend, __name__)
for _name in RUN:
    _suite.include(f"^{re.escape(_name)}_cpu$")
globals().update(_suite.test_cases)


def test_enough_of_the_official_node_tests_run():
    assert len(COVERED) > 500, "the onnx package ships fewer node tests than expected; is it installed fully?"
    assert len(RUN) / len(COVERED) >= REQUIRED_FRACTION, (len(RUN), len(COVERED))


def test_every_exclusion_is_specific_and_explained():
    for pattern, reason in EXCLUDED.items():
        assert len(reason) > 15, f"exclusion {pattern!r} needs a reason"
        assert any(re.fullmatch(pattern, name) for name in COVERED), f"exclusion {pattern!r} matches no test"
