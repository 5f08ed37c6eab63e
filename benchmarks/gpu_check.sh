#!/usr/bin/env bash
# The GPU check on a lent GPU machine (README: Development). Here, first: make gpu-wheels.
# Then one device command: `bash benchmarks/gpu_check.sh [bench_gpu.py flags]`, carrying
# .gpu-wheels. Installs the carried wheels into /tmp/site (the image's python3 has torch,
# transformers 5.17, peft, accelerate; no registry), then runs benchmarks/bench_gpu.py with
# the tree's src/ on the path; the JSON table and the logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
W=.gpu-wheels
if ls $W/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --find-links $W --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site $W/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no $W/*.whl (make gpu-wheels, and carry $W): the image's packages only"
fi
export PYTHONPATH=$PWD/src:$PYTHONPATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip check 2>&1 | grep -iE 'trl|datasets|transformers|peft|bitsandbytes|deepspeed|pydantic'
python3 benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json" --log "$OUT/bench_gpu_rows.log" \
  --budget-s 420 "$@" 2>&1 | tee "$OUT/gpu_check.log"
