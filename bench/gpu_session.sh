#!/usr/bin/env bash
# The GPU checks of issue #8 in one prepared run, for a lent GPU machine (the device tool).
# Parts run in the order PARTS names them, each under its own time limit and all under one budget,
# so a slow part cannot lose the others. A part is started only when at least 3/4 of its limit is
# left (a part cut short loses its compile time and tells nothing). Every part's output is appended,
# as produced, to $OUT/parts.txt: the device tool returns at most 8 files, so all parts share one.
# Cold-cache warm-ups measured on an H200 (bench/gpu-results.md): about 60 s per compiled variant,
# 10-50 s per eager one (Triton compiles each new T and layer shape once), so size PARTS to fit, or
# name prewarm first: it pays those compiles for every later part at once, in parallel.
#
#   here:  make gpu-wheels              (spikingjelly + loguru wheels into .whl/, the machine lacks them)
#   there: bash bench/gpu_session.sh   with .whl carried, kind nvidia-h200 (the card issue #8 names),
#          timeout 570 (the default PARTS and BUDGET)
#          then at once, on the still warm machine: BUDGET=150 PARTS="$SECOND" (below), timeout 175
#   A session's 900 s of device time hold one start (90-120 s), these two calls and their
#   transfers. Each call's part limits add up to at most its budget less 10 s (for the wheel
#   install and the header), and its last part may run 15 s past its limit before it is killed:
#   So each call's timeout is its budget plus 25 s.
#
# Parts:
#   prewarm    one untimed step (or a tiny whole trial) of every shape the parts after it time, in
#              parallel (below), <= 200 s
#   step       every default variant of bench/step_throughput.py at B=120, T=10, 48x48 (~300 s cold)
#   compiled   ckd-bf16-compile first (so its own priming, not the baseline's, builds the bf16 neuron
#              plans), then base-bf16-compile, fresh process: graph breaks and recompiles (cold: the
#              CKD variant alone warmed up for 148 s on an H100, graph breaks included)
#   bn         ckd-bf16 (per-step BatchNorm, the default since He et al. do it) vs ckd-bf16-jointbn
#              (spikingjelly's T*B statistics, what the H200 figures of session 3 were measured with),
#              eager (per-step cost 12.6 % of the step on an H100) and compiled
#   precision  bf16 vs fp32 loss/accuracy curves on Digits-DVS, 6 epochs each (~150 s; the seed noise
#              floor is measured on a CPU, bench/cpu-results.md)
#   graphs120  ckd-bf16-compile (per-step BatchNorm), -compile-jointbn and -graphs at B=120, T=10, 48x48
#   headline   the issue's claim in one process at B=120, T=10, 48x48: the CKD rows of graphs120 with
#              the engine's batch source (gather + augmentation) inside the timed step (--source),
#              against both compiled plain steps, NCHW (the issue's baseline) and channels_last (so
#              the ratio is not flattered by a layout the baseline could use too)
#   graphs-trial  one whole 3-epoch trial (engine.fit: eval, checkpoints) at B=32, T=10, 48x48,
#              full width, under CUDA graphs, then compiled without (bench/packing.py --trials 1); the
#              exit status is the worse of the two
#   small      ckd-bf16 vs ckd-bf16-compile vs ckd-bf16-graphs at B=32 (launch-bound: where CUDA
#              graphs should pay; the compile row separates their gain from the compiler's)
#   packing    1, 2, 3 packed trials at B=32, full width (one trial already fills the GPU)
#   packing-digits  the same at the Digits-DVS demo shape (width 1/8, 32x32, T=6, B=64), 2 windows
#              per level (median and range: one 30-step window varies by ~10 %)
#   packing-digits-trials  the same shape, whole 5-epoch trials (engine.fit with eval and checkpoints)
#   packing-digits-mps  packing-digits again under an MPS daemon of the bench's own (--mps)
#   packing-mps     packing again under an MPS daemon of the bench's own
#   scaling    ckd-bf16 at B=32 over T in (4,6,8,10) x size in (48,128) (~40 s a cell cold; 5 timed
#              steps after 2 warm-up: the cells' cost is the cold Triton compiles)
#   profile    phase split of the engine step at B=120, T=10, 48x48, bf16
set -u
OUT=${OUT:-runs/gpu}
BUDGET=${BUDGET:-545}  # seconds for all parts together
# After the H200 run of 2026-11-28 (bench/gpu-results.md: one graph, no breaks; 1,979 pairs/s with
# per-step BatchNorm, 2,170 with joint; CUDA graphs 2.29x the compiled step at B=32), and a review
# of how honest those figures are: the headline step with its augmentation inside the clock, against
# the channels_last plain step too (never measured cleanly); whether the one-reduction per-step
# BatchNorm (since 14a2b92) or CUDA graphs reach 2,000 pairs/s there; packing on an H200 with two
# windows per level (2.97x was one window on an H100). Whole trials under CUDA graphs (graphs-trial)
# no longer fit beside them: a later session's. The limits assume prewarm ran (warm caches); what
# the budget cuts off is named "skipped", so the least needed part goes last. MPS parts come last (an MPS daemon may not start
# inside the device's sandbox).
PARTS=${PARTS:-prewarm headline packing-digits}
SECOND="packing-digits-trials"  # the second call (limit 140 s), warmed by the first call's prewarm
mkdir -p "$OUT"
LOG=$OUT/parts.txt
rm -f /tmp/part-*.txt /tmp/prewarm-*.txt  # an earlier call's, on a still warm machine
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "wheel install failed: every part needs spikingjelly" | tee "$OUT/gpu.txt"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import spikingjelly" 2>/dev/null ||
  { echo "no spikingjelly: carry .whl (make gpu-wheels here); every part needs it" | tee "$OUT/gpu.txt"; exit 1; }
# One Inductor/Triton cache for every part (packing's trials included): later compiles of the
# same graphs are cache hits, as in a search whose trials share a node-local cache.
CACHE=/tmp/ckd-cache
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$CACHE/inductor TRITON_CACHE_DIR=$CACHE/triton
STEP="python3 bench/step_throughput.py"
PACK="python3 bench/packing.py --device cuda:0 --cache-dir $CACHE"
DIGITS="--batch 64 --timesteps 6 --size 32 --width 0.125 --classes 10"
# graphs-trial: N-Caltech101's split sizes, so compiling again inside fit is a small share of the trial
FULL32="--batch 32 --timesteps 10 --size 48 --width 1 --classes 101"
TRIAL="$FULL32 --trials 1 --epochs 3 --train-samples 6970 --test-samples 1739"
# prewarm's whole trials: the train step, and evaluation at the full batch and at the remainder
# (1739 = 54 * 32 + 11; 360 = 5 * 64 + 40), since Triton autotunes each shape and Inductor compiles it
TINY32="$FULL32 --trials 1 --epochs 1 --warmup 1 --train-samples 64 --test-samples 43"
TINY_DIGITS="$DIGITS --trials 1 --epochs 1 --warmup 1 --train-samples 64 --test-samples 104"

stop_mps() {  # the bench quits its MPS daemon itself; this also covers a run killed with SIGKILL
  if command -v nvidia-cuda-mps-control >/dev/null; then
    echo quit | CUDA_MPS_PIPE_DIRECTORY=$CACHE/mps-pipe timeout 20 nvidia-cuda-mps-control >/dev/null 2>&1
  fi
  return 0
}

# prewarm: one untimed step (or a tiny whole trial) of every shape the later parts time, in parallel
# processes, so that their cold compiles (Inductor graphs; spikingjelly's autotuned Triton LIF, one
# per layer shape, B included, since its SIZES/STRIDES are constexpr) share the 16 host cores instead
# of queueing in the timed parts. A job starts as soon as its memory estimate fits beside the jobs
# still running (85 % of the card; estimates from the measured peaks: 18.1 GiB at B=120, T=10, 48x48,
# full width, linear in B*T*S^2, plus 1.5 GiB a process), the slow Inductor compiles first; each
# Inductor gets 4 compile workers, not one per core. The timed parts (the second call's too, on the
# still warm machine) then report warm-cache warm-ups, as a search's later trials see them.
prewarm_jobs() {  # lines "GiB name command" for this call's PARTS and the SECOND call's
  local one="--steps 1 --warmup 1" t s
  est() { awk -v b="$1" -v t="$2" -v s="$3" 'BEGIN { printf "%.0f", 18.1*b/120*t/10*(s/48)^2 + 1.5 }'; }
  for name in $PARTS $SECOND; do
    case $name in
      compiled) echo "$(est 120 10 48) ckd-compile-120 $STEP --variants ckd-bf16-compile $one"
                echo "$(est 120 10 48) base-compile-120 $STEP --variants base-bf16-compile $one" ;;
      small) echo "$(est 32 10 48) ckd-compile-32 $STEP --variants ckd-bf16-compile --batch 32 $one"
             echo "$(est 32 10 48) ckd-graphs-32 $STEP --variants ckd-bf16-graphs --batch 32 $one" ;;
      graphs-trial) echo "$(est 32 10 48) trial-graphs-32 $PACK $TINY32 --compile-mode reduce-overhead"
                    echo "$(est 32 10 48) trial-compile-32 $PACK $TINY32 --compile" ;;
      bn) echo "$(est 120 10 48) ckd-compile-jointbn-120 $STEP --variants ckd-bf16-compile-jointbn $one"
          echo "$(est 120 10 48) eager-120 $STEP --variants ckd-bf16 $one" ;;
      profile) echo "$(est 120 10 48) eager-120 $STEP --variants ckd-bf16 $one" ;;
      graphs120|headline) echo "$(est 120 10 48) ckd-compile-120 $STEP --variants ckd-bf16-compile $one"
                 echo "$(est 120 10 48) ckd-compile-jointbn-120 $STEP --variants ckd-bf16-compile-jointbn $one"
                 echo "$(est 120 10 48) ckd-graphs-120 $STEP --variants ckd-bf16-graphs $one"
                 [ "$name" = headline ] &&
                   echo "$(est 120 10 48) base-compile-120 $STEP --variants base-bf16-compile $one" &&
                   echo "$(est 120 10 48) base-compile-cl-120 $STEP --variants base-bf16-compile-cl $one" ;;
      packing-digits) echo "2 digits $STEP --variants ckd-bf16 $DIGITS $one" ;;  # width 1/8: 0.4 GiB
      packing-digits-trials) echo "2 digits-trial $PACK $TINY_DIGITS" ;;
      scaling) for s in 48 128; do for t in 4 6 8 10; do
                 echo "$(est 32 "$t" "$s") scaling-$t-$s $STEP --variants ckd-bf16 --batch 32 --timesteps $t --size $s $one"
               done; done ;;
    esac
  done | awk '!seen[$2]++'  # parts that share a shape share its job
}

prewarm() {  # prewarm SECONDS: every job started once it fits the card's memory, all under SECONDS
  local limit=$1 start=$SECONDS gib name cmd total used left pid
  local -A job_gib=()
  total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 | awk '{printf "%d", $1/1024*0.85}')
  while read -r gib name cmd; do
    while :; do  # wait until the running jobs leave room for this one (or none runs)
      left=$((limit - (SECONDS - start))) used=0
      for pid in $(jobs -rp); do used=$((used + ${job_gib[$pid]:-0})); done
      ((used == 0 || used + gib <= total || left < 20)) && break
      sleep 1
    done
    ((left < 20)) && { echo "$name: not started, $left s left"; continue; }
    echo "$name: started at $((SECONDS - start)) s, $gib GiB beside $used GiB running (of $total)"
    # shellcheck disable=SC2086
    (TORCHINDUCTOR_COMPILE_THREADS=4 timeout -k 10 "$left" $cmd </dev/null >"/tmp/prewarm-$name.txt" 2>&1
     rc=$?
     echo "$name: exit $rc after $((SECONDS - start)) s: $(grep '^|' "/tmp/prewarm-$name.txt" | tail -1)"
     ((rc == 0)) || tail -12 "/tmp/prewarm-$name.txt" | sed "s/^/  $name> /") &
    job_gib[$!]=$gib
  done < <(jobs=$(prewarm_jobs); grep -E 'compile|graphs' <<<"$jobs"; grep -vE 'compile|graphs' <<<"$jobs")
  wait
}

part() {  # part NAME SECONDS COMMAND...: run if 3/4 of its limit is left; the limit shrinks to fit
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  if ((left * 4 < limit * 3)); then
    echo "=== $name: skipped, $left s of the budget left for a $limit s part" | tee -a "$LOG"
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
  local start=$SECONDS
  # -k: a part that ignores SIGTERM (an MPS clean-up) is killed 15 s later
  timeout -k 15 "$limit" "$@" 2>&1 | tee "/tmp/part-$name.txt" >>"$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$LOG"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton, spikingjelly; print(sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"

for name in $PARTS; do
  case $name in
    step) part step 320 $STEP ;;
    prewarm)  # a shell function, so not through part's timeout: it limits its own jobs
      limit=$((BUDGET - SECONDS < 200 ? BUDGET - SECONDS : 200))
      echo "=== prewarm (limit ${limit} s)" | tee -a "$LOG"
      prewarm "$limit" 2>&1 | tee /tmp/part-prewarm.txt >>"$LOG" ;;
    compiled) part compiled 200 env TORCH_LOGS=graph_breaks,recompiles $STEP --variants ckd-bf16-compile,base-bf16-compile ;;
    bn) part bn 150 $STEP --variants ckd-bf16,ckd-bf16-jointbn,ckd-bf16-compile,ckd-bf16-compile-jointbn ;;
    precision) part precision 170 python3 bench/precision.py --device cuda --epochs 6 --no-noise-floor ;;
    graphs120) part graphs120 100 $STEP --variants ckd-bf16-compile,ckd-bf16-compile-jointbn,ckd-bf16-graphs ;;
    headline) part headline 150 $STEP --source \
      --variants ckd-bf16-compile,ckd-bf16-compile-jointbn,ckd-bf16-graphs,base-bf16-compile,base-bf16-compile-cl ;;
    graphs-trial) part graphs-trial 135 bash -c "$PACK $TRIAL --compile-mode reduce-overhead; r=\$?
      $PACK $TRIAL --compile; s=\$?; exit \$((r ? r : s))" ;;
    small) part small 150 $STEP --variants ckd-bf16,ckd-bf16-compile,ckd-bf16-graphs --batch 32 ;;
    packing) part packing 120 $PACK --batch 32 ;;
    packing-digits) part packing-digits 150 $PACK $DIGITS --repeats 2 ;;
    packing-digits-trials) part packing-digits-trials 140 $PACK $DIGITS --epochs 5 ;;
    packing-digits-mps) part packing-digits-mps 80 $PACK $DIGITS --mps; stop_mps ;;
    packing-mps) part packing-mps 100 $PACK --batch 32 --mps; stop_mps ;;
    scaling) part scaling 160 $STEP --variants ckd-bf16 --scaling --batch 32 --steps 5 --warmup 2 ;;
    profile) part profile 90 python3 -m ckd_search.perf.profile_step --device cuda --rounds 2 \
      --set data.size=48 data.timesteps=10 model.width=1.0 optim.batch_size=120 run.precision=bf16 ;;
    *) echo "unknown part $name" | tee -a "$LOG" ;;
  esac
done

# The tables (and any traceback's last lines) at the end of the output, where the reply shows them.
for name in $PARTS; do
  echo "##### $name"
  [ -f "/tmp/part-$name.txt" ] && grep -E '^(\||#|device|ratio|best|note|bf16|fp32|row)|: (exit|not started)|Error|^  [a-z0-9-]+> ' \
    "/tmp/part-$name.txt" | tail -25
done
