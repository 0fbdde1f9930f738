"""The k-mer column map of all_kmers.npy: the one place that knows where each k group lives.

all_kmers.npy holds column 0 (a per-row value), then canonical k-mer frequencies for
k = 7..1, each group normalised to sum 1. kmervae uses the 6..1-mer groups: 2,772 columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BASES = "ACGT"
SOURCE_KS = (7, 6, 5, 4, 3, 2, 1)  # order of the groups in the source file
USED_KS = (6, 5, 4, 3, 2, 1)  # order of the groups in the store


def canonical_count(k: int) -> int:
    """Number of canonical k-mers: 4^k/2 for odd k; even k adds the 4^(k/2) palindromes."""
    return 4**k // 2 if k % 2 else (4**k + 4 ** (k // 2)) // 2


@dataclass(frozen=True)
class KGroup:
    k: int
    source: slice  # columns in all_kmers.npy
    local: slice  # columns in the store's 2,772

    @property
    def size(self) -> int:
        return self.local.stop - self.local.start


def _build_groups() -> tuple[KGroup, ...]:
    groups, src, local = [], 1, 0
    for k in SOURCE_KS:
        n = canonical_count(k)
        if k in USED_KS:
            groups.append(KGroup(k, slice(src, src + n), slice(local, local + n)))
            local += n
        src += n
    return tuple(groups)


KMER_GROUPS: tuple[KGroup, ...] = _build_groups()
SOURCE_COLUMNS: int = 1 + sum(canonical_count(k) for k in SOURCE_KS)  # 10,965
USED_SOURCE: slice = slice(KMER_GROUPS[0].source.start, KMER_GROUPS[-1].source.stop)  # 8193:10965
N_FEATURES: int = USED_SOURCE.stop - USED_SOURCE.start  # 2,772


def group(k: int) -> KGroup:
    """The group of k (6..1); a clear error for any other k."""
    for g in KMER_GROUPS:
        if g.k == k:
            return g
    raise ValueError(f"k={k} is not a trained k-mer size; choose from {list(USED_KS)}")


def selected_groups(ks: list[int] | tuple[int, ...]) -> tuple[np.ndarray, tuple[KGroup, ...]]:
    """For training on some k groups: their store columns (in store order, 6..1) and the
    groups with `local` re-based onto those columns."""
    wanted = {group(k).k for k in ks}
    columns, groups, start = [], [], 0
    for g in KMER_GROUPS:
        if g.k in wanted:
            columns.append(np.arange(g.local.start, g.local.stop))
            groups.append(KGroup(g.k, g.source, slice(start, start + g.size)))
            start += g.size
    return np.concatenate(columns), tuple(groups)


@lru_cache(maxsize=None)
def canonical_index(k: int) -> np.ndarray:
    """Map every k-mer code (2 bits a base, A=0 C=1 G=2 T=3, first base most significant) to
    its column within the k group. Columns follow the lexicographic order of the canonical
    k-mers, where canonical is the smaller code of a k-mer and its reverse complement."""
    codes = np.arange(4**k, dtype=np.int64)
    rc = np.zeros_like(codes)
    rest = codes.copy()
    for _ in range(k):
        rc = (rc << 2) | (3 - (rest & 3))
        rest >>= 2
    canon = np.minimum(codes, rc)
    uniques, index = np.unique(canon, return_inverse=True)
    assert len(uniques) == canonical_count(k)
    index = index.astype(np.int32)
    index.flags.writeable = False
    return index


def canonical_kmers(k: int) -> list[str]:
    """The canonical k-mers of one group, in column order (for labelling plots and tables)."""
    index = canonical_index(k)
    first = np.unique(index, return_index=True)[1]
    return ["".join(BASES[(c >> (2 * (k - 1 - i))) & 3] for i in range(k)) for c in first]


def block_columns(ks: list[int] | tuple[int, ...], blocks: list[list[int]]) -> list[np.ndarray]:
    """For per-scale latents: each block's columns as positions among `selected_groups(ks)`'s
    columns (the trained input), in store order."""
    _, groups = selected_groups(ks)
    local = {g.k: np.arange(g.local.start, g.local.stop) for g in groups}
    return [np.concatenate([local[g.k] for g in groups if g.k in set(block)]) for block in blocks]
