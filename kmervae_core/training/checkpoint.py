"""Checkpoints and exports: written atomically (atomic.py), so a crash leaves the previous file,
never half of a new one; loaded with weights_only=True; which one a run resumes from and when
the next is due (Checkpointer)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

import torch

from ..atomic import atomic_file
from ..config import MULTINOMIAL, TrainConfig, resume_mismatch
from ..feed.epoch_plan import default_partitions
from ..errors import KmervaeError

NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")
LOGIT_GROUPS = "logit_groups"  # in a multinomial run's decoder export: the k groups its outputs are logits of


def atomic_save(obj: object, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def checkpoint_path(run_dir: Path, epoch: int, step: int) -> Path:
    return run_dir / "checkpoints" / f"ckpt-e{epoch:04d}-s{step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by step)."""
    found = [p for p in (run_dir / "checkpoints").glob("ckpt-*.pt") if NAME.match(p.name)]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(2)))


def prune(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


# A checkpoint holds one entry per part that owns state (Trainer.state_dict assembles them) beside
# the settings it was written under: {"config", "world_size", "model", "optimizer", "tracker",
# "runner", "trainer"}. Checkpoints written before it was nested (tests/fixtures/main-1c9f7e9) held
# the parts' keys side by side; PARTS_OF_FLAT says whose each was.
PARTS_OF_FLAT = {"tracker": ("plateau", "best"), "runner": ("step", "epoch_sums"),
                 "trainer": ("epoch", "batch", "rng_cpu")}


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint, nested by part whatever its age; KmervaeError with one line for a
    file that is not one (an export names the checkpoints to give instead)."""
    try:
        state = load(path)
    except Exception as e:  # torch.load's errors for a file that is not its own are of many kinds
        raise KmervaeError(f"{path}: not a training checkpoint (unreadable: {str(e).splitlines()[0][:120]})") from None
    if isinstance(state, dict) and "config" in state and "model" in state:
        return state if "trainer" in state else {
            **{k: v for k, v in state.items() if not any(k in keys for keys in PARTS_OF_FLAT.values())},
            **{part: {k: state[k] for k in keys} for part, keys in PARTS_OF_FLAT.items()}}
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        found = list_checkpoints(path.parent)
        instead = f"--resume {found[-1]} (its run's newest)" if found else "a ckpt-e*-s*.pt of the run's checkpoints/"
        raise KmervaeError(f"{path}: an exported model (weights only, for train.encode), not a training checkpoint; "
                           f"give {instead}, or --resume auto with --out set to the run folder")
    raise KmervaeError(f"{path}: not a training checkpoint (no settings or model state in it)")


def settle_plan(cfg: TrainConfig, world_size: int, saved: dict | None, path: Path | None) -> TrainConfig:
    """`cfg` with its partition count fixed. A new run takes default_partitions; a resumed run
    keeps the checkpoint's (`--partitions 0`), refuses in one line a plan or model setting that
    differs from the checkpoint's (resume_mismatch), and runs on any world size dividing its
    partitions, which all follow the plan batch for batch."""
    if saved is None:
        return dataclasses.replace(cfg, partitions=cfg.partitions or default_partitions(cfg.batch_size, world_size))
    cfg = dataclasses.replace(cfg, partitions=cfg.partitions or saved["config"]["partitions"])
    mismatch = resume_mismatch(saved["config"], cfg)
    if mismatch:
        raise KmervaeError(f"{path}: {mismatch}")
    if cfg.partitions % world_size:
        fits = [w for w in range(1, cfg.partitions + 1) if cfg.partitions % w == 0 and cfg.batch_size % w == 0]
        raise KmervaeError(f"{path}: its epoch plan has {cfg.partitions} partitions, which world size {world_size} "
                           f"does not divide; resume it on {', '.join(map(str, fits))} processes")
    return cfg


class Checkpointer:
    """A run's checkpoints: which one a start resumes from (`--resume`), whether it may be
    continued under this configuration (`settle`), when the next is due, writing them
    (atomically, the oldest pruned) and the model exports; only where `writer` (global rank 0).
    What a checkpoint holds is Trainer.state_dict's business (trainer.py); `take` gives it nested
    by part, whatever its age (read_checkpoint)."""

    def __init__(self, cfg: TrainConfig, writer: bool) -> None:
        self.run_dir, self.every, self.keep = Path(cfg.out), cfg.checkpoint_every, cfg.keep_checkpoints
        self.writer = writer
        self.logit_groups = sorted(cfg.kmers, reverse=True) if cfg.likelihood == MULTINOMIAL else None
        self.path = self._resume_path(cfg.resume)
        self._saved = read_checkpoint(self.path) if self.path is not None else None

    def _resume_path(self, resume: str) -> Path | None:
        if resume == "never":
            if list_checkpoints(self.run_dir):
                raise KmervaeError(f"{self.run_dir}: already holds checkpoints of another run; "
                                   "choose another --out, or --resume auto to continue it")
            return None
        if resume != "auto":
            path = Path(resume)
            if not path.is_file():
                raise KmervaeError(f"{path}: no such checkpoint")
            return path
        found = list_checkpoints(self.run_dir)
        return found[-1] if found else None

    def settle(self, cfg: TrainConfig, world_size: int) -> TrainConfig:
        """`cfg` with the partition count this run trains with (settle_plan)."""
        return settle_plan(cfg, world_size, self._saved, self.path)

    def take(self) -> dict | None:
        """The checkpoint to resume from, once (the caller's model then holds the weights)."""
        saved, self._saved = self._saved, None
        return saved

    def due(self, step: int, batch: int, batches: int) -> bool:
        """Every `--checkpoint-every` steps, except at an epoch's last batch (the epoch's end
        writes one)."""
        return step % self.every == 0 and batch < batches

    def save(self, state: Callable[[], dict], epoch: int, step: int) -> Path:
        """The checkpoint of (epoch, step), holding `state()`: its path, on every rank."""
        path = checkpoint_path(self.run_dir, epoch, step)
        if self.writer:
            atomic_save(state(), path)
            prune(self.run_dir, self.keep)
        return path

    def last_good(self) -> str:
        found = list_checkpoints(self.run_dir)
        return f"last good checkpoint {found[-1]}" if found else "no checkpoint was written"

    def export(self, model: torch.nn.Module, tag: str) -> None:
        """The model, its encoder and its decoder (state dicts), as vae_multi[_part]_{tag}.pt. A
        multinomial run's decoder export also holds LOGIT_GROUPS: its outputs are logits of these
        k groups, not CLR values (drop the entry before load_state_dict)."""
        if not self.writer:
            return
        for part, module in (("model", model), ("encoder", model.encoder), ("decoder", model.decoder)):
            state = module.state_dict()
            if part == "decoder" and self.logit_groups:
                state[LOGIT_GROUPS] = torch.tensor(self.logit_groups)
            atomic_save(state, self.run_dir / f"vae_multi{'' if part == 'model' else '_' + part}_{tag}.pt")
