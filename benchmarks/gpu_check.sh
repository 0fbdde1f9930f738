#!/usr/bin/env bash
# One GPU session's checks in one call of the device tool (timeout_s 600; 15 minutes of device
# time in all, the machine's start included). docs/benchmarks.md records what they printed.
#
# Issue 32 part 7, the default (PARTS="7 8 9"), each part's time limit beside it (540 s in all,
# with the wheels' install about 10 s more):
#   stores  benchmarks/train.py --stores-only: a float16 lz4 and a float32 zstd-1 store of $ROWS
#           rows (1,000,000: 245 chunks of 4,096, an estimated 3-5 GiB each on disk), made once in a
#           temporary folder for the parts below                                            120 s
#   7. benchmarks/feed.py --scaling --rounds 0: the decode ceiling at 1, 2, 4, 8 and 16 threads
#      and at $WORKERS (up to the usable CPUs), the first 64 chunks of each store (no target:
#      recorded)                                                                          2 x 45 s
#   8. benchmarks/train.py at batch $BATCH, one epoch per round, one process per mode: the
#      captured step fed by the float16 lz4 stream (target >= 0.8x the captured step's rows/s),
#      by the float32 zstd-1 stream (>= 0.5x) and by the device tier (>= 0.95x: its second
#      epoch timed whole, and rounds from the third epoch on), each with PASS or MISS; below the
#      device tier's row its first epoch's wall time (the store's rank share fits the device;
#      no target: recorded)                                                              3 x 60 s
#   9. benchmarks/copy_overlap.py: one second of torch.profiler on the float16 lz4 stream: the
#      trace ($OUT/profile_trace.json.gz) and the share of the copy stream's host-to-device time
#      that overlaps compute-stream kernels (PASS at >= 1%)                                  90 s
#      where it fails (a captured graph replayed under the profiler), again with the eager step  60 s
# A summary of every PASS and MISS (and of parts cut off by their limit) ends the output.
#
# Earlier checks, on request (PARTS="1 3 7"; not within one call all together):
#   1. benchmarks/cuda_graph_check.py: the captured step trains like the eager step (PASS/FAIL)   100 s
#   2. benchmarks/step.py: the step's own ceiling against a plain torch.nn step, eager and captured,
#      with the profiler's top kernels of one eager step                                        165 s
#   3. benchmarks/train.py: each way of feeding the step against its ceiling, at $BATCHES       200 s
#   4. a 3-epoch training run with the default settings: its start-up lines                     120 s
#   5. check 1 with a VampPrior and per-scale latents, then with the multinomial likelihood (issue
#      31 part 5: the captured step holds its term; part 2's step.py times it)               2 x 100 s
#   6. benchmarks/feed.py: the in-rank feed against its decode ceiling, both stores, batch 1024
#      and 128                                                                                4 x 150 s
#
# Each part has its own time limit, so one that hangs leaves the others' figures. Each part's
# output goes to $OUT (the device tool brings back up to 8 files). Carried wheels (.whl/, `make
# gpu-wheels`) supply zarr, numcodecs and dask where the image lacks them.
#
# Dry run on a CPU first (small sizes, about 2-3 minutes on 2 cores; every part prints the same
# lines, the profile says that a CPU has no CUDA streams):
#   DEVICE=cpu ROWS=8192 WORKERS=2 BATCH=256 STEPS=4 WARMUP=2 OUT=/tmp/gpu-out PY=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}; ROWS=${ROWS:-1000000}; WORKERS=${WORKERS:-auto}; PARTS=${PARTS:-7 8 9}
BATCH=${BATCH:-1024}; STEPS=${STEPS:-0}; WARMUP=${WARMUP:-10}  # part 8: STEPS 0 times one epoch per round
BATCHES=${BATCHES:-1024 4096}; OLD_STEPS=${OLD_STEPS:-100}  # parts 2 and 3
declare -A LIMIT=([stores]=120 [7]=45 [8]=60 [9]=90 [9e]=60 [1]=100 [2]=90 [2p]=75 [3]=200 [4]=120 [5]=100 [6]=150)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import sys, torch, zarr, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'zarr', zarr.__version__, 'numpy', numpy.__version__)"
echo "PARTS=\"$PARTS\" DEVICE=$DEVICE ROWS=$ROWS WORKERS=$WORKERS BATCH=$BATCH STEPS=$STEPS WARMUP=$WARMUP; $(env -u OMP_NUM_THREADS nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "time limits (s): stores ${LIMIT[stores]}, 7: 2 x ${LIMIT[7]}, 8: 3 x ${LIMIT[8]}, 9: ${LIMIT[9]} (eager" \
  "again where it fails: ${LIMIT[9e]}); issue 32: $(( LIMIT[stores] + 2 * LIMIT[7] + 3 * LIMIT[8] + LIMIT[9] + LIMIT[9e] )) s in all"
part() { echo "== $1 ($(date +%T))"; }
want() { [[ " $PARTS " == *" $1 "* ]]; }
CUT=()  # parts cut off by their time limit
declare -A LOGS=()  # this call's logs in $OUT
# run LIMIT-KEY LOG COMMAND...: the command under its time limit, its output shown and added to $OUT/LOG
run() {
  local key=$1 log=$2; shift 2
  [ -n "${LOGS[$log]:-}" ] || : > "$OUT/$log"
  LOGS[$log]=1
  timeout -k 5 "${LIMIT[$key]}" "$@" 2>&1 | grep --line-buffered -v "^USDT:" | tee -a "$OUT/$log"  # USDT: the profiler's noise
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    CUT+=("$key ($log): cut off at ${LIMIT[$key]} s"); echo "(cut off at ${LIMIT[$key]} s)"
  fi
  return "$rc"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kmervae-gpu-check-XXXXXX")  # the stores, made once (parts 3 and 6-9)
trap 'rm -rf "$WORK"' EXIT
export TMPDIR=$WORK  # the scripts' temporary folders too, left behind by a part cut off
STORES=(--stores-dir "$WORK" --rows "$ROWS")
if want 7 || want 8 || want 9; then
  part "stores: float16 lz4 and float32 zstd-1, $ROWS rows"
  if ! run stores stores.txt $PY benchmarks/train.py "${STORES[@]}" --modes graph "graph f16-lz4" --stores-only; then
    echo "no stores: parts 7-9 skipped"; PARTS=${PARTS//[789]/}
  fi
fi
if want 7; then
  part "7. the decode ceiling at 1, 2, 4, 8, 16 threads (no target: recorded)"
  for spec in "lz4 float16" "zstd:1 float32"; do
    set -- $spec
    run 7 scaling.txt $PY benchmarks/feed.py "${STORES[@]}" --codec "$1" --store-dtype "$2" --workers "$WORKERS" --scaling --rounds 0
  done
fi
if want 8; then
  part "8. the stream and the device tier against the captured step, batch $BATCH"
  for mode in "graph f16-lz4" graph graph+cache; do  # a process each: one cut off leaves the others' rows
    run 8 targets.txt $PY benchmarks/train.py --device "$DEVICE" "${STORES[@]}" --batches "$BATCH" --workers "$WORKERS" \
      --modes "$mode" --steps "$STEPS" --warmup "$WARMUP" --rounds 2
  done
fi
if want 9; then
  part "9. one second of the profiler: the copies' overlap with the step"
  PROFILE=($PY benchmarks/copy_overlap.py --device "$DEVICE" "${STORES[@]}" --batch-size "$BATCH" --workers "$WORKERS"
           --trace "$OUT/profile_trace.json.gz")
  if ! run 9 profile.txt "${PROFILE[@]}"; then
    part "9. again with the eager step"
    run 9e profile.txt "${PROFILE[@]}" --cuda-graphs off
  fi
fi

if want 1; then
  part "1. captured step == eager step"
  run 1 graph_check.txt $PY benchmarks/cuda_graph_check.py --device "$DEVICE" --rows 40000 --batch 1024 --epochs 3
fi
if want 2; then  # graph and eager in separate processes: a failed replay ends its CUDA context
  part "2. the step's own ceiling against a plain step"
  run 2 step.txt $PY benchmarks/step.py --device "$DEVICE" --modes graph --batches $BATCHES --steps "$((OLD_STEPS * 2))" --rounds 3
  run 2p step.txt $PY benchmarks/step.py --device "$DEVICE" --modes eager --batches $BATCHES --steps "$OLD_STEPS" --rounds 3 --profile
fi
if want 3; then
  part "3. feeding the step: eager, graph, graph+cache, graph f16-lz4"
  run 3 train.txt $PY benchmarks/train.py --device "$DEVICE" --batches $BATCHES "${STORES[@]}" --workers "$WORKERS" \
    --steps "$OLD_STEPS" --warmup 10 --rounds 2
fi
if want 4; then
  part "4. a 3-epoch run with the default settings"
  d=$(mktemp -d)
  $PY -m ingest.synth "$d/s.npy" --rows 8000 --seed 0 >/dev/null && $PY -m ingest "$d/s.npy" "$d/s.zarr" --chunk-rows 1024 --quiet \
    && timeout "${LIMIT[4]}" $PY -m train --data "$d/s.zarr" --out "$d/run" --epochs 3 --metrics-port 0 2>&1 \
    | grep -E "^(step|cache|CUDA graph|Epoch|done)|rror" | cut -c1-220 | tee "$OUT/default_run.txt"
  rm -rf "$d"
fi
if want 5; then
  part "5. captured step == eager step, VampPrior and per-scale latents"
  run 5 graph_check_variants.txt $PY benchmarks/cuda_graph_check.py --device "$DEVICE" --rows 40000 --batch 1024 --epochs 3 \
    --prior vamp:16 --latent-blocks 128,64,64
  run 5 graph_check_multinomial.txt $PY benchmarks/cuda_graph_check.py --device "$DEVICE" --rows 40000 --batch 1024 \
    --epochs 3 --likelihood multinomial
fi
if want 6; then
  part "6. the in-rank feed against its decode ceiling (reader threads, GPU slab)"
  for spec in "lz4 float16" "zstd:1 float32"; do
    set -- $spec
    for b in 1024 128; do
      run 6 feed.txt $PY benchmarks/feed.py "${STORES[@]}" --codec "$1" --store-dtype "$2" \
        --batch-size "$b" --workers "$WORKERS" --device "$DEVICE" --rounds 2
    done
  done
fi

part "summary: targets (PASS or MISS) and parts cut off"
for log in "${!LOGS[@]}"; do grep -hE "(PASS|MISS|FAIL|n/a without CUDA)\b" "$OUT/$log"; done | sed 's/^ *//'
for c in "${CUT[@]}"; do echo "$c"; done
part "done"
