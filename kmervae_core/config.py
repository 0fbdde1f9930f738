"""Training configuration: defaults are the VAEMulti reference recipe; a TOML file and then
command-line flags override them. The resolved config is saved in the run folder."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .feed.epoch_plan import SPLIT_MODES
from .errors import KmervaeError

BETA_SCHEDULES = ("warmup", "cyclical")
SELECT_BY = ("val_loss", "spearman", "knn")  # what the best checkpoint tracks
PRECISIONS = ("fp32", "bf16")
CACHE_TIERS = ("auto", "device", "host", "none")  # see cache.py
GRAPH_MODES = ("auto", "on", "off")  # see step_graph.py
PRIOR_KINDS = ("normal", "mog", "vamp")  # see priors.py
REFERENCE_HIDDEN, REFERENCE_LATENT = (1024, 512), 256  # VAEMulti's widths (model.py's defaults too)
DEFAULT_BLOCK_KMERS = [[6], [5], [4, 3, 2, 1]]  # per-scale latents: 6-mers, 5-mers, the rest


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A TrainConfig field with what its command-line flag says about it: the one place a
    setting's name, type, default, help and choices are written (train/__main__.py builds the
    flags from these, `validate` checks the choices)."""
    kind = {"default_factory": lambda: copy.deepcopy(default)} if isinstance(default, list) else {"default": default}
    return field(**kind, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    data: str = setting("Data/kmers.zarr", "the kmervae store")
    out: str = setting("runs/kmervae", "run folder: checkpoints, history, exports")
    epochs: int = setting(100, "training epochs")
    batch_size: int = setting(1024, "global batch, over all ranks")
    lr: float = setting(1e-4, "Adam learning rate")
    seed: int = setting(42, "seed of the model, the epoch plan and the noise")
    hidden: list[int] = setting(list(REFERENCE_HIDDEN), "hidden layer sizes, e.g. 1024,512")
    latent: int = setting(REFERENCE_LATENT, "latent size")
    beta: float = setting(0.1, "final KL weight")
    beta_schedule: str = setting("warmup", "linear warm-up from 0 over --beta-warmup-epochs, or cyclical",
                                 BETA_SCHEDULES)
    beta_warmup_epochs: int = setting(5, "epochs of the β warm-up")
    beta_cycle_epochs: int = setting(10, "cyclical period: a ramp over its first half, then hold")
    plateau_factor: float = setting(0.5, "learning-rate cut when validation loss plateaus")
    plateau_patience: int = setting(20, "epochs without improvement before a cut")
    min_lr: float = setting(1e-6, "the learning rate is never cut below this")
    val_fraction: float = setting(0.1, "held-out share of the rows")
    val_split: str = setting("random", "random: seeded whole chunks; tail: the last rows, as the reference",
                             SPLIT_MODES)
    workers: int = setting(2, "reader threads per rank, decoding whole chunks in its own process (0: read in the "
                           "training loop's thread, no read-ahead)")
    window_chunks: int = setting(1, "chunks whose rows are shuffled together (the shuffle window)")
    lanes: int = setting(4, "regions a partition is read in, interleaved batch by batch (part of the epoch plan)")
    partitions: int = setting(0, "epoch plan partitions: every world size dividing it trains on the same batches and "
                               "can resume the others' checkpoints; 0: gcd(batch size, 48), or a multiple of the "
                               "world size above that (epoch_plan.default_partitions); a resumed run keeps its own")
    resume: str = setting("auto", "auto (the newest checkpoint in --out), never, or a checkpoint path")
    checkpoint_every: int = setting(1000, "steps between checkpoints (also written at each epoch end)")
    keep_checkpoints: int = setting(3, "newest checkpoints kept")
    deterministic: bool = setting(False, "deterministic algorithms: bitwise-repeatable runs")
    precision: str = setting("fp32", "bf16: autocast on CUDA", PRECISIONS)
    compile: bool = setting(False, "torch.compile the model")
    cuda_graphs: str = setting("auto", "capture the training step as a CUDA graph and replay it (one launch a "
                               "step): auto does on a single CUDA device, on also tries under DDP; every capture "
                               "is checked against the eager step and falls back to it with one line", GRAPH_MODES)
    cache: str = setting("auto", "keep this rank's training and validation rows resident after the first epoch, "
                         "later epochs gather from them in the stream's order: device (GPU memory), host (pinned "
                         "RAM), none (stream every epoch); auto takes the first that fits --cache-fraction",
                         CACHE_TIERS)
    cache_fraction: float = setting(0.8, "share of free GPU memory (device tier) or of this rank's share of "
                                    "host memory within the job's limits (host tier) the cache may take")
    metrics_port: int = setting(9400, "Prometheus /metrics port on global rank 0; 0 = off")
    metrics_addr: str = setting("0.0.0.0", "address to bind /metrics to")
    pushgateway: str = setting("", "Pushgateway URL to push a final summary to when the run ends")
    log_every: int = setting(50, "steps between non-finite checks and metric updates")
    latent_sample: int = setting(5000, "held-out validation rows for the per-epoch latent metrics; 0 = off")
    latent_pairs: int = setting(20000, "row pairs for the latent/input distance correlation")
    select_by: str = setting("val_loss", "what vae_multi_best.pt tracks: lowest val_loss (the reference), or "
                             "highest latent/input distance correlation (spearman) or label kNN accuracy (knn, "
                             "needs labels)", SELECT_BY)
    kmers: list[int] = setting([6, 5, 4, 3, 2, 1], "k groups to train on, e.g. 5,4,3,2,1")
    kmer_weights: list[float] = setting([], "weight of each --kmers group's reconstruction term, e.g. "
                                        "1,1,0.5,0.5,0.5 (none: 1 each)")
    prior: str = setting("normal", "latent prior: normal (the reference N(0, I)), mog:K (a learned mixture of K "
                         "Gaussians) or vamp:K (VampPrior with K learned pseudo-inputs)")
    latent_blocks: list[int] = setting([], "per-scale latents: one latent size per --block-kmers block, adding "
                                       "up to --latent, e.g. 128,64,64 (none: one flat latent, the reference)")
    block_kmers: list[list[int]] = setting([list(b) for b in DEFAULT_BLOCK_KMERS],
                                           "the k groups of each latent block, blocks separated by /")

    def validate(self) -> None:
        """Raise KmervaeError with one line for a setting that cannot work."""
        checks = [(getattr(self, f.name) in f.metadata["choices"],
                   f"{f.name} must be one of {', '.join(f.metadata['choices'])}")
                  for f in dataclasses.fields(self) if f.metadata.get("choices")]
        checks += [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.latent >= 1 and len(self.hidden) >= 1 and min(self.hidden) >= 1, "hidden and latent sizes must be positive"),
            (self.beta >= 0, "beta must be non-negative"),
            (self.beta_warmup_epochs >= 0 and self.beta_cycle_epochs >= 1, "beta epochs must be non-negative"),
            (0 < self.cache_fraction <= 1, "cache_fraction must be in (0, 1]"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be at least 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.workers >= 0, "workers must be non-negative"),
            (self.partitions >= 0, "partitions must be 0 (derived from the batch and world size) or positive"),
            (0 <= self.metrics_port < 65536, "metrics_port must be 0 (off) or a port number"),
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
        parse_prior(self.prior)
        self.check_blocks()

    def check_blocks(self) -> None:
        """Per-scale latents: one size per block, the sizes adding up to `latent`, and the blocks'
        k groups together exactly the trained ones."""
        if not self.latent_blocks:
            if self.block_kmers != DEFAULT_BLOCK_KMERS:
                raise KmervaeError("bad configuration: block_kmers needs latent_blocks (one latent size per block)")
            return
        flat = sorted(k for b in self.block_kmers for k in b)
        checks = [
            (len(self.latent_blocks) == len(self.block_kmers),
             f"latent_blocks has {len(self.latent_blocks)} sizes for {len(self.block_kmers)} blocks of block_kmers"),
            (min(self.latent_blocks) >= 1 and sum(self.latent_blocks) == self.latent,
             f"latent_blocks {','.join(map(str, self.latent_blocks))} must be positive and add up to latent {self.latent}"),
            (all(self.block_kmers) and flat == sorted(self.kmers),
             "block_kmers must share out the trained kmers, each in one block"),
        ]
        for ok, message in checks:
            if not ok:
                raise KmervaeError(f"bad configuration: {message}")

    def block_sizes(self) -> list[int]:
        """Latent sizes of the blocks: one block of `latent` in a flat model."""
        return list(self.latent_blocks) or [self.latent]

    def block_names(self) -> tuple[str, ...]:
        """Names of the latent blocks for metrics (the block's k values, e.g. "4+3+2+1"); none when flat."""
        return tuple("+".join(map(str, b)) for b in self.block_kmers) if self.latent_blocks else ()

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


def parse_prior(spec: str) -> tuple[str, int]:
    """("normal", 0), ("mog", K) or ("vamp", K) from a --prior setting; KmervaeError otherwise."""
    kind, _, count = spec.partition(":")
    if kind == "normal" and not count:
        return kind, 0
    if kind in PRIOR_KINDS[1:] and count.isdigit() and int(count) >= 1:
        return kind, int(count)
    raise KmervaeError(f"bad configuration: prior {spec!r}: use normal, mog:K or vamp:K with K at least 1")


def resume_mismatch(saved: dict, cfg: TrainConfig) -> str | None:
    """Why a checkpoint written under `saved` (its config) cannot continue under `cfg`, or None.
    Checkpoints from before priors and blocks existed are flat runs under the normal prior."""
    now = cfg.to_dict()
    if any(saved[key] != now[key] for key in ("hidden", "latent", "kmers")):
        return "checkpoint model shape differs from the configuration"
    if saved.get("prior", "normal") != cfg.prior:
        return f"checkpoint of a run with prior {saved.get('prior', 'normal')}, not {cfg.prior}"
    blocks = (saved.get("latent_blocks", []), saved.get("block_kmers", DEFAULT_BLOCK_KMERS) if saved.get("latent_blocks") else [])
    if blocks != (cfg.latent_blocks, cfg.block_kmers if cfg.latent_blocks else []):
        flat = "a flat" if not blocks[0] else "a per-scale"
        return f"checkpoint of {flat} latent run; its latent_blocks/block_kmers differ from the configuration"
    return None


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
