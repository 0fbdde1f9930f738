"""Checkpoints and exports: written atomically (atomic.py), so a crash leaves the previous file,
never half of a new one; loaded with weights_only=True; which one a run resumes from (the newest
sound one: a damaged one, from a file system fault, is moved aside), whether it may continue on
this store, and when the next is due (Checkpointer)."""
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
from ..outputs import one_line
from ..store.contract import describe_identity

NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")
DAMAGED = ".damaged"  # the suffix a damaged checkpoint is moved aside under (out of NAME, so never pruned)
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
        raise KmervaeError(f"{path}: not a training checkpoint (unreadable: {one_line(e, 120)})") from None
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


def initial_weights(path: str) -> dict:
    """The model weights that `--init-from` starts a new run with: a training checkpoint's, or a
    whole-model export's (vae_multi_best.pt); one line for any other file."""
    if not Path(path).is_file():
        raise KmervaeError(f"--init-from {path}: no such file")
    try:
        state = load(Path(path))
    except Exception as e:  # noqa: BLE001 - torch.load's errors for a file that is not its own are of many kinds
        raise KmervaeError(f"--init-from {path}: not a checkpoint torch can read ({one_line(e, 120)})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state["model"]
    if isinstance(state, dict) and any(str(k).startswith("encoder.") for k in state):
        return state
    raise KmervaeError(f"--init-from {path}: neither a training checkpoint nor a whole-model export "
                       "(vae_multi_best.pt or _final.pt)")


def refuse_other_store(saved: dict, now: dict | None, path: Path) -> None:
    """A checkpoint continues only on a store of the content it trained on (its epoch plan is that
    store's rows and chunks): one line naming both stores and the way to start anew from its
    weights. A store moved or copied keeps its fingerprint; a checkpoint without the record (older
    than it) or a store that cannot be read (the feed says why) is not checked."""
    was = saved.get("store")
    if not was or not now or was["fingerprint"] == now["fingerprint"]:
        return
    raise KmervaeError(f"{path} was trained on {describe_identity(was)}, not on --data {describe_identity(now)}: "
                       f"resume on that store, or start a new run from its weights with --init-from {path} "
                       "and another --out")


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
        self.note: str | None = None  # a damaged checkpoint moved aside, for the resume line
        self.logit_groups = sorted(cfg.kmers, reverse=True) if cfg.likelihood == MULTINOMIAL else None
        self.path, self._saved = self._resume(cfg.resume)

    def _resume(self, resume: str) -> tuple[Path | None, dict | None]:
        """The checkpoint to resume from and its state (None, None for a new run)."""
        if resume == "never":
            if list_checkpoints(self.run_dir):
                raise KmervaeError(f"{self.run_dir}: already holds checkpoints of another run; "
                                   "choose another --out, or --resume auto to continue it")
            return None, None
        if resume != "auto":
            path = Path(resume)
            if not path.is_file():
                raise KmervaeError(f"{path}: no such checkpoint")
            return path, read_checkpoint(path)
        return self._newest_sound()

    def _newest_sound(self) -> tuple[Path | None, dict | None]:
        """The run's newest checkpoint that reads whole. Newer ones that do not (our writes are
        atomic: a disk or file system fault) are moved aside by the writer, named in `note`; with
        none sound the run is refused and nothing moved, so that a rerun does not start over."""
        damaged: list[tuple[Path, str]] = []
        for path in reversed(list_checkpoints(self.run_dir)):
            try:
                saved = read_checkpoint(path)
            except KmervaeError as e:  # another rank may have moved it aside meanwhile: damaged too
                damaged.append((path, str(e).removeprefix(f"{path}: ")))
                continue
            if damaged:
                if self.writer:
                    for bad, _ in damaged:
                        bad.replace(bad.with_name(bad.name + DAMAGED))
                self.note = (f"{', '.join(str(bad) for bad, _ in damaged)}: damaged, moved aside (renamed *{DAMAGED}): "
                             f"{damaged[0][1]}; resuming from the newest sound checkpoint, {path.name}")
            return path, saved
        if damaged:
            raise KmervaeError(f"{self.run_dir}: no sound checkpoint to resume: the newest, {damaged[0][0].name}, is "
                               f"damaged ({damaged[0][1]}); move the damaged ones away to start the run again")
        return None, None

    def settle(self, cfg: TrainConfig, world_size: int, store: dict | None) -> TrainConfig:
        """`cfg` with the partition count this run trains with (settle_plan), once the checkpoint
        is known to suit `store` (store_identity of --data)."""
        if self._saved is not None:
            refuse_other_store(self._saved, store, self.path)
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
