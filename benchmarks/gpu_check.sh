#!/usr/bin/env bash
# One GPU session's checks (device tool; see docs/benchmarks.md): the fast tests under that
# machine's Python/torch/zarr, the CUDA graph check (captured step == eager step), a short
# training run with the defaults (graph + cache), then the benchmarks/train.py GPU table.
# Carried wheels (.whl/) supply zarr, numcodecs and dask where the image lacks them.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}; ROWS=${ROWS:-600000}; WORKERS=${WORKERS:-14}; STEPS=${STEPS:-100}; PRECISIONS=${PRECISIONS:-fp32}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import sys, torch, zarr, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'zarr', zarr.__version__, 'numpy', numpy.__version__)"
timeout 200 python3 -m pytest -q -m "not slow" -p no:cacheprovider tests > "$OUT/tests.txt" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.txt" | tail -15
timeout 120 python3 benchmarks/cuda_graph_check.py --device "$DEVICE" --rows 40000 --batch 1024 --epochs 3 2>&1 | tee "$OUT/graph_check.txt"
d=$(mktemp -d)
python3 -m ingest.synth "$d/s.npy" --rows 3000 --seed 0 >/dev/null && python3 -m ingest "$d/s.npy" "$d/s.zarr" --chunk-rows 512 --quiet \
  && timeout 120 python3 -m train --data "$d/s.zarr" --out "$d/run" --epochs 3 --batch-size 256 --workers 2 2>&1 \
  | grep -E "^(step|cache|CUDA graph|Epoch|done)|error" | cut -c1-200
for prec in $PRECISIONS; do
  timeout 300 python3 benchmarks/train.py --device "$DEVICE" --batches 1024 4096 --rows "$ROWS" --workers "$WORKERS" \
    --steps "$STEPS" --warmup 10 --rounds 2 --precision "$prec" 2>&1 | tee -a "$OUT/train_gpu.txt"
done
