"""Training configuration: defaults are the VAEMulti reference recipe; a TOML file and then
command-line flags override them. The resolved config is saved in the run folder."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field

from .errors import KmervaeError

BETA_SCHEDULES = ("warmup", "cyclical")
SELECT_BY = ("val_loss", "spearman", "knn")  # what the best checkpoint tracks
PRECISIONS = ("fp32", "bf16")
CACHE_TIERS = ("auto", "device", "host", "none")  # see cache.py
GRAPH_MODES = ("auto", "on", "off")  # see step_graph.py


@dataclass
class TrainConfig:
    data: str = "Data/kmers.zarr"
    out: str = "runs/kmervae"
    epochs: int = 100
    batch_size: int = 1024  # global, over all ranks
    lr: float = 1e-4
    seed: int = 42
    hidden: list[int] = field(default_factory=lambda: [1024, 512])
    latent: int = 256
    beta: float = 0.1
    beta_schedule: str = "warmup"  # linear 0 -> beta over beta_warmup_epochs, or cyclical
    beta_warmup_epochs: int = 5
    beta_cycle_epochs: int = 10  # cyclical: ramp over the first half of each cycle, then hold
    plateau_factor: float = 0.5
    plateau_patience: int = 20
    min_lr: float = 1e-6
    val_fraction: float = 0.1
    val_split: str = "random"
    workers: int = 2  # DataLoader workers per rank
    window_chunks: int = 1
    lanes: int = 4
    partitions: int = 0  # 0: epoch_plan.default_partitions(batch_size, world size), or a resumed run's
    resume: str = "auto"  # auto | never | PATH
    checkpoint_every: int = 1000  # steps; checkpoints are also written at every epoch end
    keep_checkpoints: int = 3
    deterministic: bool = False
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: str = "auto"  # capture the step as a CUDA graph (auto: on a single CUDA device)
    cache: str = "auto"  # keep this rank's training rows resident after the first epoch: device, host or none
    cache_fraction: float = 0.8  # of free GPU memory (device tier) or available host memory per rank (host)
    metrics_port: int = 9400  # global rank 0 serves /metrics here; 0 turns it off
    metrics_addr: str = "0.0.0.0"
    pushgateway: str = ""  # push a final summary here when the run ends
    log_every: int = 50
    latent_sample: int = 5000  # held-out validation rows for the latent metrics each epoch; 0 = off
    latent_pairs: int = 20000  # row pairs for the latent/input distance correlation
    select_by: str = "val_loss"  # val_loss (lowest, the reference), spearman or knn (highest)
    kmers: list[int] = field(default_factory=lambda: [6, 5, 4, 3, 2, 1])  # k groups to train on
    kmer_weights: list[float] = field(default_factory=list)  # per group of `kmers`; empty = all 1

    def validate(self) -> None:
        """Raise KmervaeError with one line for a setting that cannot work."""
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.latent >= 1 and len(self.hidden) >= 1 and min(self.hidden) >= 1, "hidden and latent sizes must be positive"),
            (self.beta >= 0, "beta must be non-negative"),
            (self.beta_schedule in BETA_SCHEDULES, f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}"),
            (self.beta_warmup_epochs >= 0 and self.beta_cycle_epochs >= 1, "beta epochs must be non-negative"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.cuda_graphs in GRAPH_MODES, f"cuda_graphs must be one of {', '.join(GRAPH_MODES)}"),
            (self.cache in CACHE_TIERS, f"cache must be one of {', '.join(CACHE_TIERS)}"),
            (0 < self.cache_fraction <= 1, "cache_fraction must be in (0, 1]"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be at least 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.workers >= 0, "workers must be non-negative"),
            (self.partitions >= 0, "partitions must be 0 (derived from the batch and world size) or positive"),
            (0 <= self.metrics_port < 65536, "metrics_port must be 0 (off) or a port number"),
            (self.select_by in SELECT_BY, f"select_by must be one of {', '.join(SELECT_BY)}"),
            (self.latent_sample >= 0 and self.latent_pairs >= 1, "latent_sample and latent_pairs must be positive"),
            (self.select_by == "val_loss" or self.latent_sample > 0, "select_by spearman or knn needs latent_sample > 0"),
            (len(self.kmers) > 0 and set(self.kmers) <= {6, 5, 4, 3, 2, 1} and len(set(self.kmers)) == len(self.kmers),
             "kmers must be distinct values among 6,5,4,3,2,1"),
            (not self.kmer_weights or (len(self.kmer_weights) == len(self.kmers) and min(self.kmer_weights) > 0),
             "kmer_weights needs one positive weight per entry of kmers"),
        ]
        for ok, message in checks:
            if not ok:
                raise KmervaeError(f"bad configuration: {message}")

    def weights_by_k(self) -> dict[int, float] | None:
        """Reconstruction weight of each trained k, or None for the reference's plain sum."""
        if not self.kmer_weights or all(w == 1 for w in self.kmer_weights):
            return None
        return dict(zip(self.kmers, self.kmer_weights))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the settings that shape the result (not paths or resume policy)."""
        shaping = {k: v for k, v in self.to_dict().items()
                   if k not in ("out", "resume", "metrics_port", "metrics_addr", "pushgateway", "log_every", "workers",
                              "cache", "cache_fraction", "cuda_graphs")}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def load_config(toml_path: str | None, overrides: dict) -> TrainConfig:
    """Defaults, then the TOML file, then the overrides (flags given on the command line)."""
    values: dict = {}
    if toml_path:
        try:
            with open(toml_path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise KmervaeError(f"{toml_path}: no such config file") from None
        except tomllib.TOMLDecodeError as e:
            raise KmervaeError(f"{toml_path}: not valid TOML ({e})") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KmervaeError(f"{toml_path}: unknown settings {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def beta_at(cfg: TrainConfig, epoch: int) -> float:
    """β for a 0-based epoch. Warm-up: linear over beta_warmup_epochs reaching the full β in
    the last of them (epoch 3 of a 5-epoch warm-up to 0.1 gives 0.06, as the reference logs)."""
    if cfg.beta_schedule == "warmup":
        ramp, pos = cfg.beta_warmup_epochs, epoch
    else:
        ramp, pos = max(1, cfg.beta_cycle_epochs // 2), epoch % cfg.beta_cycle_epochs
    return cfg.beta if ramp == 0 else cfg.beta * min(1.0, (pos + 1) / ramp)


def warmup_end_epoch(cfg: TrainConfig) -> int:
    """The first epoch at full β: best-checkpoint and plateau tracking restart there, since the
    near-zero KL of warm-up epochs gives validation losses that later epochs can never beat."""
    ramp = cfg.beta_warmup_epochs if cfg.beta_schedule == "warmup" else max(1, cfg.beta_cycle_epochs // 2)
    return max(0, ramp - 1)
