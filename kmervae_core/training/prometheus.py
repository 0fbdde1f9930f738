"""Prometheus metrics of a training run, served by global rank 0 only (one scrape target per job).

Values arrive already reduced across ranks (the trainer all-reduces at its log points); per-rank
diagnostics arrive gathered, labelled `rank`. Every series carries `run`, so one Prometheus can
hold many runs; `job` and `instance` come from the scrape config (set each label in one place:
a label set by both comes back renamed `exported_<label>`). A private registry: no global state.
"""
from __future__ import annotations

import math
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, push_to_gateway, start_http_server

from ..store.kmers import KMER_GROUPS
from ..summary import Summary, kl_by_block, mse_key

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class TrainMetrics:
    """Rank 0's exporter. `serve` starts /metrics (a port in use is one warning, not an error)."""

    def __init__(self, run_id: str, info: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        self.run_id = run_id
        self.server = None
        r = self.registry

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, ["run", *labels], registry=r)

        self.train_recon = gauge("kmervae_train_reconstruction_loss", "Train reconstruction loss (summed squared error per row), last log window")
        self.train_kl = gauge("kmervae_train_kl_loss", "Train KL divergence per row, last log window")
        self.train_loss = gauge("kmervae_train_loss", "Train loss: reconstruction + beta * KL, last log window")
        self.train_mse = gauge("kmervae_train_mse", "Train mean squared error over all features, last log window")
        self.train_kmer_mse = gauge("kmervae_train_kmer_mse", "Train mean squared error of one k-mer group, last log window", "k")
        self.train_kl_block = gauge("kmervae_train_kl_block_loss", "Train KL per row of one per-scale latent block, last log window", "block")
        self.val_kl_block = gauge("kmervae_val_kl_block_loss", "Validation KL per row of one per-scale latent block", "block")
        self.val_loss = gauge("kmervae_val_loss", "Validation loss at the last epoch end")
        self.val_recon = gauge("kmervae_val_reconstruction_loss", "Validation reconstruction loss at the last epoch end")
        self.val_mse = gauge("kmervae_val_mse", "Validation mean squared error over all features")
        self.val_kmer_mse = gauge("kmervae_val_kmer_mse", "Validation mean squared error of one k-mer group", "k")
        self.beta = gauge("kmervae_beta", "KL weight in use")
        self.lr = gauge("kmervae_learning_rate", "Learning rate in use")
        self.epoch = gauge("kmervae_epoch", "Current epoch (1-based)")
        self.latent_active = gauge("kmervae_latent_active_units", "Latent dimensions whose z_mean variance over the latent sample exceeds 0.01")
        self.latent_spearman = gauge("kmervae_latent_distance_spearman", "Spearman correlation of latent and input distances, pairs of the latent sample")
        self.latent_knn = gauge("kmervae_latent_knn_accuracy", "Leave-one-out 5-NN accuracy of the store's labels in latent space, latent sample")
        self.non_finite = gauge("kmervae_non_finite_loss", "1 once a non-finite loss or weight stopped the run")
        self.last_step = gauge("kmervae_last_step_timestamp_seconds", "Unix time of the last completed step")
        self.rank_rate = gauge("kmervae_rank_samples_per_second", "Samples per second of one rank, last log window", "rank")
        self.rank_wait = gauge("kmervae_rank_data_wait_ratio", "Share of one rank's time spent waiting for data, last log window", "rank")
        self.rank_device_memory = gauge("kmervae_rank_device_memory_bytes", "CUDA memory allocated on one rank (CUDA ranks only)", "rank")
        self.rank_host_memory = gauge("kmervae_rank_host_memory_bytes", "Resident set size of one rank's process", "rank")
        self.steps = Counter("kmervae_steps", "Optimizer steps", ["run"], registry=r)
        self.samples = Counter("kmervae_samples", "Training samples, all ranks", ["run"], registry=r)
        self.step_seconds = Histogram("kmervae_step_duration_seconds", "Wall time of one training step on rank 0",
                                      ["run"], buckets=STEP_BUCKETS, registry=r)
        self.wait_seconds = Histogram("kmervae_data_wait_seconds", "Time rank 0 waited for one batch",
                                      ["run"], buckets=WAIT_BUCKETS, registry=r)
        Info("kmervae_run", "The run: id, world size, config hash, version", ["run"], registry=r) \
            .labels(run=run_id).info(info)
        self.non_finite.labels(run=run_id).set(0)  # present from the start, so alerts can watch it

    def serve(self, port: int, addr: str = "0.0.0.0") -> str | None:
        """Start /metrics; return its address, or None (with one warning) if it cannot bind."""
        try:
            self.server, _ = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            print(f"warning: metrics not served: cannot bind {addr}:{port} ({e.strerror or e}); training goes on",
                  file=sys.stderr, flush=True)
            return None
        host = "localhost" if addr in ("0.0.0.0", "") else addr
        return f"http://{host}:{self.server.server_port}/metrics"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def observe_step(self, seconds: float, wait: float, samples: int) -> None:
        """Per step, host-side only: no device synchronisation."""
        run = self.run_id
        self.step_seconds.labels(run=run).observe(seconds)
        self.wait_seconds.labels(run=run).observe(wait)
        self.steps.labels(run=run).inc()
        self.samples.labels(run=run).inc(samples)
        self.last_step.labels(run=run).set(time.time())

    def set_train(self, summary: Summary, beta: float, lr: float, epoch: int) -> None:
        run = self.run_id
        self.train_recon.labels(run=run).set(summary["recon"])
        self.train_kl.labels(run=run).set(summary["kl"])
        self.train_loss.labels(run=run).set(summary["loss"])
        self.train_mse.labels(run=run).set(summary["mse"])
        self._set_kmer_mse(self.train_kmer_mse, summary)
        self._set_kl_blocks(self.train_kl_block, summary)
        self.beta.labels(run=run).set(beta)
        self.lr.labels(run=run).set(lr)
        self.epoch.labels(run=run).set(epoch + 1)

    def set_val(self, summary: Summary) -> None:
        run = self.run_id
        self.val_loss.labels(run=run).set(summary["loss"])
        self.val_recon.labels(run=run).set(summary["recon"])
        self.val_mse.labels(run=run).set(summary["mse"])
        self._set_kmer_mse(self.val_kmer_mse, summary)
        self._set_kl_blocks(self.val_kl_block, summary)

    def _set_kmer_mse(self, gauge: Gauge, summary: Summary) -> None:
        """Per-k MSE of the groups the summary holds (the trained ones)."""
        for g in KMER_GROUPS:
            if mse_key(g.k) in summary:
                gauge.labels(run=self.run_id, k=str(g.k)).set(summary[mse_key(g.k)])

    def _set_kl_blocks(self, gauge: Gauge, summary: Summary) -> None:
        """KL of each per-scale latent block the summary holds (none for a flat latent)."""
        for block, value in kl_by_block(summary).items():
            gauge.labels(run=self.run_id, block=block).set(value)

    def set_latent(self, latent: dict) -> None:
        run = self.run_id
        for gauge_, key in ((self.latent_active, "active_units"), (self.latent_spearman, "spearman"),
                            (self.latent_knn, "knn")):
            if latent.get(key) is not None:
                gauge_.labels(run=run).set(latent[key])

    def set_ranks(self, per_rank: list[tuple[float, float, float, float]]) -> None:
        """(samples/s, data-wait ratio, device memory bytes, host RSS bytes) of each rank, gathered;
        device memory is NaN on a CPU rank, which has none: no device series is exported for it."""
        for rank, (rate, wait, device, host) in enumerate(per_rank):
            self.rank_rate.labels(run=self.run_id, rank=str(rank)).set(rate)
            self.rank_wait.labels(run=self.run_id, rank=str(rank)).set(wait)
            if not math.isnan(device):
                self.rank_device_memory.labels(run=self.run_id, rank=str(rank)).set(device)
            self.rank_host_memory.labels(run=self.run_id, rank=str(rank)).set(host)

    def set_non_finite(self) -> None:
        self.non_finite.labels(run=self.run_id).set(1)

    def push(self, gateway: str) -> str | None:
        """Push everything to a Pushgateway (the run's final summary); a failure is one warning."""
        try:
            push_to_gateway(gateway, job="kmervae", registry=self.registry, grouping_key={"run": self.run_id})
        except OSError as e:
            print(f"warning: could not push metrics to {gateway}: {e}", file=sys.stderr, flush=True)
            return None
        return gateway
