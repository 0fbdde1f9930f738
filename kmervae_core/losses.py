"""The VAEMulti loss and its metrics, kept as sums so that they reduce exactly across ranks.

recon = squared error summed over the 2,772 features, averaged over the batch (= MSE x 2772);
KL = batch mean of -1/2 sum(1 + lv - mu^2 - e^lv); total = recon + beta * KL.
"""
from __future__ import annotations

import torch

from .kmers import KMER_GROUPS, USED_KS, KGroup

# Layout of the sums vector: rows, recon, KL, then squared error per k group (6..1; 0 if untrained).
ROWS, RECON, KL, SSE = 0, 1, 2, 3
N_SUMS = SSE + len(KMER_GROUPS)


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
             beta: float | torch.Tensor, groups: tuple[KGroup, ...] = KMER_GROUPS,
             weights: dict[int, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss averaged over the batch, sums vector for the metrics; no device sync).
    `groups` locate the trained k groups in x's columns; `weights` scale each group's
    reconstruction term (the metrics stay unweighted)."""
    sq = (recon.float() - x.float()).square()
    group_sse = [sq[:, g.local].sum(dim=1) for g in groups]
    if weights is None:
        recon_rows = sq.sum(dim=1)
    else:
        recon_rows = sum(weights[g.k] * e for g, e in zip(groups, group_sse))
    kl_rows = -0.5 * (1 + log_var.float() - mu.float().square() - log_var.float().exp()).sum(dim=1)
    total = recon_rows.mean() + beta * kl_rows.mean()
    sse = [recon_rows.new_zeros(()) for _ in USED_KS]
    for g, e in zip(groups, group_sse):
        sse[USED_KS.index(g.k)] = e.sum()
    sums = torch.stack([recon_rows.new_full((), float(len(x))), recon_rows.sum(), kl_rows.sum(), *sse]).detach()
    return total, sums


def summarise(sums: torch.Tensor, beta: float, groups: tuple[KGroup, ...] = KMER_GROUPS) -> dict[str, float]:
    """Per-row means, and MSEs of the trained groups, from (all-reduced) sums."""
    s = sums.double().tolist()
    n = max(s[ROWS], 1.0)
    out = {"rows": int(s[ROWS]), "recon": s[RECON] / n, "kl": s[KL] / n}
    out["loss"] = out["recon"] + beta * out["kl"]
    out["mse"] = sum(s[SSE + USED_KS.index(g.k)] for g in groups) / (n * sum(g.size for g in groups))
    for g in groups:
        out[f"mse_{g.k}mer"] = s[SSE + USED_KS.index(g.k)] / (n * g.size)
    return out
