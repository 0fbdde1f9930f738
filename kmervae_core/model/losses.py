"""The VAEMulti loss and its metrics, kept as sums so that they reduce exactly across ranks.

recon = squared error summed over the 2,772 features, averaged over the batch (= MSE x 2772),
or under `--likelihood multinomial` the count deviance (likelihood.py), averaged over the batch;
KL = batch mean of -1/2 sum(1 + lv - mu^2 - e^lv) (the reference's N(0, I) prior; a learned
prior gives its own, priors.py), per latent block too; total = recon + beta * KL (+ the
contrastive term's weight x NT-Xent, `--contrastive`, reported on its own).
"""
from __future__ import annotations

import numpy as np
import torch

from ..store.kmers import KMER_GROUPS, USED_KS, KGroup
from .likelihood import Multinomial
from .priors import normal_kl
from ..summary import Summary, kl_block_key, mse_key

# Layout of the sums vector: rows, recon, KL, squared error per k group (6..1; 0 if untrained),
# then KL per latent block (at most one block per k group; 0 where there are fewer blocks), then
# the contrastive term x rows (0 where off; last, so that older checkpoints' sums pad to it).
ROWS, RECON, KL, SSE = 0, 1, 2, 3
KL_BLOCK = SSE + len(KMER_GROUPS)
CONTRASTIVE = KL_BLOCK + len(KMER_GROUPS)
N_SUMS = CONTRASTIVE + 1


def length_weights(lengths: np.ndarray, power: float) -> np.ndarray:
    """Each row's reconstruction weight, length^power scaled to mean 1 (float32): a k-mer
    frequency's sampling variance falls as 1/length, so power 1 weighs rows by inverse variance,
    and the mean of 1 keeps the loss on the reference's scale."""
    w = np.asarray(lengths, np.float64) ** power
    return (w / w.mean()).astype(np.float32)


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
             beta: float | torch.Tensor, groups: tuple[KGroup, ...] = KMER_GROUPS,
             weights: dict[int, float] | None = None, kl: torch.Tensor | None = None,
             row_weights: torch.Tensor | None = None, counts: Multinomial | None = None,
             lengths: torch.Tensor | None = None, contrastive: torch.Tensor | None = None,
             contrastive_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss averaged over the batch, sums vector for the metrics; no device sync).
    `groups` locate the trained k groups in x's columns; `weights` scale each group's
    reconstruction term and `row_weights` each row's (the metrics stay unweighted); `kl` is the
    batch's KL per latent block from the model's prior (default: the reference's N(0, I) over
    one block). With `counts` (and the rows' contig `lengths`), `recon` holds per-group logits
    and the term is the multinomial deviance; `contrastive` is the batch's NT-Xent, added at
    `contrastive_weight`.

    Written for few kernels (a captured step at batch 1024 is bound by their count): the
    gradient flows through one sum of squares; the per-k sums come from the detached column
    sums, cut at the group boundaries of one float64 running sum."""
    if counts is None:
        sq = (recon.float() - x.float()).square()
        weighted = sq if weights is None else sq * torch.cat([sq.new_full((g.size,), weights[g.k]) for g in groups])
        recon_sum = (weighted if row_weights is None else weighted * row_weights[:, None]).sum()
    else:
        recon_sum, sq = counts.terms(x, recon, lengths, None if weights is None else [weights[g.k] for g in groups])
    kl = normal_kl(mu, log_var, [mu.shape[1]]) if kl is None else kl
    kl_sum = kl.sum()
    total = (recon_sum + beta * kl_sum) / len(x)
    contrast = recon_sum.new_zeros(()) if contrastive is None else contrastive.float()
    total = total if contrastive is None else total + contrastive_weight * contrast
    with torch.no_grad():
        running = torch.nn.functional.pad(sq.sum(0).double().cumsum(0), (1, 0))
        ends = {g.k: (g.local.start, g.local.stop) for g in groups}
        at = torch.stack([running[b] for k in USED_KS for b in ends.get(k, (0, 0))])
        head = torch.stack([recon_sum.new_full((), float(len(x))), recon_sum, kl_sum])
        blocks = torch.nn.functional.pad(kl.detach().double(), (0, CONTRASTIVE - KL_BLOCK - len(kl)))
        sums = torch.cat([head.double(), at[1::2] - at[0::2], blocks, (contrast.detach() * len(x)).double()[None]])
    return total, sums


def summarise(sums: torch.Tensor, beta: float, groups: tuple[KGroup, ...] = KMER_GROUPS,
              blocks: tuple[str, ...] = ()) -> Summary:
    """Per-row means, MSEs of the trained groups and, for per-scale latents, the KL of each
    named block, from (all-reduced) sums; the names are summary.py's."""
    s = sums.double().tolist()
    n = max(s[ROWS], 1.0)
    out = Summary(rows=int(s[ROWS]), recon=s[RECON] / n, kl=s[KL] / n)
    out["loss"] = out["recon"] + beta * out["kl"]
    out["mse"] = sum(s[SSE + USED_KS.index(g.k)] for g in groups) / (n * sum(g.size for g in groups))
    for g in groups:
        out[mse_key(g.k)] = s[SSE + USED_KS.index(g.k)] / (n * g.size)
    for i, name in enumerate(blocks):
        out[kl_block_key(name)] = s[KL_BLOCK + i] / n
    if s[CONTRASTIVE]:
        out["contrastive"] = s[CONTRASTIVE] / n
    return out
