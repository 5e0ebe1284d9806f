#!/usr/bin/env bash
# Every GPU check of issue #8 in one prepared run, for a lent GPU machine (the device tool):
# step throughput (all variants, CKD vs the plain spikingjelly baseline), bf16-vs-fp32 curves on
# Digits-DVS, trial packing, step-time scaling, and a CUDA profile. Each part has its own time limit
# so one slow part cannot lose the others; every table is also written to $OUT/<part>.txt.
#
#   here:  make gpu-wheels          (spikingjelly + loguru wheels into .whl/, the machine lacks them)
#   there: bash bench/gpu_session.sh   with .whl carried; about 9 minutes in all
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# one Inductor/Triton cache for every part: later compiles of the same graphs are cache hits
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ckd-inductor TRITON_CACHE_DIR=/tmp/ckd-triton

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, spikingjelly; print('torch', torch.__version__, 'spikingjelly ok')"
part step 240 python3 bench/step_throughput.py
part precision 90 python3 bench/precision.py --device cuda --epochs 6
part packing 120 python3 bench/packing.py --batch 32
part scaling 120 python3 bench/step_throughput.py --variants ckd-bf16 --scaling --steps 10
part profile 45 python3 -m ckd_search.perf.profile_step --device cuda
