#!/usr/bin/env bash
# A run larger than memory (issue 33, part 7): an all_kmers.npy of ROWS rows (the counted rows of
# a `python -m ingest.synth` sample, repeated), then `python -m ingest`, `python -m ingest --verify`,
# one epoch of a small model (`python -m train`) and `python -m train.encode` of every row, each
# timed with its peak RSS and the bytes it read from the disk (benchmarks/scale.py says how).
#   bash benchmarks/scale.sh [ROWS]       # default 1,000,000 rows: a 43.9 GB npy, about 11 GB of store
# Environment:
#   SCALE_DIR=DIR     the work folder (default /tmp/kmervae-scale); the figures and logs stay there
#   KEEP=1            keep the npy, store, run and latents (default: removed at the end, or on failure)
#   DROP_CACHES=0     do not drop the page cache before each step (default 1: dropped where the
#                     process may write /proc/sys/vm/drop_caches, i.e. as root; the table says which)
#   SAMPLE_ROWS=5000  rows of the synthetic sample that is repeated
#   HIDDEN=64 LATENT=16 BATCH=256 WORKERS=2   the model and feed of the training epoch
#   PY=python         default: .venv/bin/python if make setup made it
# Refuses in one line (exit 2) before writing anything when the disk lacks room for npy + store + run.
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: python -m finds ingest, train and benchmarks there
ROWS=${1:-1000000}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
DIR=${SCALE_DIR:-/tmp/kmervae-scale}
SAMPLE_ROWS=${SAMPLE_ROWS:-5000}
HIDDEN=${HIDDEN:-64} LATENT=${LATENT:-16} BATCH=${BATCH:-256} WORKERS=${WORKERS:-2}
$PY -m benchmarks.scale space "$DIR" "$ROWS" --sample-rows "$SAMPLE_ROWS"
[ "$SAMPLE_ROWS" -gt "$ROWS" ] && SAMPLE_ROWS=$ROWS

NPY=$DIR/all_kmers.npy STORE=$DIR/kmers.zarr RUN=$DIR/run LATENTS=$DIR/latents.zarr FIGURES=$DIR/figures.jsonl
if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -f "$FIGURES" ]; then  # never delete what a user keeps there
  echo "scale.sh: error: $DIR holds files that are not an earlier scale.sh run's; set SCALE_DIR to an empty or new folder" >&2
  exit 2
fi
cleanup() {
  [ "${KEEP:-0}" = 1 ] || rm -rf "$NPY" "$DIR"/.*.npy.*.tmp "$DIR/sample.npy" "$DIR/sample_labels.npy" "$STORE" "$RUN" "$LATENTS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap cleans up after Ctrl-C or a kill too
mkdir -p "$DIR"
rm -rf "$FIGURES" "$STORE" "$RUN" "$LATENTS"
echo "scale.sh: $ROWS rows into $DIR; $(uptime)"
DROP=$([ "${DROP_CACHES:-1}" = 1 ] && echo --drop-caches || true)
step() {  # NAME INPUT CMD...: one timed step, its output in DIR/NAME.log
  local name=$1 input=$2; shift 2
  $PY -m benchmarks.scale step $DROP "$FIGURES" "$name" "$input" "$DIR/$name.log" -- "$@"
}

$PY -m ingest.synth "$DIR/sample.npy" --rows "$SAMPLE_ROWS" --seed 0 --labels "$DIR/sample_labels.npy"
step make-npy "$DIR/sample.npy" $PY -m benchmarks.scale tile "$DIR/sample.npy" "$NPY" "$ROWS"
step ingest "$NPY" $PY -m ingest "$NPY" "$STORE" --quiet
[ "${KEEP:-0}" = 1 ] || rm -f "$NPY"  # the disk's room back before training (the figures have its size)
step verify "$STORE" $PY -m ingest --verify "$STORE"
step train-1-epoch "$STORE" $PY -m train --data "$STORE" --out "$RUN" --epochs 1 --hidden "$HIDDEN" \
  --latent "$LATENT" --batch-size "$BATCH" --workers "$WORKERS" --cache none --metrics-port 0
step encode "$STORE" $PY -m train.encode --checkpoint "$RUN/vae_multi_encoder_final.pt" --data "$STORE" --out "$LATENTS"
echo "scale.sh: $(uptime)"
$PY -m benchmarks.scale table "$FIGURES" | tee "$DIR/table.md"
