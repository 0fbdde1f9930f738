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
from ..config import TrainConfig, resume_mismatch
from ..feed.epoch_plan import default_partitions
from ..errors import KmervaeError

NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


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


# what fixes the epoch plan (the batches): a resumed run must keep them all
PLAN_SETTINGS = ("batch_size", "seed", "val_fraction", "val_split", "window_chunks", "lanes", "partitions")


def settle_plan(cfg: TrainConfig, world_size: int, saved: dict | None, path: Path | None) -> TrainConfig:
    """`cfg` with its partition count fixed. A new run takes default_partitions; a resumed run
    must have the checkpoint's model (resume_mismatch) and keeps its epoch plan, which any world
    size dividing its partitions follows batch for batch, and refuses in one line a setting or
    world size that would change it."""
    if saved is None:
        return dataclasses.replace(cfg, partitions=cfg.partitions or default_partitions(cfg.batch_size, world_size))
    mismatch = resume_mismatch(saved["config"], cfg)
    if mismatch:
        raise KmervaeError(f"{path}: {mismatch}")
    was = saved["config"]
    cfg = dataclasses.replace(cfg, partitions=cfg.partitions or was["partitions"])
    changed = [k for k in PLAN_SETTINGS if getattr(cfg, k) != was[k]]
    if changed:
        raise KmervaeError(f"{path}: written with {', '.join(f'{k}={was[k]}' for k in changed)}; this run has "
                           f"{', '.join(f'{k}={getattr(cfg, k)}' for k in changed)}, which would change its batches: "
                           "keep those settings, or choose another --out")
    if cfg.partitions % world_size:
        fits = [w for w in range(1, cfg.partitions + 1) if cfg.partitions % w == 0 and cfg.batch_size % w == 0]
        raise KmervaeError(f"{path}: its epoch plan has {cfg.partitions} partitions, which world size {world_size} "
                           f"does not divide; resume it on {', '.join(map(str, fits))} processes")
    return cfg


class Checkpointer:
    """A run's checkpoints: which one a start resumes from (`--resume`), whether it may be
    continued under this configuration (`settle`), when the next is due, writing them
    (atomically, the oldest pruned) and the model exports; only where `writer` (global rank 0).
    What a checkpoint holds is Trainer.state_dict's business (training.py)."""

    def __init__(self, cfg: TrainConfig, writer: bool) -> None:
        self.run_dir, self.every, self.keep = Path(cfg.out), cfg.checkpoint_every, cfg.keep_checkpoints
        self.writer = writer
        self.path = self._resume_path(cfg.resume)
        self._saved = load(self.path) if self.path is not None else None

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
        """The model, its encoder and its decoder (state dicts), as vae_multi[_part]_{tag}.pt."""
        if not self.writer:
            return
        for part, module in (("model", model), ("encoder", model.encoder), ("decoder", model.decoder)):
            atomic_save(module.state_dict(), self.run_dir / f"vae_multi{'' if part == 'model' else '_' + part}_{tag}.pt")
