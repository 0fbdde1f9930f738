"""How well an embedding separates known groups: leave-one-out kNN accuracy of labels."""
from __future__ import annotations

import numpy as np


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
        nearest = np.argpartition(d, k, axis=1)[:, :k]
        votes = np.apply_along_axis(np.bincount, 1, codes[nearest], minlength=codes.max() + 1)
        hits += int((votes.argmax(axis=1) == codes[s:e]).sum())
    return hits / len(z)
