"""Priors over the latent space: N(0, I) (the reference), a learned mixture of Gaussians, and the
VampPrior (a mixture of the encoder's posteriors at K learned pseudo-inputs).

Each prior gives the KL term per latent block (one block in a flat model; see docs/experiments.md)
summed over the batch, as device tensors only (no host syncs, so the step stays capturable). The
normal prior keeps the reference's closed form; the learned ones use the single-sample estimate
log q(z|x) - log p(z) at the sampled z. A learned prior is a product of one mixture per block,
so each block's KL stays its own term.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..config import parse_prior

LOG_2PI = math.log(2 * math.pi)


def normal_kl(mu: torch.Tensor, log_var: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Closed-form KL(q(z|x) || N(0, I)) summed over the batch, one entry per block; a single
    block is exactly the reference's sum."""
    terms = 0.5 * (mu.float().square() + log_var.float().exp() - log_var.float() - 1)
    if len(sizes) == 1:
        return terms.sum().reshape(1)
    return torch.stack([t.sum() for t in terms.sum(0).split(sizes)])


def block_sums(values: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Sum the last dimension within each block: (..., D) -> (..., blocks)."""
    return torch.stack([v.sum(-1) for v in values.split(sizes, dim=-1)], dim=-1)


def posterior_log_density(log_var: torch.Tensor, eps: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """log q(z|x) per row and block at z = mu + e^(lv/2) eps, where (z - mu)^2 / e^lv = eps^2."""
    return block_sums(-0.5 * (LOG_2PI + log_var.float() + eps.float().square()), sizes)


def mixture_log_density(z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor,
                        log_weights: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """log sum_k w_k N(z_b; means_kb, diag e^log_vars_kb) per row and block b: (B, D) -> (B, blocks).
    Memory: B x K x D floats."""
    diff = z.float()[:, None, :] - means.float()[None]
    log_n = -0.5 * (LOG_2PI + log_vars.float()[None] + diff.square() * torch.exp(-log_vars.float())[None])
    return torch.logsumexp(block_sums(log_n, sizes) + log_weights.float()[None, :, None], dim=1)


@contextmanager
def running_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm on running statistics (eval mode) inside the block, the previous mode after."""
    was = module.training
    module.train(False)
    try:
        yield
    finally:
        module.train(was)


class NormalPrior(nn.Module):
    """N(0, I): the reference, no parameters."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)

    def kl(self, encoder: nn.Module, mu: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor,
           eps: torch.Tensor) -> torch.Tensor:
        return normal_kl(mu, log_var, self.sizes)


class _LearnedPrior(nn.Module):
    """A mixture prior: KL by the single-sample estimate, from the components it gives."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)

    def components(self, encoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, encoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """log p(z) per row and block."""
        return mixture_log_density(z, *self.components(encoder), self.sizes)

    def kl(self, encoder: nn.Module, mu: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor,
           eps: torch.Tensor) -> torch.Tensor:
        return (posterior_log_density(log_var, eps, self.sizes) - self.log_prob(encoder, z)).sum(0)


class MixturePrior(_LearnedPrior):
    """K diagonal Gaussians per block with learned means, log-variances and weights. Means start
    as N(0, I) draws (from the seeded generator, so every rank starts alike), variances at 1,
    weights equal."""

    def __init__(self, k: int, sizes: list[int]) -> None:
        super().__init__(sizes)
        latent = sum(sizes)
        self.means = nn.Parameter(torch.randn(k, latent))
        self.log_vars = nn.Parameter(torch.zeros(k, latent))
        self.logits = nn.Parameter(torch.zeros(k))

    def components(self, encoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.means, self.log_vars, torch.log_softmax(self.logits, dim=0)


class VampPrior(_LearnedPrior):
    """p(z) = 1/K sum_k q(z | u_k) with learned pseudo-inputs u_k (CLR rows; they start as N(0, I)
    draws). The pseudo-inputs pass through the encoder with BatchNorm on its running statistics:
    they then neither enter the batch statistics of the data nor move the running ones, their
    encoding is the one the exported encoder gives, and it needs no collective, so every world
    size computes the same prior."""

    def __init__(self, k: int, n_features: int, sizes: list[int]) -> None:
        super().__init__(sizes)
        self.pseudo_inputs = nn.Parameter(torch.randn(k, n_features))

    def components(self, encoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with running_statistics(encoder):
            means, log_vars = encoder(self.pseudo_inputs)
        k = self.pseudo_inputs.shape[0]
        return means, log_vars, self.pseudo_inputs.new_full((k,), -math.log(k))


def make_prior(spec: str, sizes: list[int], n_features: int) -> nn.Module:
    """The prior a `--prior` setting names, over latent blocks of `sizes`."""
    kind, k = parse_prior(spec)
    if kind == "mog":
        return MixturePrior(k, sizes)
    if kind == "vamp":
        return VampPrior(k, n_features, sizes)
    return NormalPrior(sizes)
