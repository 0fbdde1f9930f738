"""The multinomial likelihood of k-mer counts (`--likelihood multinomial`), and the thinned views
of a row's counts it allows (`--thinning`, `--contrastive`).

A contig of length L gives L - k + 1 k-mers per k group, drawn (in this model) from one
categorical distribution per group. The decoder's outputs are per-group logits; the
reconstruction term of a row is the multinomial deviance

    sum_k w_k sum_j n_kj (log f_kj - log softmax_j(logits_k)),    n_kj = f_kj (L - k + 1),

the negative log-likelihood less its minimum (sum n log f, the saturated model), so that it has
the NLL's gradient, is 0 for a perfect fit, and stays small enough to be summed in float32.
Per row it is L x KL(data || model) summed over the groups; the batch mean of it plus β x KL is
the loss, so β = 1 is the ELBO of this model and the reference's β 0.1 weighs the prior as
lightly against the counts' evidence as it does against the reference's squared error.

The store holds CLR values c, not frequencies. Within one k group G with pseudocount p, either
CLR scope gives c_i = log(f_i + p) - m, with m constant over G (the group's own mean for per-k,
the row's mean over all 2,772 columns for global), so

    softmax_G(c)_i = (f_i + p) / sum_G (f_j + p) = (f_i + p) / (1 + |G| p)     (f sums to 1 over G),

and f_i = softmax_G(c)_i (1 + |G| p) - p exactly. The softmax alone is biased toward uniform by
|G| p / (1 + |G| p) of the mass: a third for the per-k Jeffreys pseudocount (|G| p = 0.5),
2e-3 for the 6-mers at the global 1e-6; the inversion removes it, up to the float32 rounding of
the store (clamped at 0).
"""
from __future__ import annotations

import torch

from ..store.clr import ClrSpec
from ..store.kmers import KGroup


def group_log_softmax(t: torch.Tensor, slices: list[slice]) -> torch.Tensor:
    """log softmax over each column slice of t's rows, side by side."""
    return torch.cat([t[:, s].log_softmax(1) for s in slices], 1)


def group_mean(t: torch.Tensor, slices: list[slice]) -> torch.Tensor:
    """Each column's mean over its slice, per row (t's shape)."""
    return torch.cat([t[:, s].mean(1, keepdim=True).expand(-1, s.stop - s.start) for s in slices], 1)


class Multinomial:
    """The count likelihood over the trained k `groups` (columns of x, as selected_groups gives
    them) of a store whose CLR is `clr`; its constants live on `device`."""

    def __init__(self, groups: tuple[KGroup, ...], clr: ClrSpec, device: torch.device) -> None:
        def per_column(value) -> torch.Tensor:
            return torch.cat([torch.full((g.size,), float(value(g)), dtype=torch.float32) for g in groups]).to(device)

        pseudo = clr.pseudocounts()
        self.slices = [g.local for g in groups]
        width = sum(g.size for g in groups)
        self.scope = self.slices if clr.scope == "per_k" else [slice(0, width)]  # the CLR's groups, trained columns
        self.p = per_column(lambda g: pseudo[g.k])
        self.scale = per_column(lambda g: 1 + g.size * pseudo[g.k])
        self.k_minus_1 = per_column(lambda g: g.k - 1)

    def frequencies(self, c: torch.Tensor) -> torch.Tensor:
        """The k-mer frequencies of CLR rows c (module docstring)."""
        return (group_log_softmax(c.float(), self.slices).exp() * self.scale - self.p).clamp_min(0)

    def counts(self, f: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """k-mer counts of frequency rows f of contigs of these lengths: f (L - k + 1)."""
        return f * (lengths[:, None].float() - self.k_minus_1).clamp_min(0)

    def clr_like(self, f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The CLR of frequency rows f in the store's scope and pseudocounts, on the trained
        columns, placed at the mean that CLR row c has over each scope group there (0, but for a
        global-CLR store trained on some k groups, whose CLR is centred over all 2,772 columns)."""
        logs = (f + self.p).log()
        return logs - group_mean(logs, self.scope) + group_mean(c.float(), self.scope)

    def terms(self, c: torch.Tensor, logits: torch.Tensor, lengths: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the deviance of each row and column, to be summed: the loss's term; the squared error
        of the decoded CLR against c, detached: the per-k-mer MSE the epoch line reports)."""
        f = self.frequencies(c)
        log_q = group_log_softmax(logits.float(), self.slices)
        n = self.counts(f, lengths)
        deviance = torch.xlogy(n, f) - n * log_q
        with torch.no_grad():
            sq = (self.clr_like(log_q.exp(), c) - c.float()).square()
        return deviance, sq

    def thinned(self, c: torch.Tensor, lengths: torch.Tensor, keep: float, generator: torch.Generator) -> torch.Tensor:
        """A binomially thinned view of CLR rows c, as CLR rows: each k-mer's count (rounded to a
        whole number) keeps each of its k-mers with probability `keep`; the kept counts are
        renormalised per group and CLR'd as the store's rows are (clr_like)."""
        n = self.counts(self.frequencies(c), lengths).round()
        kept = torch.binomial(n, torch.full_like(n, keep), generator=generator)
        totals = torch.cat([kept[:, s].sum(1, keepdim=True).expand(-1, s.stop - s.start) for s in self.slices], 1)
        return self.clr_like(kept / totals.clamp_min(1), c)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's loss), averaged over the 2B rows: row i of a and row i of b are a
    positive pair, every other row of both is a negative; cosine similarity over `temperature`."""
    z = torch.nn.functional.normalize(torch.cat([a, b]).float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    target = torch.arange(2 * n, device=z.device).roll(n)
    return torch.nn.functional.cross_entropy(sim, target)
