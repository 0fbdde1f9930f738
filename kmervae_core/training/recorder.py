"""What a run tells its user, and nothing it decides: the progress bar, the epoch's log line,
history.json, and the Prometheus exporter (metrics.py) with its per-step counters and log
windows. Rank 0 writes; every rank takes part in the window's reductions."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import __version__
from ..atomic import atomic_file
from ..config import TrainConfig
from ..distributed import DistContext, all_reduce, gather
from ..store.kmers import KMER_GROUPS, KGroup
from ..model.losses import summarise
from .prometheus import TrainMetrics
from ..progress import Progress
from ..summary import Summary, history_key, mse_key
from ..words import counted


def memory_in_use(device: torch.device) -> tuple[float, float]:
    """(CUDA memory allocated, NaN on a CPU device; this process's resident memory); no sync."""
    allocated = float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else math.nan
    try:
        with open("/proc/self/statm") as f:
            return allocated, float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return allocated, 0.0


def epoch_line(epoch: int, epochs: int, beta: float, train: Summary, val: Summary | None, rate: float,
               latent: dict | None = None, latent_size: int = 0) -> str:
    """The reference's log line, then throughput, then the latent metrics where computed."""
    shown = val if val is not None else train
    per_k = ", ".join(f"{g.k}mer={shown[mse_key(g.k)]:.2f}" for g in KMER_GROUPS if mse_key(g.k) in shown)
    val_text = f"{val['loss']:.2f}" if val is not None else "n/a"
    line = (f"Epoch {epoch + 1}/{epochs}: Recon: {train['recon']:.2f}, KL: {train['kl']:.2f} (w={beta:.4f}), "
            f"Val: {val_text}, MSE: {shown['mse']:.2f} [{per_k}] {rate:,.0f} samples/s")
    if latent:
        line += f" | active {latent['active_units']}/{latent_size}, rho {latent['spearman']:.3f}"
        if latent.get("knn") is not None:
            line += f", kNN {latent['knn']:.3f} ({counted(latent['knn_labels'], 'label')})"
    return line


class Recorder:
    """`info`: the run's description for the exporter's `kmervae_run` series."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, groups: tuple[KGroup, ...], blocks: tuple[str, ...],
                 info: dict[str, str], log: Callable[[str], None]) -> None:
        self.cfg, self.ctx, self.groups, self.blocks, self.log = cfg, ctx, groups, blocks, log
        self.run_dir = Path(cfg.out)
        self.history: list[dict] = []
        self.metrics = self.metrics_url = None
        if ctx.is_main and (cfg.metrics_port or cfg.pushgateway):
            self.metrics = TrainMetrics(self.run_dir.resolve().name, {
                "world_size": str(ctx.world_size), "config_hash": cfg.digest(), "version": __version__,
                "device": ctx.device.type, **info})
            if cfg.metrics_port:
                self.metrics_url = self.metrics.serve(cfg.metrics_port, cfg.metrics_addr)
        self._window_start()
        self.bar: Progress | None = None
        # the epoch under way, set by `batches`: rows of all ranks, its start, the last step's end
        self.epoch_rows, self.epoch_start, self.epoch_seconds = 0, time.perf_counter(), 0.0
        self.last_step = self.epoch_start

    def keep_history(self, epochs: int) -> None:
        """On resume: the history of the first `epochs` epochs (a later one was not checkpointed)."""
        path = self.run_dir / "history.json"
        if path.exists():
            self.history = [h for h in json.loads(path.read_text()) if h["epoch"] <= epochs]

    # ---- per step ----

    def batches(self, epoch: int, start_batch: int, batches: int,
                source: Iterator[tuple[torch.Tensor, torch.Tensor]]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """The epoch's batches (x, store rows) with the seconds spent waiting for each, under a progress bar;
        the epoch's training time is taken when they run out (before validation)."""
        self.bar = Progress(batches, f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batches", quiet=not self.ctx.is_main)
        self.bar.update(start_batch)
        self.epoch_rows, self.epoch_start = 0, time.perf_counter()
        self.last_step = time.perf_counter()
        while True:
            t = time.perf_counter()
            try:
                x, rows = next(source)
            except StopIteration:
                break
            yield x, rows, time.perf_counter() - t
        self.bar.close()
        self.epoch_seconds = time.perf_counter() - self.epoch_start

    def step(self, rows: int, wait: float) -> None:
        """After each step, host-side only (no device sync): this rank's `rows`, and the wait."""
        now = time.perf_counter()
        all_rows = rows * self.ctx.world_size
        self.epoch_rows += all_rows
        self.window["rows"] += rows
        self.window["wait"] += wait
        if self.metrics is not None:
            self.metrics.observe_step(now - self.last_step, wait, all_rows)
        self.last_step = now
        self.bar.update(1)

    def _window_start(self, now: float | None = None) -> None:
        self.window = {"rows": 0, "wait": 0.0, "start": time.perf_counter() if now is None else now}

    def publish_window(self, window_sums: torch.Tensor, beta: float, lr: float, epoch: int) -> None:
        """At a log point (already a sync): reduce the window's train sums (then zeroed) and
        gather per-rank throughput, data wait and memory to rank 0's exporter."""
        now = time.perf_counter()
        elapsed = max(now - self.window["start"], 1e-9)
        mine = torch.tensor([self.window["rows"] / elapsed, self.window["wait"] / elapsed,
                             *memory_in_use(self.ctx.device)], dtype=torch.float64, device=self.ctx.device)
        per_rank = [t.tolist() for t in gather(mine)]
        window = summarise(all_reduce(window_sums.clone()), beta, self.groups, self.blocks)
        window_sums.zero_()
        self._window_start(now)
        if self.metrics is not None and window["rows"]:
            self.metrics.set_train(window, beta, lr, epoch)
            self.metrics.set_ranks(per_rank)

    # ---- per epoch ----

    def end_epoch(self, epoch: int, beta: float, lr: float, train: Summary, val: Summary | None,
                  latent: dict | None, best: bool) -> None:
        """The epoch's figures to the exporter, the log line and history.json."""
        rate = self.epoch_rows / max(self.epoch_seconds, 1e-9)
        if self.metrics is not None:
            self.metrics.set_train(train, beta, lr, epoch)
            if val is not None:
                self.metrics.set_val(val)
            if latent is not None:
                self.metrics.set_latent(latent)
        if not self.ctx.is_main:
            return
        self.log(epoch_line(epoch, self.cfg.epochs, beta, train, val, rate, latent, self.cfg.latent))
        self.history.append({"epoch": epoch + 1, "beta": beta, "lr": lr, "seconds": self.epoch_seconds,
                             "samples_per_s": rate, "best": best,
                             **train.history("train"), **(val.history("val") if val else {}),
                             **({history_key("latent", k): v for k, v in latent.items()} if latent else {})})
        with atomic_file(self.run_dir / "history.json") as f:
            f.write(json.dumps(self.history, indent=1).encode())

    def finish(self, failed: bool = False) -> None:
        """Push the final summary (where asked) and stop serving metrics."""
        if self.metrics is None:
            return
        if failed:
            self.metrics.set_non_finite()
        if self.cfg.pushgateway:
            self.metrics.push(self.cfg.pushgateway)
        self.metrics.close()
