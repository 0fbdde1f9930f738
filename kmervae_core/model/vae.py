"""The VAEMulti reference model, in torch: encoder 2772 -> 1024 -> 512 -> (z_mean, z_log_var),
decoder 256 -> 512 -> 1024 -> 2772, Dense + BatchNorm + LeakyReLU(0.2) between.

BatchNorm uses Keras's defaults (momentum 0.99, i.e. torch momentum 0.01; epsilon 1e-3) and
statistics over the *global* batch: under DDP the per-feature sums are all-reduced, so a run on
N ranks computes what one process computes on the whole batch (torch's SyncBatchNorm does this
on GPUs only; this one also runs on gloo).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..config import REFERENCE_HIDDEN, REFERENCE_LATENT
from ..store.kmers import N_FEATURES
from .priors import make_prior

LOG_VAR_RANGE = (-20.0, 2.0)
KERAS_BN = dict(momentum=0.01, eps=1e-3)


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss depends on
    the summed statistics, so each rank's input gets the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the batch of every rank.

    On one rank the global batch is this rank's batch, so torch's own fused kernel computes it
    (two kernels a layer, forward and backward, instead of some forty small ones: this is most of
    what a captured step at batch 1024 spends, docs/benchmarks.md). Across ranks the per-feature
    sums are all-reduced (`global_stats_forward`), which gloo can do too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return self.global_stats_forward(x)
        return super().forward(x)

    def global_stats_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training-mode BatchNorm from per-feature sums, all-reduced where there are several
        ranks; the same result as the fused kernel on the whole global batch."""
        xf = x.float()
        c = xf.shape[1]
        stats = torch.cat([xf.sum(0), (xf * xf).sum(0), xf.new_full((1,), xf.shape[0])])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            stats = _SumAcrossRanks.apply(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp_min(1.0), self.momentum)
            self.num_batches_tracked += 1
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(x.dtype)


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), GlobalBatchNorm1d(n_out, **KERAS_BN), nn.LeakyReLU(0.2)]


def _glorot(module: nn.Module) -> None:
    """Keras's Dense initialisation: Glorot-uniform weights, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """`columns` (a buffer, saved in the state dict) names the store columns the encoder reads,
    so an exported encoder trained on some k groups is applied to the same columns later."""

    def __init__(self, n_features: int = N_FEATURES, hidden: tuple[int, ...] = REFERENCE_HIDDEN, latent: int = REFERENCE_LATENT,
                 columns: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("columns", torch.arange(n_features) if columns is None else torch.as_tensor(columns))
        sizes = (n_features, *hidden)
        self.body = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in _block(a, b)])
        self.z_mean = nn.Linear(sizes[-1], latent)
        self.z_log_var = nn.Linear(sizes[-1], latent)
        self.apply(_glorot)

    @property
    def latent(self) -> int:
        return self.z_mean.out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.z_mean(h), self.z_log_var(h).clamp(*LOG_VAR_RANGE)


class BlockEncoder(nn.Module):
    """Per-scale latents: one Encoder per block, each reading only its own k groups, their
    (z_mean, z_log_var) concatenated in block order. `columns` are the store columns read, as in
    Encoder; each block's own `columns` buffer holds its positions among them."""

    def __init__(self, n_features: int, hidden: tuple[int, ...], sizes: list[int], blocks: list[torch.Tensor],
                 columns: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("columns", torch.arange(n_features) if columns is None else torch.as_tensor(columns))
        self.blocks = nn.ModuleList(Encoder(len(cols), hidden, size, torch.as_tensor(cols))
                                    for cols, size in zip(blocks, sizes))

    @property
    def latent(self) -> int:
        return sum(block.latent for block in self.blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [block(x.index_select(1, block.columns)) for block in self.blocks]
        return torch.cat([mu for mu, _ in parts], 1), torch.cat([lv for _, lv in parts], 1)


class Decoder(nn.Module):
    def __init__(self, n_features: int = N_FEATURES, hidden: tuple[int, ...] = REFERENCE_HIDDEN, latent: int = REFERENCE_LATENT) -> None:
        super().__init__()
        sizes = (latent, *reversed(hidden))
        self.body = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in _block(a, b)])
        self.out = nn.Linear(sizes[-1], n_features)
        self.apply(_glorot)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))


class VAE(nn.Module):
    """The reference by default; `prior` (priors.py) and `blocks` (per-scale latents: each
    block's input positions, with `sizes` their latent sizes) give the variants. The decoder
    always reads the whole concatenated z."""

    def __init__(self, n_features: int = N_FEATURES, hidden: tuple[int, ...] = REFERENCE_HIDDEN, latent: int = REFERENCE_LATENT,
                 columns: torch.Tensor | None = None, prior: str = "normal",
                 blocks: list[torch.Tensor] | None = None, sizes: list[int] | None = None) -> None:
        super().__init__()
        sizes = list(sizes) if blocks else [latent]
        self.encoder = (BlockEncoder(n_features, hidden, sizes, blocks, columns) if blocks
                        else Encoder(n_features, hidden, latent, columns))
        self.decoder = Decoder(n_features, hidden, latent)
        self.prior = make_prior(prior, sizes, n_features)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(reconstruction, z_mean, z_log_var, KL summed over the batch per latent block); eps is
        the reparameterisation noise, passed in so that it can be drawn per global batch (the
        same on any world size)."""
        mu, log_var = self.encoder(x)
        z = mu + torch.exp(0.5 * log_var) * eps
        return self.decoder(z), mu, log_var, self.prior.kl(self.encoder, mu, log_var, z, eps)


def keras_param_count(module: nn.Module) -> int:
    """Parameters as Keras counts them: trainable weights plus BatchNorm moving mean and variance."""
    bn = sum(m.running_mean.numel() + m.running_var.numel() for m in module.modules()
             if isinstance(m, nn.BatchNorm1d))
    return sum(p.numel() for p in module.parameters()) + bn


def encoder_from_state(state: dict) -> nn.Module:
    """An Encoder or BlockEncoder rebuilt from an exported state dict (shapes give the architecture)."""
    if "blocks.0.columns" not in state:
        features, hidden, latent = architecture(state)
        return Encoder(features, hidden, latent)
    n = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    subs = [{k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")} for i in range(n)]
    shapes = [architecture(sub) for sub in subs]
    return BlockEncoder(len(state["columns"]), shapes[0][1], [s[2] for s in shapes], [sub["columns"] for sub in subs])


def architecture(encoder_state: dict) -> tuple[int, tuple[int, ...], int]:
    """(features, hidden sizes, latent size) of an encoder state dict, read from weight shapes."""
    linears = sorted(k for k in encoder_state if k.startswith("body.") and k.endswith(".weight")
                     and encoder_state[k].dim() == 2)
    linears.sort(key=lambda k: int(k.split(".")[1]))
    hidden = tuple(int(encoder_state[k].shape[0]) for k in linears)
    features = int(encoder_state[linears[0]].shape[1])
    return features, hidden, int(encoder_state["z_mean.weight"].shape[0])
