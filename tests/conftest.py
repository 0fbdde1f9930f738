"""Shared fixtures and independent references (hand-written from docs/design.md, not from the code)."""
from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# One OpenMP thread in this process and every process a test starts, unless a test says otherwise:
# the test models are tiny, and with parallel test workers (`make test`) on two cores more threads
# only spin (838 -> 808 CPU-seconds for the suite at two workers). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# docs/design.md's table: k -> (first source column, end source column), half-open.
DESIGN_SOURCE = {7: (1, 8193), 6: (8193, 10273), 5: (10273, 10785), 4: (10785, 10921),
                 3: (10921, 10953), 2: (10953, 10963), 1: (10963, 10965)}
USED_KS = (6, 5, 4, 3, 2, 1)


def reference_clr(rows: np.ndarray, scope: str, pseudocount: float | None = None) -> np.ndarray:
    """CLR in float64, written out from the definition: rows are full 10,965-column source rows."""
    used = np.asarray(rows, dtype=np.float64)[:, 8193:10965]
    out = np.empty_like(used)
    if scope == "global":
        p = 1e-6 if pseudocount is None else pseudocount
        logs = np.log(used + p)
        return logs - logs.mean(axis=1, keepdims=True)
    for k in USED_KS:
        a, b = (c - 8193 for c in DESIGN_SOURCE[k])
        p = 0.5 / (b - a) if pseudocount is None else pseudocount
        logs = np.log(used[:, a:b] + p)
        out[:, a:b] = logs - logs.mean(axis=1, keepdims=True)
    return out


def pages(nbytes: int) -> int:
    """Bytes a mapped buffer of `nbytes` takes: whole pages (an independent reckoning of slab.mapped_bytes)."""
    return -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE


def write_npy(path: Path, array: np.ndarray, fortran: bool = False) -> Path:
    np.save(path, np.asfortranarray(array) if fortran else np.ascontiguousarray(array))
    return path


def random_kmers(rows: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Rows shaped like all_kmers.npy: column 0 a length, each k group a composition with zeros."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.3, size=(rows, 10965))
    x[rng.random(x.shape) < 0.2] = 0.0
    for a, b in DESIGN_SOURCE.values():
        x[:, a:b] /= np.maximum(x[:, a:b].sum(axis=1, keepdims=True), 1e-12)
    x[:, 0] = rng.integers(1000, 20000, rows)
    return x.astype(dtype)


def child_env(**extra: str) -> dict:
    """The environment for a child process: this checkout first on PYTHONPATH, the rest kept."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run(module: str, *args: str, check: bool = False, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run `python -m module args` as a user would, from the repository root (`env`: extra variables)."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=child_env(**(env or {})),
                          capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train_config(cfg, stop=lambda trainer: False) -> list[str]:
    """Train TrainConfig `cfg` in this process, one CPU rank, as `python -m train` would: the
    lines the run said. `stop(trainer)` is the signal handler's flag, asked at every step.
    Torch's deterministic mode is left as it was found."""
    import torch
    from kmervae_core.distributed import DistContext
    from kmervae_core.training.trainer import Trainer
    deterministic, said = torch.are_deterministic_algorithms_enabled(), []
    trainer = Trainer(cfg, DistContext(0, 1, 0, torch.device("cpu")), log=said.append, stop=lambda: stop(trainer))
    try:
        trainer.run()
    finally:
        trainer.finish()
        trainer.close()
        torch.use_deterministic_algorithms(deterministic)
    return said


def train_here(*args) -> str:
    """`python -m train args` run in this process: what it printed. For fixtures that need a
    finished run, not the command's own behaviour (exit status, signals, stderr): each process
    saved is ~5 CPU-seconds of imports (torch, torch._dynamo), the largest cost of the suite."""
    from kmervae_core.config import load_config
    from train.__main__ import parse_args
    flags = vars(parse_args([str(a) for a in args]))
    return "\n".join(train_config(load_config(flags.pop("config"), flags)))


def store_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["kmervae"]


# The longest modules (serial --durations on an idle 2-core machine: 144, 121, 87, 67, 59, 45 s),
# collected first: `make test` runs the suite on parallel workers one module each (xdist's
# --dist loadfile, so a module's fixtures are made once; --no-loadscope-reorder keeps this order),
# and a long module taken last would keep one worker busy after the others have finished.
LONGEST_FIRST = ("test_train", "test_cluster", "test_slurm", "test_rank_agreement", "test_variants", "test_integrity")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    """A small synthetic sample made by `python -m ingest.synth` (300 rows, 4 genomes)."""
    d = tmp_path_factory.mktemp("sample")
    npy = d / "all_kmers.npy"
    run("ingest.synth", npy, "--rows", 300, "--seed", 1, "--genomes", 4, check=True)
    return npy, d / "all_kmers_labels.npy"


@pytest.fixture(scope="session")
def train_store(tmp_path_factory) -> tuple[str, Path]:
    """A 600-row store of 4 synthetic genomes in 40-row chunks, with their labels."""
    d = tmp_path_factory.mktemp("train")
    npy = d / "all_kmers.npy"
    run("ingest.synth", npy, "--rows", 600, "--seed", 2, "--genomes", 4, check=True)
    run("ingest", npy, d / "kmers.zarr", "--chunk-rows", 40, "--labels", d / "all_kmers_labels.npy", check=True)
    return str(d / "kmers.zarr"), d / "all_kmers_labels.npy"
