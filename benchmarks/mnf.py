"""Maximum noise fraction: a linear projection of the per-k CLR that knows k-mer sampling noise.

The k-mer frequencies of a fragment of length L are counts drawn per k group, n_kj = frequency
x (L - k + 1), so a short fragment's CLR is mostly sampling noise in its rare k-mers, which PCA
takes for signal. MNF estimates that noise from the rows themselves: two independent binomial
thinnings (p = 0.5) of each row's counts differ only by sampling noise, so the covariance of the
difference of their per-k CLRs is (twice) the noise covariance at half depth. The CLR rows are
whitened by it and projected on their top principal components: directions ranked by signal
over noise, not by variance. Only the benchmark uses it (issue 31's noise-aware baseline).
"""
from __future__ import annotations

import numpy as np

from kmervae_core.store.clr import ClrSpec, clr
from kmervae_core.store.kmers import KMER_GROUPS, USED_SOURCE

PER_K = ClrSpec("per_k")


def kmer_counts(rows: np.ndarray) -> np.ndarray:
    """Counts of the 2,772 used k-mers (6..1) of all_kmers.npy rows (column 0 the fragment's
    length): each k group's frequencies x (length - k + 1), rounded to whole counts."""
    length = np.asarray(rows[:, 0], np.float64)[:, None]
    freq = np.asarray(rows[:, USED_SOURCE], np.float64)
    counts = np.empty_like(freq)
    for g in KMER_GROUPS:
        counts[:, g.local] = freq[:, g.local] * np.maximum(length - g.k + 1, 0)
    return np.rint(counts)


def per_k_clr(counts: np.ndarray) -> np.ndarray:
    """The store's per-k CLR (`ingest --clr per-k`) of counts: each group's counts as
    frequencies of their sum, then the project's CLR, in float64."""
    freq = np.zeros_like(counts, dtype=np.float64)
    for g in KMER_GROUPS:
        total = counts[:, g.local].sum(axis=1, keepdims=True)
        np.divide(counts[:, g.local], total, out=freq[:, g.local], where=total > 0)
    return clr(freq, PER_K, out=np.empty(freq.shape, np.float64))


def noise_thinnings(counts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-k CLRs of two independent binomial thinnings (p = 0.5) of every row's counts."""
    rng = np.random.default_rng([seed, 0x7F1])
    whole = counts.astype(np.int64)
    return per_k_clr(rng.binomial(whole, 0.5)), per_k_clr(rng.binomial(whole, 0.5))


def mnf_scores(x: np.ndarray, thin_a: np.ndarray, thin_b: np.ndarray, dims: int) -> np.ndarray:
    """Scores of the rows `x` on their first `dims` noise-adjusted components: x centred,
    whitened by the noise covariance that thin_a - thin_b estimates (directions where it is
    numerically zero, such as each CLR group's sum, dropped), then projected on the top
    eigenvectors of the whitened scatter. Float64."""
    centred = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(axis=0)
    diff = np.asarray(thin_a, np.float64) - np.asarray(thin_b, np.float64)
    noise = diff.T @ diff / (2 * len(diff))
    values, vectors = np.linalg.eigh(noise)
    keep = values > values.max() * 1e-10
    whitened = centred @ (vectors[:, keep] / np.sqrt(values[keep]))
    _, components = np.linalg.eigh(whitened.T @ whitened)
    return whitened @ components[:, ::-1][:, :dims]
