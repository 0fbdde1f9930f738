"""The end-of-epoch measurements that do not train: the validation loss over every validation
row (each rank its own, reduced), and the latent metrics of a fixed sample of the store's rows
(rank 0 encodes it, every rank gets the figures, so that all make the same best-epoch decision)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file
from ..config import TrainConfig
from ..distributed import DistContext, all_reduce
from ..errors import KmervaeError
from ..evaluation.report import SAMPLE_LATENTS
from ..evaluation.embedding import (LATENT_READ_AT_ONCE, active_units, distance_spearman, knn_accuracy,
                                   pair_distances, sample_pairs, sample_rows)
from ..feed.rank_feed import Feed
from ..model.losses import N_SUMS, summarise, vae_loss
from .step_runner import StepRunner
from ..store.contract import LABELS, open_array, read_rows

MIN_HELDOUT = 5  # the latent metrics need more validation rows than this


class Validator:
    def __init__(self, cfg: TrainConfig, ctx: DistContext, model: torch.nn.Module, feed: Feed,
                 runner: StepRunner, columns: np.ndarray, blocks: tuple[str, ...]) -> None:
        self.cfg, self.ctx, self.model, self.feed, self.runner, self.blocks = cfg, ctx, model, feed, runner, blocks
        self.run_dir = Path(cfg.out)
        self.val_rows = len(feed.val_stream.split.val_rows())
        if cfg.latent_sample:
            self._refuse()
        self.heldout = self._heldout(columns) if ctx.is_main and cfg.latent_sample else None
        self.sample_z: np.ndarray | None = None  # the latent sample's latents at the last epoch's end

    def keep_latents(self, epoch: int) -> None:
        """Rank 0 writes the latent sample's latents from this epoch's encoder, with the epoch
        (1-based, as history.json), to SAMPLE_LATENTS: called for the best epoch, so that the
        report's projection shows the encoder train.encode is given (vae_multi_encoder_best.pt)."""
        if self.heldout is None or self.sample_z is None:
            return
        labels = self.heldout["labels"]
        with atomic_file(self.run_dir / SAMPLE_LATENTS) as f:
            np.savez(f, z=self.sample_z, rows=self.heldout["rows"], epoch=epoch + 1,
                     **({"labels": labels} if labels is not None else {}))

    def _refuse(self) -> None:
        """Refuse a --select-by the store cannot serve, on every rank (from the split and the
        store's metadata, which every rank reads), so that no rank waits for one that refused."""
        cfg, rows = self.cfg, self.val_rows
        if cfg.select_by != "val_loss" and rows <= MIN_HELDOUT:
            raise KmervaeError(f"--select-by {cfg.select_by} needs validation rows; this split has {rows}")
        if cfg.select_by == "knn" and not self.feed.train_stream.info.has_labels:
            raise KmervaeError("--select-by knn needs a store with labels (python -m ingest ... --labels LABELS.npy)")

    def _heldout(self, columns: np.ndarray) -> dict | None:
        """A fixed seeded sample of the store's rows (CLR, labels, distance pairs) for the latent
        metrics; None where the split holds too few validation rows (then there is no validation pass).

        The rows are drawn from chunks spread over the whole store (embedding.sample_rows), not
        from the validation chunks: a store in file order holds a few samples' (genomes') rows
        in each chunk, so a sample of a few validation chunks holds a few labels and its kNN
        reads far above the figure over all rows (0.960 against 0.594 in issue 22). The encoder
        is unsupervised, so rows it trained on judge it as binning does."""
        cfg = self.cfg
        if self.val_rows <= MIN_HELDOUT:
            return None
        info = self.feed.train_stream.info
        rows = sample_rows(info.rows, info.chunk_rows, cfg.latent_sample, cfg.seed)
        labels = read_rows(cfg.data, open_array(cfg.data, LABELS), rows) if info.has_labels else None
        x = read_rows(cfg.data, info.clr_array, rows, at_once=LATENT_READ_AT_ONCE)  # a few chunks decoded at a time
        x = np.asarray(x, dtype=np.float32)[:, columns]
        pairs = sample_pairs(len(rows), cfg.latent_pairs, cfg.seed)
        return {"rows": rows, "x": x, "labels": labels, "pairs": pairs, "x_distances": pair_distances(x, *pairs)}

    def shortfall(self) -> str | None:
        """One line on what the run goes without for want of validation rows, or None: said at
        the start, so that a run's "best val_loss" is never silently its training loss."""
        cfg, split, rows = self.cfg, self.feed.val_stream.split, self.val_rows
        if rows > MIN_HELDOUT or (rows and not cfg.latent_sample):
            return None
        why = ("--val-fraction 0" if cfg.val_fraction == 0 else
               "--val-split random holds out whole chunks and the store is one chunk: ingest with a smaller "
               "--chunk-rows, or use --val-split tail" if cfg.val_split == "random" and len(split.length) == 1 else
               f"the split holds {rows} validation rows")
        if rows:
            return f"latent metrics: off ({why}; they need more than {MIN_HELDOUT})"
        return (f"validation: none ({why}); vae_multi_best.pt tracks the training loss"
                + (" and the latent metrics are off" if cfg.latent_sample else ""))

    @torch.no_grad()
    def validate(self, beta: float) -> dict | None:
        """Validation reconstructs from z_mean (deterministic, the same on any world size)."""
        self.model.eval()
        sums = torch.zeros(N_SUMS, device=self.ctx.device, dtype=torch.float64)
        for x, rows in self.feed.val():
            with self.runner.autocast():
                recon, mu, log_var, kl = self.model(x, torch.zeros(len(x), self.cfg.latent, device=self.ctx.device))
            sums += vae_loss(x, recon, mu, log_var, beta, self.runner.groups, self.runner.weights, kl,
                             self.feed.row_weights(rows), self.runner.counts, self.feed.row_lengths(rows))[1]
        self.model.train()
        all_reduce(sums)
        return summarise(sums, beta, self.runner.groups, self.blocks) if sums[0] > 0 else None

    @torch.no_grad()
    def latent_metrics(self) -> dict | None:
        """Rank 0 encodes the latent sample (keeping its latents for keep_latents); the figures
        and the count of labels the sample holds are broadcast to every rank."""
        values = torch.full((4,), math.nan, dtype=torch.float64, device=self.ctx.device)
        if self.heldout is not None:
            self.model.eval()
            x = torch.from_numpy(self.heldout["x"])
            z = torch.cat([self.model.encoder(b.to(self.ctx.device))[0].float().cpu() for b in x.split(1024)]).numpy()
            self.model.train()
            labels = self.heldout["labels"]
            values = torch.tensor([active_units(z), distance_spearman(z, self.heldout["x_distances"], self.heldout["pairs"]),
                                   knn_accuracy(z, labels) if labels is not None else math.nan,
                                   len(np.unique(labels)) if labels is not None else math.nan],
                                  dtype=torch.float64, device=self.ctx.device)
            self.sample_z = z
        if self.ctx.active:
            torch.distributed.broadcast(values, src=0)
        active, rho, knn, labels = values.tolist()
        if math.isnan(active):
            return None
        return {"active_units": int(active), "spearman": rho, "knn": None if math.isnan(knn) else knn,
                "knn_labels": None if math.isnan(labels) else int(labels)}
