#!/usr/bin/env bash
# Installs ubique with its test dependencies (editable) and runs the whole test suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k matmul
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# the example plug-ins (a C source backend, a RISC-V target): their tests and the
# conformance suite run them (tests/test_plugin_*.py, tests/test_conformance.py)
python -m pip install --quiet --disable-pip-version-check --no-deps \
    -e examples/plugins/ubique-c-backend -e examples/plugins/ubique-riscv
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec python -m pytest -q -p no:cacheprovider "$@"
