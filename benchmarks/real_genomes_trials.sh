#!/usr/bin/env bash
# Issue 31's protocol on the real-genome benchmark: every VAE variant is tried on the tuning folds
# first (the choice), and only then judged on the held-out folds beside the baselines. Figures go
# to $OUT/*.txt; docs/experiments.md says what each run printed. The packages are downloaded into
# ~/.cache/kmervae/real_genomes on the first run (apt-get update first), or copy that folder from a
# machine that has it. Issue 22's trials (all 40 genomes, before the folds) are in git history
# (commit 3daac66).
#   bash benchmarks/real_genomes_trials.sh                  # the quick bands (10,000 fragments each)
#   MODE= bash benchmarks/real_genomes_trials.sh            # the full bands (a GPU)
#   ADD='mn-beta-1=per-k:--likelihood multinomial --hidden 512,256 --latent 64 --beta 1' VARIANTS=mn-beta-1 \
#     bash benchmarks/real_genomes_trials.sh                # a new variant (a name, a store, train flags)
set -uo pipefail
OUT=${OUT:-runs/real_genomes/trials31}; mkdir -p "$OUT"
MODE=${MODE---quick}
VARIANTS=${VARIANTS:-reference mn-6to1-h512-l64-thin-0.5-ntxent-1000}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}  # make setup's venv, else the active one
ADD=${ADD:-}  # one --add-variant NAME=STORE:FLAGS, if any
extra=(); [ -n "$ADD" ] && extra=(--add-variant "$ADD")
bench() { $PY benchmarks/real_genomes.py $MODE "${extra[@]}" "$@"; }
# 1. the baselines on the held-out folds (they choose nothing)
bench --folds heldout --variants | tee "$OUT/1_heldout_baselines.txt"
# 2. the variants on the tuning folds: the choice (records each variant tried)
bench --folds tune --no-baselines --variants $VARIANTS | tee "$OUT/2_tune.txt"
# 3. what the tuning folds chose, on the held-out folds (with the PCA and MNF of their latent sizes)
bench --folds heldout --no-baselines --variants $VARIANTS | tee "$OUT/3_heldout_variants.txt"
