"""Checkpoints and exports written atomically (temp file, fsync, rename), so a crash leaves the
previous file, never half of a new one; loaded with weights_only=True."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


def atomic_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
