"""Embedding quality: whether latent space keeps what the input says, beyond reconstruction.

Reconstruction loss alone can mislead (a run with the best reconstruction had the worst
agreement between latent and input distances, and few active dimensions), so these are
tracked each epoch on a fixed sample of rows drawn from the whole store (the latent sample): active units, the Spearman correlation of
latent and input distances over fixed pairs, and leave-one-out kNN accuracy of known labels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ACTIVE_THRESHOLD = 0.01


def active_units(z_mean: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Latent dimensions whose z_mean varies across rows by more than `threshold` (variance)."""
    return int((np.asarray(z_mean, dtype=np.float64).var(axis=0) > threshold).sum())


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.arange(1, len(a) + 1)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    ra, rb = average_ranks(np.asarray(a)), average_ranks(np.asarray(b))
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


LATENT_SAMPLE_CHUNKS = 64  # the most chunks the latent sample's rows come from: its read at start-up
LATENT_READ_AT_ONCE = 2  # chunks the latent sample's read decodes at once (zarr's 10: 10 x 43 MiB at start)


def sample_rows(total: int, chunk_rows: int, size: int, seed: int,
                max_chunks: int = LATENT_SAMPLE_CHUNKS) -> np.ndarray:
    """`size` distinct store rows (sorted), fixed by the seed, drawn uniformly from the rows of
    at most `max_chunks` whole chunks: one chunk from each of `max_chunks` equal spans of the
    store, or every chunk where it has no more.

    Spread over the whole store, because a store in file order holds a few samples' (genomes')
    rows in each chunk, and a sample of a few neighbouring chunks would hold a few labels and
    flatter the kNN (issue 22). At most `max_chunks` chunks, because reading the rows decodes
    every chunk they fall in: 5,000 rows drawn from all of a 17M-row store would decode nearly
    all of its 4,150 chunks before the first step."""
    rng = np.random.default_rng([seed, 0x1A7])
    n_chunks = -(-total // chunk_rows)
    if n_chunks <= max_chunks:
        return np.sort(rng.choice(total, min(total, size), replace=False)).astype(np.int64)
    edges = np.linspace(0, n_chunks, max_chunks + 1).astype(np.int64)
    chunks = edges[:-1] + (rng.random(max_chunks) * np.diff(edges)).astype(np.int64)
    pool = np.concatenate([np.arange(c * chunk_rows, min((c + 1) * chunk_rows, total)) for c in chunks])
    return np.sort(rng.choice(pool, min(len(pool), size), replace=False)).astype(np.int64)


def sample_pairs(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random pairs (i, j) of distinct rows, fixed by the seed."""
    rng = np.random.default_rng([seed, 0xD15])
    i = rng.integers(0, n, count)
    j = (i + rng.integers(1, n, count)) % n
    return i, j


def pair_distances(a: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 1024) -> np.ndarray:
    """Euclidean distances of rows i and j in float64, `block` pairs at a time: all pairs at
    once cost a gigabyte at 20,000 pairs of 2,772 columns (on a rank sized to a memory limit)."""
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), block):
        e = min(len(i), s + block)
        out[s:e] = np.linalg.norm(np.asarray(a[i[s:e]], np.float64) - np.asarray(a[j[s:e]], np.float64), axis=1)
    return out


def distance_spearman(z: np.ndarray, x_distances: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> float:
    """Spearman correlation between the latent Euclidean distances over the pairs and the
    inputs' (`pair_distances` of the inputs over the same pairs: computed once, since the inputs
    do not change from epoch to epoch, and they are the costly half at 2,772 columns)."""
    i, j = pairs
    return spearman(pair_distances(np.asarray(z), i, j), x_distances)


def knn_accuracy(z: np.ndarray, labels: np.ndarray, k: int = 5, block: int = 1024) -> float:
    """Share of rows whose label is the majority label of their k nearest other rows
    (Euclidean; ties go to the smallest label). Memory: block x N distances."""
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels)
    if len(z) != len(labels):
        raise ValueError(f"{len(z)} latents but {len(labels)} labels")
    if len(z) <= k:
        raise ValueError(f"kNN with k={k} needs more than {k} rows, got {len(z)}")
    _, codes = np.unique(labels, return_inverse=True)
    sq = (z * z).sum(axis=1)
    hits = 0
    for s in range(0, len(z), block):
        e = min(len(z), s + block)
        d = sq[s:e, None] - 2 * z[s:e] @ z.T + sq[None, :]
        d[np.arange(e - s), np.arange(s, e)] = np.inf  # leave the row itself out
        hits += int((_majority(d, codes, k) == codes[s:e]).sum())
    return hits / len(z)


def _majority(distances: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Majority label code among each row's k nearest columns (ties to the smallest code)."""
    nearest = np.argpartition(distances, k, axis=1)[:, :k]
    votes = np.apply_along_axis(np.bincount, 1, codes[nearest], minlength=codes.max() + 1)
    return votes.argmax(axis=1)


def knn_cv_accuracy(z: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0) -> float:
    """k-fold cross-validated kNN accuracy: rows are dealt to `folds` seeded folds, and each fold's
    rows get the majority label of their k nearest rows (Euclidean) among the other folds. Unlike
    the leave-one-out figure, an embedding fitted on some rows can be judged on rows kept out."""
    return float(knn_cv_scores(z, [labels], [seed], k, folds)[0, 0])


def knn_cv_scores(z: np.ndarray, label_sets: Sequence[np.ndarray], seeds: Sequence[int], k: int = 5,
                  folds: int = 5, block: int = 1024) -> np.ndarray:
    """knn_cv_accuracy for several label sets and fold seeds at the cost of one: (seeds x label
    sets) accuracies from one pass of distances, `block` rows at a time (memory: block x N)."""
    z = np.asarray(z, dtype=np.float64)
    codes = [np.unique(np.asarray(labels), return_inverse=True)[1] for labels in label_sets]
    fold = [np.random.default_rng([seed, 0xF01D]).permutation(len(z)) % folds for seed in seeds]
    sq = (z * z).sum(axis=1)
    hits = np.zeros((len(seeds), len(codes)), dtype=np.int64)
    for s in range(0, len(z), block):
        e = min(len(z), s + block)
        d = sq[s:e, None] - 2 * z[s:e] @ z.T + sq[None, :]
        for i, f in enumerate(fold):
            other = np.where(f[None, :] == f[s:e, None], np.inf, d)  # only rows of the other folds vote
            for j, c in enumerate(codes):
                hits[i, j] += int((_majority(other, c, k) == c[s:e]).sum())
    return hits / len(z)
