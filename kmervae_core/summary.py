"""The metric summary: the one definition of the figures a split's sums reduce to (losses.summarise)
and of their names, which the epoch line, history.json (prefixed `train_`/`val_`), Prometheus
(metrics.py), the report and the run comparison all read. A new figure gets its name here.
No torch: the report and comparison read history files without it."""
from __future__ import annotations

from typing import Mapping

KL_BLOCK_PREFIX = "kl_block_"
SPLITS = ("train", "val", "latent")  # the prefixes of history.json's figures (latent: validator.py's metrics)


def mse_key(k: int) -> str:
    """The MSE of one trained k-mer group."""
    return f"mse_{k}mer"


def kl_block_key(block: str) -> str:
    """The KL of one per-scale latent block (its name: the k-mers it reads, e.g. "5+4")."""
    return KL_BLOCK_PREFIX + block


def history_key(split: str, key: str) -> str:
    """A figure's name in history.json: "val_loss", "train_mse_6mer", "latent_knn", ..."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return f"{split}_{key}"


class Summary(dict):
    """A split's figures by name: "rows" seen, per-row "recon" and "kl", "loss" (recon + β KL), "mse"
    over all trained features, then mse_key(k) of each trained k and kl_block_key(name) of each
    latent block, and "contrastive" (the NT-Xent per row) where that term is on; a dict, as
    history.json stores it."""

    def history(self, split: str) -> dict[str, float]:
        return {history_key(split, key): v for key, v in self.items()}


def kl_by_block(summary: Mapping[str, float]) -> dict[str, float]:
    """The per-block KL figures of a summary, by block name (none for a flat latent)."""
    return {key[len(KL_BLOCK_PREFIX):]: v for key, v in summary.items() if key.startswith(KL_BLOCK_PREFIX)}


def kl_blocks_in_history(record: dict, split: str) -> list[str]:
    """The latent block names a history.json record holds figures of, for `split`."""
    prefix = history_key(split, KL_BLOCK_PREFIX)
    return sorted(key[len(prefix):] for key in record if key.startswith(prefix))
