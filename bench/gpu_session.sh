#!/usr/bin/env bash
# Every GPU check of issue #8 in one prepared run, for a lent GPU machine (the device tool):
# step throughput (CKD variants vs the plain spikingjelly baseline), trial packing, bf16-vs-fp32
# curves on Digits-DVS, step-time scaling over T x size, and a CUDA profile if time is left.
# Parts run most important first, each under its own time limit and all under one budget, so a
# slow part cannot lose the others; each table goes to $OUT/<part>.txt as it is produced.
#
#   here:  make gpu-wheels              (spikingjelly + loguru wheels into .whl/, the machine lacks them)
#   there: BUDGET=520 bash bench/gpu_session.sh   with .whl carried
set -u
OUT=${OUT:-runs/gpu}
BUDGET=${BUDGET:-520}  # seconds for all parts together
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# One Inductor/Triton cache for every part (packing's trials included): later compiles of the
# same graphs are cache hits, as in a search whose trials share a node-local cache.
CACHE=/tmp/ckd-cache
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$CACHE/inductor TRITON_CACHE_DIR=$CACHE/triton

part() {  # part NAME SECONDS COMMAND...: run unless the budget is spent; the limit shrinks to fit
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  if ((left < 20)); then
    echo "=== $name: skipped, budget spent" | tee "$OUT/$name.txt"
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "=== $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton, spikingjelly; print(sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"

part step 230 python3 bench/step_throughput.py \
  --variants base-bf16-compile,ckd-bf16-compile,ckd-bf16-graphs,base-bf16-compile-cl,ckd-bf16,base-fp32,ckd-fp32
part packing 100 python3 bench/packing.py --batch 32 --cache-dir $CACHE
part precision 80 python3 bench/precision.py --device cuda --epochs 6
part scaling 100 python3 bench/step_throughput.py --variants ckd-bf16 --scaling --batch 32 --steps 10 --warmup 3
part profile 60 python3 -m ckd_search.perf.profile_step --device cuda --rounds 2 \
  --set data.size=48 data.timesteps=10 model.width=1.0 optim.batch_size=120 run.precision=bf16

# The tables (and any traceback's last lines) at the end of the output, where the reply shows them.
for name in step packing precision scaling profile; do
  echo "##### $name"
  grep -E '^(\||#|device|ratio|best|note|bf16|row|===)|Error|error' "$OUT/$name.txt" | tail -60
done
