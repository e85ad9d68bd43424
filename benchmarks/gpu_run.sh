#!/usr/bin/env bash
# Issue 25's GPU figures in one device call of at most 8 minutes: SOLOv2-R50 and SOLOv2-light-R18
# against torchvision Mask R-CNN R50-FPN, 800x1088, batch 8, bfloat16 (benchmarks/bench_gpu.py).
#
# The device call, from the checkout the session sends, after `/work/shared/tools/device-wheels`
# (or the pip download it does) has put keras, namex and optree wheels for Python 3.12 in .whl/:
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=480)
# Results come back in $OUT: bench_gpu.md (the table and the ratio against the goal),
# bench_gpu.json (every figure), bench_gpu.log (the whole output), env.txt (the GPU, versions).
# The run keeps to BENCH_GPU_DEADLINE_S (default 430 s, leaving the wheels' install and a
# margin under 480); parts that no longer fit are skipped and say so. Extra arguments go to
# bench_gpu.py (later ones win), e.g. `--configs solov2_r50` or `--parts train peer`.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/bench_gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
if ! python3 -c 'import keras' 2>/dev/null; then  # the GPU machine has no Keras: the carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "gpu_run: installing .whl/*.whl failed (was .whl carried?)" | tee "$out/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{
  date -u '+%F %T UTC'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
  python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda.*|keras|numpy|ml.dtypes|optree|torch|torchvision) ' || true
} | tee "$out/env.txt"
python3 benchmarks/bench_gpu.py --out "$out" --deadline-s "${BENCH_GPU_DEADLINE_S:-430}" "$@" 2>&1 | tee "$out/bench_gpu.log"
