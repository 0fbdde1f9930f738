"""What a run leaves when things go wrong or are shared: a killed loader worker is one line (rank,
signal, what to try) with the checkpoints kept and no process left behind; every file a run
writes has the permissions the user's umask asks for."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from tests.conftest import ROOT, child_env

pytestmark = pytest.mark.slow
TINY = ["--hidden", "64,32", "--latent", "8", "--batch-size", "48", "--metrics-port", "0"]


def start(*args, umask: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", *map(str, args)], cwd=ROOT, env=child_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def loader_workers(rank: psutil.Process) -> list[psutil.Process]:
    """The rank's DataLoader workers: children of the forkserver it started, oldest first."""
    servers = [c for c in rank.children() if "forkserver" in " ".join(c.cmdline())]
    return sorted((w for s in servers for w in s.children()), key=lambda p: p.create_time())


@pytest.fixture(scope="module")
def worker_killed(train_store, tmp_path_factory) -> dict:
    """A run whose training loader worker is killed by SIGKILL in its third epoch: the pid
    killed, the exit status, stderr, the run folder, and the run's processes still alive 10 s on."""
    store, _ = train_store
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = start("-m", "train", "--data", store, "--out", out, "--epochs", 500, "--workers", 1, "--cache", "none",
                 "--latent-sample", 0, *TINY)
    for line in proc.stdout:  # two epochs done: checkpoints written, the third epoch streaming
        if line.startswith("Epoch 2/"):
            break
    rank = psutil.Process(proc.pid)
    family = rank.children(recursive=True)
    train_worker = loader_workers(rank)[0]  # the training loader is iterated (and started) first
    train_worker.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    deadline = time.time() + 10
    while time.time() < deadline and (left := [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]):
        time.sleep(0.2)
    return {"pid": train_worker.pid, "returncode": proc.returncode, "err": err, "out": out,
            "left": [p.cmdline() for p in left]}


def test_a_loader_worker_killed_mid_epoch_stops_the_run_with_one_line(worker_killed):
    err = worker_killed["err"]
    lines = err.strip().splitlines()
    assert worker_killed["returncode"] == 4 and len(lines) == 1, err[-3000:]
    assert f"rank 0: a data loader worker (pid {worker_killed['pid']}) was killed by SIGKILL" in lines[0]


def test_the_line_for_a_killed_loader_worker_says_what_to_try(worker_killed):
    line = worker_killed["err"].strip().splitlines()[0]
    for hint in ("--workers", "--cache none", "--cache-fraction"):
        assert hint in line


def test_a_run_stopped_by_a_killed_loader_worker_keeps_whole_checkpoints(worker_killed):
    checkpoints = sorted((worker_killed["out"] / "checkpoints").glob("*.pt"))
    assert checkpoints and not list((worker_killed["out"] / "checkpoints").glob(".*.tmp"))
    for path in checkpoints:
        torch.load(path, weights_only=True)


def test_a_run_stopped_by_a_killed_loader_worker_leaves_no_process_behind(worker_killed):
    assert not worker_killed["left"], worker_killed["left"]


def test_everything_a_run_writes_follows_the_umask(train_store, tmp_path):
    store, _ = train_store
    run_dir, latents = tmp_path / "run", tmp_path / "latents.zarr"
    for args in (["-m", "train", "--data", store, "--out", run_dir, "--epochs", 2, "--workers", 0, *TINY],
                 ["-m", "train.encode", "--checkpoint", run_dir / "vae_multi_encoder_best.pt", "--data", store,
                  "--out", latents],
                 ["-m", "train.report", run_dir]):
        proc = start(*args, umask=0o027)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    written = [p for root in (run_dir, latents) for p in [root, *root.rglob("*")]]
    names = {p.name for p in written}
    assert {"history.json", "config.json", "heldout_latents.npz", "vae_multi_encoder_best.pt"} <= names
    assert any(p.parent.name == "checkpoints" for p in written) and any(p.suffix == ".png" for p in written)
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written
             if p.stat().st_mode & 0o777 != (0o750 if p.is_dir() else 0o640)}
    assert not wrong
