"""benchmarks/mnf.py: the noise-aware linear baseline (maximum noise fraction) against
independent computations."""
from __future__ import annotations

import numpy as np
import scipy.linalg

from benchmarks.mnf import kmer_counts, mnf_scores, noise_thinnings, per_k_clr
from kmervae_core.store.kmers import SOURCE_COLUMNS, group


def test_counts_are_frequencies_times_the_k_mers_a_fragment_of_that_length_holds():
    row = np.zeros((1, SOURCE_COLUMNS), np.float32)
    row[0, 0] = 10  # a 10 bp fragment: 10 1-mers, 9 2-mers
    row[0, group(1).source] = [0.6, 0.4]
    row[0, group(2).source.start] = 1 / 3
    counts = kmer_counts(row)
    np.testing.assert_array_equal(counts[0, group(1).local], [6, 4])
    assert counts[0, group(2).local.start] == 3 and counts[0, group(2).local].sum() == 3


def test_the_per_k_clr_of_counts_is_the_jeffreys_clr_of_their_frequencies():
    counts = np.zeros((1, 2772))
    counts[0, group(1).local] = [6, 4]
    p = 0.5 / 2  # the per-k pseudocount: 0.5 / |G|
    logs = np.log([0.6 + p, 0.4 + p])
    np.testing.assert_allclose(per_k_clr(counts)[0, group(1).local], logs - logs.mean(), rtol=1e-12)


def test_thinnings_are_seeded_independent_halves():
    counts = np.zeros((50, 2772))
    counts[:, group(1).local] = 1000
    a, b = noise_thinnings(counts, 1)
    a2, _ = noise_thinnings(counts, 1)
    np.testing.assert_array_equal(a, a2)
    ratio = np.exp(2 * a[:, group(1).local.start])  # A/T over C/G of ~500 each: near 1, not 1
    assert not np.allclose(a, b) and np.all(np.abs(ratio - 1) < 0.3) and ratio.std() > 0


def test_mnf_scores_are_the_generalized_eigenvectors_of_signal_over_noise():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    diff_a = rng.normal(size=(300, 5)) @ np.diag([3, 1, 0.5, 2, 0.2])
    diff_b = np.zeros_like(diff_a)
    centred = x - x.mean(axis=0)
    noise = diff_a.T @ diff_a / (2 * 300)
    _, vectors = scipy.linalg.eigh(centred.T @ centred, noise)  # S v = l N v, v' N v = 1, ascending
    expected = centred @ vectors[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(mnf_scores(x, diff_a, diff_b, 3)), np.abs(expected), rtol=1e-7, atol=1e-9)


def test_mnf_keeps_the_direction_with_signal_where_pca_keeps_the_noisy_one():
    rng = np.random.default_rng(4)
    signal = rng.normal(size=1000)  # small variance, little noise
    noisy = 3 * rng.normal(size=1000)  # large variance, all of it noise
    x = np.column_stack([signal, noisy])
    thin_a = x + np.column_stack([0.05 * rng.normal(size=1000), 3 * rng.normal(size=1000)])
    thin_b = x + np.column_stack([0.05 * rng.normal(size=1000), 3 * rng.normal(size=1000)])
    score = mnf_scores(x, thin_a, thin_b, 1)[:, 0]
    assert abs(np.corrcoef(score, signal)[0, 1]) > 0.99
