#!/usr/bin/env bash
# Issue 22's trials on the real-genome benchmark, in order of promise, for a machine that can
# run them (each VAE run of the quick band is 15 epochs of 35 steps on 9,000 rows; the full
# band's are the reference's 100 epochs). Figures go to $OUT/*.txt; docs/experiments.md says
# what each run printed. The packages are downloaded into ~/.cache/kmervae/real_genomes on the
# first run (apt-get update first), or copy that folder from a machine that has it.
#   MODE=--quick bash benchmarks/real_genomes_trials.sh     # 10,000 fragments a band
#   MODE= bash benchmarks/real_genomes_trials.sh            # the full bands (a GPU)
set -uo pipefail
OUT=${OUT:-runs/real_genomes/trials}; mkdir -p "$OUT"
MODE=${MODE---quick}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}  # make setup's venv, else the active one
bench() { $PY benchmarks/real_genomes.py $MODE "$@"; }
# 1. baselines and the reference, both bands, 3 seeds
bench --variants reference | tee "$OUT/1_reference.txt"
# 2. what the baselines point to: per-k CLR input, down-weighted 6-mers, per-scale latents
bench --no-baselines --variants per-k-input 6mer-weight-0.25 per-scale | tee "$OUT/2_inputs.txt"
# 3. point 6: the same rows shuffled before ingest (against file order in 1)
bench --order shuffled --variants reference | tee "$OUT/3_shuffled.txt"
# 4. the input without the noisy 6-mers (docs/experiments.md, "Trained quick runs")
bench --no-baselines --variants no-6mers per-k-no-6mers per-k-4-to-1mers per-k-6mer-weight-0.1 | tee "$OUT/4_no_6mers.txt"
# 5. around the best of 4
bench --no-baselines --variants per-k-4-to-1mers-latent-32 per-k-4-to-1mers-beta-0.03 per-k-4-to-1mers-small \
  | tee "$OUT/5_4_to_1mers.txt"
# 5b. around the best of 5 (a later `--lr` in a variant's flags wins over the shared one)
bench --no-baselines --variants per-k-4-to-1mers-small-lr-3e-4 per-k-4-to-1mers-tiny per-k-5mer-weight-0.3-small \
  | tee "$OUT/5b_around_small.txt"
# 5c. around tiny, the best of 5b (per-k-5mer-weight-0.3-tiny is configs/per-k-tiny.toml)
bench --no-baselines --variants per-k-4-to-1mers-micro per-k-4-to-1mers-tiny-latent-8 per-k-5mer-weight-0.3-tiny \
  | tee "$OUT/5c_around_tiny.txt"
# 5d. the best of 5 to 5c on a second draw of the fragments, baselines too
bench --data-seed 43 --variants per-k-4-to-1mers-small per-k-4-to-1mers-tiny per-k-4-to-1mers-tiny-latent-8 \
  per-k-5mer-weight-0.3-tiny | tee "$OUT/5d_data_seed_43.txt"
# 6. the seed's own list
bench --no-baselines --variants latent-512 wide beta-0.03 cyclical-beta mog-16 vamp-16 | tee "$OUT/6_seed_list.txt"
# 7. denoising and length weighting on top of the shipped config (1-4 kb, the band that decides)
bench --bands 1-4kb --no-baselines --variants per-k-tiny-input-noise-0.1 per-k-tiny-input-noise-0.3 \
  per-k-tiny-length-weight-1 per-k-tiny-length-weight-0.5 | tee "$OUT/7_noise_and_length.txt"
