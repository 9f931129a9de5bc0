#!/usr/bin/env bash
# benchmarks/gpu_train_throughput.py on the project's GPU machine (H200), as one prepared command.
#
# That machine has JAX but neither TensorFlow nor Keras, and cannot download: Keras travels as wheels.
#   here, once:  bash benchmarks/gpu_device.sh --fetch      # keras 3.15.1, namex, optree -> .whl/
#   there:       device run, command "bash benchmarks/gpu_device.sh", carry [".whl"], timeout_s 540
# Further arguments go to both benchmark commands (e.g. --steps 10).
# S first (the issue's targets: >= 3,000 training img/s at 300 px, >= 6,000 inference img/s at
# 384 px), then M and L while time is left. Everything printed is also written to $OUT/gpu.txt, so
# a run stopped at its limit still returns what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        keras==3.15.1 namex==0.1.0 optree==0.20.0
fi

OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    timeout 300 python3 benchmarks/gpu_train_throughput.py --variants s --start_batch 64 "$@"
    timeout 200 python3 benchmarks/gpu_train_throughput.py --variants m,l --start_batch 32 "$@"
} 2>&1 | tee "$OUT/gpu.txt"
