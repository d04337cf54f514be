#!/usr/bin/env bash
# Installs ubique (editable) with what the demo needs and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python -m pip install --quiet --disable-pip-version-check -e '.[demo]'
exec python examples/demo.py
