"""Training configuration: defaults are the VAEMulti reference recipe; a TOML file and then
command-line flags override them. The resolved config is saved in the run folder."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .evaluation.embedding import LATENT_SAMPLE_CHUNKS
from .feed.epoch_plan import DEFAULT_LANES, DEFAULT_WINDOW_CHUNKS, SPLIT_MODES
from .errors import KmervaeError
from .store.clr import SCOPE_FLAGS

BETA_SCHEDULES = ("warmup", "cyclical")
SELECT_BY = ("val_loss", "spearman", "knn")  # what the best checkpoint tracks
PRECISIONS = ("fp32", "bf16")
CACHE_TIERS = ("auto", "device", "host", "none")  # see cache.py
GRAPH_MODES = ("auto", "on", "off")  # see step_graph.py
PRIOR_KINDS = ("normal", "mog", "vamp")  # see priors.py
MSE, MULTINOMIAL = "mse", "multinomial"  # --likelihood: see model/likelihood.py
LIKELIHOODS = (MSE, MULTINOMIAL)
REFERENCE_HIDDEN, REFERENCE_LATENT = (1024, 512), 256  # VAEMulti's widths (model.py's defaults too)
DEFAULT_BLOCK_KMERS = [[6], [5], [4, 3, 2, 1]]  # per-scale latents: 6-mers, 5-mers, the rest
DATA_CLR = "data_clr"  # RUN/config.json's record of the CLR the run trained on (a fact, not a setting)


# A setting's role on resume: what a run continued from a checkpoint does when the setting's value
# differs from the checkpoint's. Each TrainConfig field declares one, and everything that sorts the
# settings (settle's refusal, the resume line, the config hash) reads it from there.
PLAN = "plan"      # fixes which rows form each batch (the epoch plan): a change is refused
MODEL = "model"    # fixes the model's parameters: a change is refused
RECIPE = "recipe"  # shapes the result: a change is applied from the resume on and named in the resume line
RUN = "run"        # how the run is carried out, not what it computes: applied, outside the config hash
ROLES = {PLAN: "fixes which rows form each batch: a change is refused",
         MODEL: "fixes the model's parameters: a change is refused",
         RECIPE: "shapes the result: a change is in force from the resume on (the restored optimizer, plateau "
                 "schedule and best-epoch tracking take it) and named in the resume line",
         RUN: "how the run is carried out: a change is applied, and it is not part of the config hash"}


def setting(role: str, default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A TrainConfig field with its role on resume (ROLES) and what its command-line flag says
    about it: the one place a setting's name, type, default, role, help and choices are written
    (train/__main__.py builds the flags from these, `validate` checks types and choices)."""
    assert role in ROLES, role
    kind = {"default_factory": lambda: copy.deepcopy(default)} if isinstance(default, list) else {"default": default}
    return field(**kind, metadata={"role": role, "help": help, "choices": choices})


@dataclass
class TrainConfig:
    data: str = setting(RUN, "Data/kmers.zarr", "the kmervae store")
    store_clr: str = setting(RUN, "any", "the CLR the store must hold (`ingest --clr`): a config tuned on one "
                             "refuses a store of the other; any: either", ("any",) + SCOPE_FLAGS)
    out: str = setting(RUN, "runs/kmervae", "run folder: checkpoints, history, exports")
    epochs: int = setting(RECIPE, 100, "training epochs")
    batch_size: int = setting(PLAN, 1024, "global batch, over all ranks")
    lr: float = setting(RECIPE, 1e-4, "Adam learning rate")
    seed: int = setting(PLAN, 42, "seed of the model, the epoch plan and the noise")
    hidden: list[int] = setting(MODEL, list(REFERENCE_HIDDEN), "hidden layer sizes, e.g. 1024,512")
    latent: int = setting(MODEL, REFERENCE_LATENT, "latent size")
    beta: float = setting(RECIPE, 0.1, "final KL weight")
    beta_schedule: str = setting(RECIPE, "warmup", "linear warm-up from 0 over --beta-warmup-epochs, or cyclical",
                                 BETA_SCHEDULES)
    beta_warmup_epochs: int = setting(RECIPE, 5, "epochs of the β warm-up")
    beta_cycle_epochs: int = setting(RECIPE, 10, "cyclical period: a ramp over its first half, then hold")
    plateau_factor: float = setting(RECIPE, 0.5, "learning-rate cut when validation loss plateaus")
    plateau_patience: int = setting(RECIPE, 20, "epochs without improvement before a cut")
    min_lr: float = setting(RECIPE, 1e-6, "the learning rate is never cut below this")
    val_fraction: float = setting(PLAN, 0.1, "held-out share of the rows")
    val_split: str = setting(PLAN, "random", "random: seeded whole chunks; tail: the last rows, as the reference",
                             SPLIT_MODES)
    workers: int | str = setting(RUN, "auto", "reader threads per rank, decoding whole chunks in its own process (0: "
                                 "read in the training loop's thread, no read-ahead); auto: the CPUs this job may use "
                                 "(affinity and cgroup quota) / the ranks on this node - 1, at least 1")
    window_chunks: int = setting(PLAN, DEFAULT_WINDOW_CHUNKS, "chunks whose rows are shuffled together (the shuffle window)")
    lanes: int = setting(PLAN, DEFAULT_LANES, "regions a partition is read in, interleaved batch by batch (part of the epoch plan)")
    partitions: int = setting(PLAN, 0, "epoch plan partitions: every world size dividing it trains on the same "
                              "batches and can resume the others' checkpoints; 0: gcd(batch size, 48), or a multiple "
                              "of the world size above that (epoch_plan.default_partitions); a resumed run keeps its own")
    resume: str = setting(RUN, "auto", "auto (the newest sound checkpoint in --out), never, or a checkpoint path")
    init_from: str = setting(RUN, "", "a training checkpoint or whole-model export whose weights start a new run "
                             "from its first epoch (optimizer, schedule and epoch plan new: e.g. on another store); "
                             "a run that has checkpoints of its own resumes them instead")
    checkpoint_every: int = setting(RUN, 1000, "steps between checkpoints (also written at each epoch end)")
    keep_checkpoints: int = setting(RUN, 3, "newest checkpoints kept")
    deterministic: bool = setting(RUN, False, "deterministic algorithms: bitwise-repeatable runs")
    precision: str = setting(RECIPE, "fp32", "bf16: autocast on CUDA", PRECISIONS)
    compile: bool = setting(RUN, False, "torch.compile the model")
    cuda_graphs: str = setting(RUN, "auto", "capture the training step as a CUDA graph and replay it (one launch a "
                               "step): auto does on a single CUDA device, on also tries under DDP; every capture "
                               "is checked against the eager step and falls back to it with one line", GRAPH_MODES)
    cache: str = setting(RUN, "auto", "keep this rank's training and validation rows resident after the first epoch, "
                         "later epochs gather from them in the stream's order: device (GPU memory), host (pinned "
                         "RAM), none (stream every epoch); auto takes the first that fits --cache-fraction",
                         CACHE_TIERS)
    cache_fraction: float = setting(RUN, 0.8, "share of free GPU memory (device tier) or of this rank's share of "
                                    "host memory within the job's limits (host tier) the cache may take; without a cache, the share of "
                                    "free GPU memory a rolling GPU slab may take (else it is made in pinned host memory)")
    metrics_port: int = setting(RUN, 9400, "Prometheus /metrics port on global rank 0; 0 = off")
    metrics_addr: str = setting(RUN, "0.0.0.0", "address to bind /metrics to")
    pushgateway: str = setting(RUN, "", "Pushgateway URL to push a final summary to when the run ends")
    log_every: int = setting(RUN, 50, "steps between non-finite checks and metric updates")
    latent_sample: int = setting(RECIPE, 5000, "rows for the per-epoch latent metrics, drawn from up to "
                                 f"{LATENT_SAMPLE_CHUNKS} chunks spread over the whole store (read once at "
                                 "start-up); 0 = off")
    latent_pairs: int = setting(RECIPE, 20000, "row pairs for the latent/input distance correlation")
    select_by: str = setting(RECIPE, "val_loss", "what vae_multi_best.pt tracks: lowest val_loss (the reference), or "
                             "highest latent/input distance correlation (spearman) or label kNN accuracy (knn, "
                             "needs labels)", SELECT_BY)
    kmers: list[int] = setting(MODEL, [6, 5, 4, 3, 2, 1], "k groups to train on, e.g. 5,4,3,2,1")
    kmer_weights: list[float] = setting(RECIPE, [], "weight of each --kmers group's reconstruction term, e.g. "
                                        "1,1,0.5,0.5,0.5 (none: 1 each)")
    length_weight: float = setting(RECIPE, 0.0, "weigh each row's reconstruction by its contig length (column 0) to "
                                   "this power, scaled to mean 1 over the store: 1 weighs by inverse sampling variance "
                                   "(0: off, the reference)")
    input_noise: float = setting(RECIPE, 0.0, "denoising: sd of Gaussian noise added to the encoder's input while "
                                 "training (CLR units); the loss still reconstructs the clean row (0: off, the reference)")
    likelihood: str = setting(RECIPE, MSE, "reconstruction term: mse (squared error of the CLR, the reference) or "
                              "multinomial (per-k-group logits, the deviance of the k-mer counts frequency x "
                              "(length - k + 1), length from column 0)", LIKELIHOODS)
    thinning: float = setting(RECIPE, 0.0, "multinomial only: the encoder sees a binomially thinned copy of the row's "
                              "counts, each k-mer kept with this probability, renormalised and CLR'd as the store's; "
                              "the loss reconstructs the full counts (0: off)")
    contrastive: float = setting(RECIPE, 0.0, "with --thinning: weight of an NT-Xent term between the z_mean of two "
                                 "thinned views of each row (0: off)")
    contrastive_temperature: float = setting(RECIPE, 0.5, "temperature of the --contrastive term")
    prior: str = setting(MODEL, "normal", "latent prior: normal (the reference N(0, I)), mog:K (a learned mixture of K "
                         "Gaussians) or vamp:K (VampPrior with K learned pseudo-inputs)")
    latent_blocks: list[int] = setting(MODEL, [], "per-scale latents: one latent size per --block-kmers block, adding "
                                       "up to --latent, e.g. 128,64,64 (none: one flat latent, the reference)")
    block_kmers: list[list[int]] = setting(MODEL, [list(b) for b in DEFAULT_BLOCK_KMERS],
                                           "the k groups of each latent block, blocks separated by /")

    def validate(self) -> None:
        """Raise KmervaeError with one line for a setting that cannot work."""
        for f in dataclasses.fields(self):
            if problem := type_problem(f.name, getattr(self, f.name)):
                raise KmervaeError(f"bad configuration: {problem}")
        checks = [(getattr(self, f.name) in f.metadata["choices"],
                   f"{f.name} must be one of {', '.join(f.metadata['choices'])}")
                  for f in dataclasses.fields(self) if f.metadata.get("choices")]
        checks += [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.latent >= 1 and len(self.hidden) >= 1 and min(self.hidden) >= 1, "hidden and latent sizes must be positive"),
            (self.beta >= 0, "beta must be non-negative"),
            (self.input_noise >= 0, "input_noise must be non-negative"),
            (self.length_weight >= 0, "length_weight must be non-negative"),
            (0 <= self.thinning < 1, "thinning must be in [0, 1): the probability a k-mer is kept (0: off)"),
            (self.contrastive >= 0 and self.contrastive_temperature > 0,
             "contrastive must be non-negative and contrastive_temperature positive"),
            (self.likelihood == MULTINOMIAL or not (self.thinning or self.contrastive),
             "thinning and contrastive need likelihood multinomial (they thin the row's k-mer counts)"),
            (not self.contrastive or self.thinning, "contrastive needs thinning (its two views are thinned copies)"),
            (self.likelihood == MSE or not self.length_weight,
             "length_weight does not go with likelihood multinomial: the counts already weigh each row by its length"),
            (self.beta_warmup_epochs >= 0 and self.beta_cycle_epochs >= 1, "beta epochs must be non-negative"),
            (0 < self.cache_fraction <= 1, "cache_fraction must be in (0, 1]"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be at least 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.workers == "auto" or (isinstance(self.workers, int) and self.workers >= 0),
             "workers must be auto or a non-negative integer"),
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
        """A short hash of the settings that shape the result: all but those of role RUN."""
        shaping = {k: v for k, v in self.to_dict().items() if ROLE_OF[k] != RUN}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


ROLE_OF = {f.name: f.metadata["role"] for f in dataclasses.fields(TrainConfig)}
TYPE_OF = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def settings_of(*roles: str) -> tuple[str, ...]:
    """The settings of these roles, in TrainConfig's order."""
    return tuple(name for name, role in ROLE_OF.items() if role in roles)


# what a value of each field type reads as, and what a TOML value of each Python type is called
TYPE_WORDS = {"int": "an integer", "int | str": 'an integer or "auto"', "float": "a number", "str": "a string", "bool": "true or false",
              "list[int]": "a list of integers, e.g. [64, 32]", "list[float]": "a list of numbers, e.g. [1, 0.5]",
              "list[list[int]]": "a list of lists of integers, e.g. [[6], [5], [4, 3, 2, 1]]"}
VALUE_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a table"}


def _fits(kind: str, value: Any) -> bool:
    if kind.startswith("list["):
        return isinstance(value, list) and all(_fits(kind[5:-1], v) for v in value)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int | str":  # an integer or "auto" (--workers)
        return type(value) is int or value == "auto"
    return type(value) is {"int": int, "str": str, "bool": bool}[kind]


def type_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for setting `name`'s type ("epochs must be an integer, got "two"
    (a string)"), or None. An integer is a number where a float is wanted."""
    if _fits(TYPE_OF[name], value):
        return None
    got, what = json.dumps(value, default=str), VALUE_WORDS.get(type(value), type(value).__name__)
    return f"{name} must be {TYPE_WORDS[TYPE_OF[name]]}, got {got} ({what})"


def _as_type(kind: str, value: Any) -> Any:
    """A value that fits `kind`, with integers made floats where floats are wanted."""
    if kind.startswith("list["):
        return [_as_type(kind[5:-1], v) for v in value]
    return float(value) if kind == "float" else value


def shown(value: Any) -> str:
    """A setting's value as a user would type it on the command line."""
    if isinstance(value, list):
        return "/".join(map(shown, value)) if value and isinstance(value[0], list) else \
            ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "none"


def saved_settings(saved: dict) -> dict:
    """A checkpoint's settings, every one it predates at its default (a new setting's default is
    what runs did before it existed: checkpoints from before priors are of the normal prior)."""
    return {**TrainConfig().to_dict(), **{k: v for k, v in saved.items() if k in ROLE_OF}}


def resume_mismatch(saved: dict, cfg: TrainConfig) -> str | None:
    """Why a checkpoint written under settings `saved` cannot continue under `cfg`, or None: each
    plan or model setting that differs, with both values."""
    was, now = saved_settings(saved), cfg.to_dict()
    changed = [k for k in settings_of(PLAN, MODEL) if was[k] != now[k]]
    if not changed:
        return None
    kept = " and ".join(what for role, what in ((MODEL, "its model"), (PLAN, "its batches"))
                        if any(ROLE_OF[k] == role for k in changed))
    return ("; ".join(f"{k} {shown(was[k])} in the checkpoint, {shown(now[k])} now" for k in changed)
            + f": a resumed run keeps {kept}; keep {'that setting' if len(changed) == 1 else 'those settings'}, "
              "or choose another --out")


def resume_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """The recipe settings `cfg` changes from the checkpoint's, each as "lr 0.0001 -> 0.001"."""
    was, now = saved_settings(saved), cfg.to_dict()
    return [f"{k} {shown(was[k])} -> {shown(now[k])}" for k in settings_of(RECIPE) if was[k] != now[k]]


def parse_prior(spec: str) -> tuple[str, int]:
    """("normal", 0), ("mog", K) or ("vamp", K) from a --prior setting; KmervaeError otherwise."""
    kind, _, count = spec.partition(":")
    if kind == "normal" and not count:
        return kind, 0
    if kind in PRIOR_KINDS[1:] and count.isdigit() and int(count) >= 1:
        return kind, int(count)
    raise KmervaeError(f"bad configuration: prior {spec!r}: use normal, mog:K or vamp:K with K at least 1")


def guessed(name: str) -> str:
    """An unknown setting's name, with the setting it was likely meant to be ("epoch (did you mean
    epochs?)"); a flag's spelling, batch-size, finds batch_size."""
    close = difflib.get_close_matches(name.replace("-", "_"), ROLE_OF, n=1, cutoff=0.8)
    return f"{name} (did you mean {close[0]}?)" if close else name


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
    unknown = sorted(set(values) - set(ROLE_OF))
    if unknown:
        raise KmervaeError(f"{toml_path}: unknown {'setting' if len(unknown) == 1 else 'settings'} "
                           + ", ".join(map(guessed, unknown)))
    for name, value in values.items():
        if problem := type_problem(name, value):
            raise KmervaeError(f"{toml_path}: {problem}")
    values = {name: _as_type(TYPE_OF[name], value) for name, value in values.items()}
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
