"""The VAEMulti loss and its metrics, kept as sums so that they reduce exactly across ranks.

recon = squared error summed over the 2,772 features, averaged over the batch (= MSE x 2772);
KL = batch mean of -1/2 sum(1 + lv - mu^2 - e^lv); total = recon + beta * KL.
"""
from __future__ import annotations

import torch

from .kmers import KMER_GROUPS

# Layout of the sums vector: rows, recon, KL, then squared error per k group (6..1).
ROWS, RECON, KL, SSE = 0, 1, 2, 3
N_SUMS = SSE + len(KMER_GROUPS)


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
             beta: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss averaged over the batch, sums vector for the metrics; no device sync)."""
    sq = (recon.float() - x.float()).square()
    recon_rows = sq.sum(dim=1)
    kl_rows = -0.5 * (1 + log_var.float() - mu.float().square() - log_var.float().exp()).sum(dim=1)
    total = recon_rows.mean() + beta * kl_rows.mean()
    sums = torch.stack([recon_rows.new_tensor(float(len(x))), recon_rows.sum(), kl_rows.sum(),
                        *[sq[:, g.local].sum() for g in KMER_GROUPS]]).detach()
    return total, sums


def summarise(sums: torch.Tensor, beta: float) -> dict[str, float]:
    """Per-row means and MSEs from (all-reduced) sums."""
    s = sums.double().tolist()
    n = max(s[ROWS], 1.0)
    out = {"rows": int(s[ROWS]), "recon": s[RECON] / n, "kl": s[KL] / n}
    out["loss"] = out["recon"] + beta * out["kl"]
    out["mse"] = sum(s[SSE:]) / (n * sum(g.size for g in KMER_GROUPS))
    for i, g in enumerate(KMER_GROUPS):
        out[f"mse_{g.k}mer"] = s[SSE + i] / (n * g.size)
    return out
