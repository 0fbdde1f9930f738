#!/usr/bin/env bash
# One GPU session's checks (device tool; docs/benchmarks.md records what they printed):
#   1. benchmarks/cuda_graph_check.py: the captured step trains like the eager step (PASS/FAIL)
#   2. benchmarks/step.py: the step's own ceiling against a plain torch.nn step, eager and captured,
#      with the profiler's top kernels of one eager step
#   3. benchmarks/train.py: each way of feeding the step against the graph ceiling, batch 1024 and 4096
#   4. a 3-epoch training run with the default settings: its start-up lines (step mode, cache tier)
#   5. check 1 with a VampPrior and per-scale latents (the variants' step captured)
#   6. benchmarks/feed.py: the in-rank feed (reader threads, GPU slab: per-thread pinned staging, a copy
#      stream, event-ordered gathers) against its decode ceiling, float16 lz4 and float32 zstd-1 stores
#      at batch 1024 (with the ceiling at 1, 2, 4, 8, ... threads: --scaling) and 128 (issue 32's targets
#      with part 3: graph + f16 lz4 stream >= 0.8x of the graph ceiling, f32 zstd-1 >= 0.5x, device cache
#      >= 0.95x).
# PARTS="1 3" runs some. Each part has its own time limit, so one that hangs leaves the others' figures. Outputs go to
# $OUT (the device tool brings them back). Carried wheels (.whl/) supply zarr, numcodecs and dask
# where the image lacks them. Try it on a CPU first: DEVICE=cpu ROWS=20000 WORKERS=1 STEPS=5 BATCHES=256 bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}; ROWS=${ROWS:-200000}; WORKERS=${WORKERS:-14}; STEPS=${STEPS:-100}; BATCHES=${BATCHES:-1024 4096}; PARTS=${PARTS:-1 2 3 4 5 6}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import sys, torch, zarr, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'zarr', zarr.__version__, 'numpy', numpy.__version__)"
part() { echo "== $1 ($(date +%T))"; }

want() { [[ " $PARTS " == *" $1 "* ]]; }

if want 1; then
  part "1. captured step == eager step"
  timeout 100 $PY benchmarks/cuda_graph_check.py --device "$DEVICE" --rows 40000 --batch 1024 --epochs 3 2>&1 | tee "$OUT/graph_check.txt"
fi
if want 2; then  # graph and eager in separate processes: a failed replay ends its CUDA context
  part "2. the step's own ceiling against a plain step"
  timeout 90 $PY benchmarks/step.py --device "$DEVICE" --modes graph --batches $BATCHES --steps "$((STEPS * 2))" --rounds 3 2>&1 \
    | tee "$OUT/step.txt"
  timeout 75 $PY benchmarks/step.py --device "$DEVICE" --modes eager --batches $BATCHES --steps "$STEPS" --rounds 3 --profile 2>&1 \
    | grep -v "^USDT\|profiler_st\|_warn_once\|acc_events" | tee -a "$OUT/step.txt"
fi
if want 3; then
  part "3. feeding the step: eager, graph, graph+cache, graph f16-lz4"
  timeout 200 $PY benchmarks/train.py --device "$DEVICE" --batches $BATCHES --rows "$ROWS" --workers "$WORKERS" \
    --steps "$STEPS" --warmup 10 --rounds 2 2>&1 | tee "$OUT/train.txt"
fi
if want 4; then
  part "4. a 3-epoch run with the default settings"
  d=$(mktemp -d)
  $PY -m ingest.synth "$d/s.npy" --rows 8000 --seed 0 >/dev/null && $PY -m ingest "$d/s.npy" "$d/s.zarr" --chunk-rows 1024 --quiet \
    && timeout 120 $PY -m train --data "$d/s.zarr" --out "$d/run" --epochs 3 --metrics-port 0 2>&1 \
    | grep -E "^(step|cache|CUDA graph|Epoch|done)|rror" | cut -c1-220 | tee "$OUT/default_run.txt"
  rm -rf "$d"
fi
if want 5; then
  part "5. captured step == eager step, VampPrior and per-scale latents"
  timeout 100 $PY benchmarks/cuda_graph_check.py --device "$DEVICE" --rows 40000 --batch 1024 --epochs 3 \
    --prior vamp:16 --latent-blocks 128,64,64 2>&1 | tee "$OUT/graph_check_variants.txt"
fi
if want 6; then
  part "6. the in-rank feed against its decode ceiling (reader threads, GPU slab)"
  d=$(mktemp -d)
  for spec in "lz4 float16" "zstd:1 float32"; do
    set -- $spec
    url=$($PY -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; from benchmarks.ingest import ingested_store; print(ingested_store(Path('$d'), $ROWS, 4096, '$1', '$2'))") || continue
    for b in 1024 128; do
      scaling=$([ "$b" = 1024 ] && echo --scaling)
      timeout 150 $PY benchmarks/feed.py --store "$url" --batch-size "$b" --workers "$WORKERS" --device "$DEVICE" --rounds 2 $scaling 2>&1 \
        | tee -a "$OUT/feed.txt"
    done
  done
  rm -rf "$d"
fi
part "done"
