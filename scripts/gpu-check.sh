#!/usr/bin/env bash
# The GPU checks (issue 7), in one run, for a machine with an NVIDIA GPU and no network:
# installs ubique from this checkout without fetching anything, then runs tests/test_gpu.py
# (the op tests, the test models against onnxruntime, hand-written PTX against the generated
# kernel, device arrays, all on the GPU) and bench/gpu/bench_gpu.py (matmul 4096^3 and
# ResNet-18 batch 32 against PyTorch). Logs and the benchmark's JSON go to $OUT (or
# /tmp/ubique-gpu-check).
#
# Needs: python3 with numpy, llvmlite, networkx, cffi, onnx, onnxruntime, pytest,
# hypothesis and a CUDA build of torch; the CUDA toolkit's libdevice and ptxas; gcc. A
# package the machine lacks can travel as wheels in ./.whl (installed to /tmp/site first),
# e.g. for a Python 3.12 machine, from a machine with network:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl cffi pycparser
# Usage: bash scripts/gpu-check.sh [bench_gpu.py options]   (default --quick: matmul and ResNet-18)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ubique-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
(nvidia-smi -L; "$PY" -c "import llvmlite, numpy, torch; print('llvmlite', llvmlite.__version__, 'numpy',
numpy.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))") 2>&1 | tee "$OUT/machine.txt"
status=0
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log" || status=1
[ $# -eq 0 ] && set -- --quick
"$PY" bench/gpu/bench_gpu.py "$@" --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log" || status=1
exit $status
