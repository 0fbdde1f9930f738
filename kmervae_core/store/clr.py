"""Centred log-ratio transform of k-mer frequencies.

CLR(x)_i = log(x_i + p) - mean_{j in G} log(x_j + p), over either all 2,772 columns
(scope "global", p = 1e-6: the VAEMulti reference) or each k group (scope "per_k",
p = 0.5/|G|: a Jeffreys pseudocount that helps short contigs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kmers import KMER_GROUPS, N_FEATURES

SCOPES = ("global", "per_k")
SCOPE_FLAGS = ("global", "per-k")  # the scopes as `ingest --clr` and `train --store-clr` spell them
GLOBAL_PSEUDOCOUNT = 1e-6


@dataclass(frozen=True)
class ClrSpec:
    """What the store's `clr` array holds; recorded in the store attributes."""

    scope: str = "global"
    pseudocount: float | None = None  # None: the scope's default

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown CLR scope {self.scope!r}; choose from {', '.join(SCOPES)}")
        if self.pseudocount is not None and not self.pseudocount > 0:
            raise ValueError(f"the pseudocount must be positive, got {self.pseudocount}")

    @property
    def flag(self) -> str:
        """The scope as the command lines spell it."""
        return SCOPE_FLAGS[SCOPES.index(self.scope)]

    def pseudocounts(self) -> dict[int, float]:
        """Pseudocount per k group."""
        if self.pseudocount is not None:
            return {g.k: float(self.pseudocount) for g in KMER_GROUPS}
        if self.scope == "global":
            return {g.k: GLOBAL_PSEUDOCOUNT for g in KMER_GROUPS}
        return {g.k: 0.5 / g.size for g in KMER_GROUPS}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "ClrSpec":
        """The spec a store recorded with `to_attrs`."""
        spec = cls(attrs["scope"])
        recorded = {int(k): float(p) for k, p in attrs["pseudocount"].items()}
        if recorded == spec.pseudocounts():
            return spec
        return cls(attrs["scope"], pseudocount=next(iter(recorded.values())))

    def to_attrs(self) -> dict:
        return {"name": "clr", "scope": self.scope,
                "pseudocount": {str(k): p for k, p in self.pseudocounts().items()}}


def clr(x: np.ndarray, spec: ClrSpec, out: np.ndarray | None = None) -> np.ndarray:
    """CLR of rows of 2,772 k-mer frequencies (6..1-mers), computed in float64 and written
    to `out` (float32 by default); memory is a float64 copy of x."""
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"expected rows of {N_FEATURES} columns, got shape {x.shape}")
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    logs = np.asarray(x, dtype=np.float64).copy()
    for g in KMER_GROUPS:
        logs[:, g.local] += spec.pseudocounts()[g.k]
    np.log(logs, out=logs)
    groups = [slice(0, N_FEATURES)] if spec.scope == "global" else [g.local for g in KMER_GROUPS]
    for cols in groups:
        logs[:, cols] -= logs[:, cols].mean(axis=1, keepdims=True)
    out[...] = logs
    return out
