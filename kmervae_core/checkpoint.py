"""Checkpoints and exports written atomically (atomic.py), so a crash leaves the previous file,
never half of a new one; loaded with weights_only=True."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .atomic import atomic_file

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
