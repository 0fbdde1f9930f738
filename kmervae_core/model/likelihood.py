"""The multinomial likelihood of k-mer counts (`--likelihood multinomial`), and the thinned views
of a row's counts it allows (`--thinning`, `--contrastive`).

A contig of length L gives L - k + 1 k-mers per k group, drawn (in this model) from one
categorical distribution per group. The decoder's outputs are per-group logits; the
reconstruction term of a row is the multinomial deviance

    sum_k w_k sum_j n_kj (log f_kj - log softmax_j(logits_k)),    n_kj = f_kj (L - k + 1),

the negative log-likelihood less its minimum (sum n log f, the saturated model), so that it has
the NLL's gradient, is 0 for a perfect fit, and stays small enough to be summed in float32.
Per row it is (L - k + 1) x KL(data || model) summed over the groups; the batch mean of it plus
β x KL is the loss, so β = 1 is the ELBO of this model (docs/experiments.md, "Scale").

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


class _CountNLL(torch.autograd.Function):
    """-sum_j n_j log softmax_j(logits) over each group, summed over the batch, and the softmax q
    itself (no gradient); the gradient is q N - n per group, N the group's total count. One
    function, so that the batch is read and written a few times in place (the step's budget,
    benchmarks/step.py), not once per autograd node."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, n: torch.Tensor, totals: torch.Tensor, slices: list[slice]):
        q = torch.empty_like(logits)
        tops = torch.stack([logits[:, s].amax(1) for s in slices], 1)  # a safe shift per group
        for i, s in enumerate(slices):
            torch.sub(logits[:, s], tops[:, i:i + 1], out=q[:, s])
        q.exp_()
        z = torch.stack([q[:, s].sum(1) for s in slices], 1)
        for i, s in enumerate(slices):
            q[:, s] /= z[:, i:i + 1]
        value = (totals * (z.log() + tops)).sum() - torch.dot(n.flatten(), logits.flatten())
        ctx.save_for_backward(q, n, totals)
        ctx.slices = slices
        ctx.mark_non_differentiable(q)
        return value, q

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _):
        q, n, totals = ctx.saved_tensors
        out = torch.empty_like(q)
        for i, s in enumerate(ctx.slices):
            torch.mul(q[:, s], totals[:, i:i + 1], out=out[:, s])
        return out.sub_(n).mul_(grad), None, None, None


class Multinomial:
    """The count likelihood over the trained k `groups` (columns of x, as selected_groups gives
    them) of a store whose CLR is `clr`; its constants live on `device`.

    Written for few passes over the batch (benchmarks/step.py holds it to a tenth of the step):
    a per-group value is applied to its columns in place, group by group, and the log-softmax is
    never formed: sum_j n_j log softmax_j(l) = n . l - N log sum_j exp(l_j) per group."""

    def __init__(self, groups: tuple[KGroup, ...], clr: ClrSpec, device: torch.device) -> None:
        pseudo = clr.pseudocounts()
        self.slices = [g.local for g in groups]
        self.scope = self.slices if clr.scope == "per_k" else [slice(0, sum(g.size for g in groups))]  # CLR's groups
        self.k = [g.k for g in groups]
        self.pseudo = [pseudo[g.k] for g in groups]
        self.scale = [1 + g.size * pseudo[g.k] for g in groups]
        self.p = torch.cat([torch.full((g.size,), pseudo[g.k]) for g in groups]).to(device)

    def sums(self, t: torch.Tensor) -> torch.Tensor:
        """Per-group sums of rows t: (rows, groups)."""
        return torch.stack([t[:, s].sum(1) for s in self.slices], 1)

    def frequencies(self, c: torch.Tensor) -> torch.Tensor:
        """The k-mer frequencies of CLR rows c (module docstring)."""
        f = (c - c.amax(1, keepdim=True)).exp_()  # a CLR is bounded: one shift per row is safe
        z = self.sums(f)
        for i, s in enumerate(self.slices):
            f[:, s].mul_(self.scale[i] / z[:, i:i + 1]).sub_(self.pseudo[i])
        return f.clamp_min_(0)

    def counts(self, f: torch.Tensor, lengths: torch.Tensor, weights: list[float] | None = None) -> torch.Tensor:
        """k-mer counts of frequency rows f of contigs of these lengths, f (L - k + 1), each
        group's times its weight where given."""
        n = torch.empty_like(f)
        lengths = lengths.float()
        for i, s in enumerate(self.slices):
            per_row = (lengths - (self.k[i] - 1)).clamp_min(0) * (1.0 if weights is None else weights[i])
            torch.mul(f[:, s], per_row[:, None], out=n[:, s])
        return n

    def gap(self, f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The CLR of frequency rows f in the store's scope and pseudocounts, on the trained
        columns, less CLR rows c, each placed at the mean that c has over each scope group there
        (0, but for a global-CLR store trained on some k groups, centred over all 2,772 columns):
        clr_like(f, c) - c, computed in place."""
        u = (f + self.p).log_().sub_(c)
        for s in self.scope:
            u[:, s] -= u[:, s].mean(1, keepdim=True)
        return u

    def clr_like(self, f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The CLR of frequency rows f as the store's rows c are CLR'd (gap)."""
        return self.gap(f, c).add_(c)

    def terms(self, c: torch.Tensor, logits: torch.Tensor, lengths: torch.Tensor,
              weights: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the batch's deviance summed, each group's term times its weight where given: the
        loss's term; the squared error of the decoded CLR against c per row and column,
        detached: the per-k-mer MSE the epoch line reports)."""
        c = c.float()
        with torch.no_grad():
            f = self.frequencies(c)
            n = self.counts(f, lengths, weights)
            # sum n log f, the deviance's constant (n is 0 where f is; torch.xlogy is 5x slower on CPU)
            saturated = torch.dot(n.flatten(), f.clamp_min_(1e-30).log_().flatten())
        nll, q = _CountNLL.apply(logits.float(), n, self.sums(n), self.slices)
        with torch.no_grad():
            sq = self.gap(q, c).square_()
        return nll + saturated, sq

    def thinned(self, c: torch.Tensor, lengths: torch.Tensor, keep: float, generator: torch.Generator) -> torch.Tensor:
        """A binomially thinned view of CLR rows c, as CLR rows: each k-mer's count (rounded to a
        whole number) keeps each of its k-mers with probability `keep`; the kept counts are
        renormalised per group and CLR'd as the store's rows are (clr_like)."""
        with torch.no_grad():
            c = c.float()
            kept = torch.binomial(self.counts(self.frequencies(c), lengths).round_(), torch.full_like(c, keep),
                                  generator=generator)
            totals = self.sums(kept).clamp_min_(1)
            for i, s in enumerate(self.slices):
                kept[:, s] /= totals[:, i:i + 1]
            return self.clr_like(kept, c)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's loss), averaged over the 2B rows: row i of a and row i of b are a
    positive pair, every other row of both is a negative; cosine similarity over `temperature`."""
    z = torch.nn.functional.normalize(torch.cat([a, b]).float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    target = torch.arange(2 * n, device=z.device).roll(n)
    return torch.nn.functional.cross_entropy(sim, target)
