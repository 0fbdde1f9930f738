#!/usr/bin/env bash
# VAMB 5.0.4 on the real-genome benchmark's fragments (issue 22, point 2), composition only:
# every fragment gets the same single-sample depth, so VAMB sees its k-mers alone. Trained on each
# species-group fold of a band alone (the held-out folds unless FOLDS=tune or fresh), three seeds a fold,
# each judged by benchmarks/real_genomes.py on its own kNN folds, as a VAE variant is.
#   bash benchmarks/vamb.sh                 # the quick bands' held-out folds
#   MODE= bash benchmarks/vamb.sh           # the full bands (MODE is --quick or empty)
#   DATA_SEED=43 bash benchmarks/vamb.sh    # another draw of the fragments
#   THREADS=1 bash benchmarks/vamb.sh       # VAMB's -p, torch's thread count (OMP_NUM_THREADS does not
#                                           # bind it): it changes the run; at -p 1 seed 42 repeated bit for bit
# VAMB pins torch==2.6.0, which from PyPI is the CUDA build (several GB). Its own venv ($VENV) gets
# $TORCH instead (vamb --no-deps; VAMB's other pins as it lists them), unless VENV already holds a
# vamb (e.g. `python -m venv $VENV && $VENV/bin/pip install vamb==5.0.4`). TORCH is the Makefile's
# pin, the CPU build where pip's index has one (the project's machines); elsewhere give
#   TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root: the paths below are relative to it
MODE=${MODE---quick}
case "$MODE" in --quick|"") ;; *) echo "vamb.sh: MODE must be --quick or empty, not '$MODE'" >&2; exit 2 ;; esac
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}  # make setup's venv, else the active one
VENV=${VENV:-.vamb-venv}
TORCH=${TORCH:-torch==2.13.0}
SEEDS=${SEEDS:-42 43 44}
DATA_SEED=${DATA_SEED:-42}  # the fragments' draw (real_genomes.py --data-seed)
THREADS=${THREADS:-2}  # vamb -p (VAMB's default 2)
case "$THREADS" in ''|*[!0-9]*|0) echo "vamb.sh: THREADS must be a positive whole number, not '$THREADS'" >&2; exit 2 ;; esac
FOLDS=${FOLDS:-heldout}  # the fold set (real_genomes.py --folds): tune, heldout or fresh
case "$FOLDS" in tune|heldout|fresh) ;; *) echo "vamb.sh: FOLDS must be tune, heldout or fresh, not '$FOLDS'" >&2; exit 2 ;; esac
WORK=${WORK:-runs/real_genomes}
if [ ! -x "$VENV/bin/vamb" ]; then
  echo "vamb.sh: installing vamb 5.0.4 into $VENV ($TORCH)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q $TORCH
  "$VENV/bin/pip" install -q vambcore==0.1.2 numpy==1.26.4 pycoverm==0.6.2 networkx==3.4.2 \
    scikit-learn==1.6.1 dadaptation==3.2 loguru==0.7.3 pyhmmer==0.10.15 pyrodigal==3.6.3
  "$VENV/bin/pip" install -q --no-deps vamb==5.0.4
fi
# fragments.fna and abundance.tsv of each fold of the set (the stores are made too, if missing)
$PY benchmarks/real_genomes.py $MODE --folds "$FOLDS" --fasta --no-baselines --variants --work "$WORK" \
  --data-seed "$DATA_SEED" >/dev/null
size=$([ -n "$MODE" ] && echo quick || echo full)
folds=$($PY -c "from benchmarks.real_genomes import FOLD_SETS; print(*FOLD_SETS['$FOLDS'])")  # the set's fold numbers
for f in $folds; do for w in "$WORK"/$size-*-file-data"$DATA_SEED"-split*/fold"$f"; do
  [ -f "$w/fragments.fna" ] || continue
  for s in $SEEDS; do
    [ -f "$w/vamb-$s/latent.npz" ] && continue
    rm -rf "$w/vamb-$s"
    echo "vamb.sh: $w seed $s" >&2
    # -m 1000: keep every fragment (VAMB's default drops contigs under 2,000 bp)
    "$VENV/bin/vamb" bin default --outdir "$w/vamb-$s" --fasta "$w/fragments.fna" \
      --abundance_tsv "$w/abundance.tsv" -m 1000 --seed "$s" -p "$THREADS" > "$w/vamb-$s.log" 2>&1
  done
done; done
$PY benchmarks/real_genomes.py $MODE --folds "$FOLDS" --no-baselines --variants --work "$WORK" --data-seed "$DATA_SEED" --seeds $SEEDS \
  --embedding "VAMB 5.0.4 (32-d)={work}/vamb-{seed}/latent.npz"
