"""One writer per output: a second run into a run folder another run is writing is refused in one
line naming the live run (host, pid, since when), touching nothing, and the first runs on; a run
whose process was killed (kill -9) leaves its lock to the next run, which says whose it took over
and resumes, also when torchrun restarts the ranks (--max-restarts); an encode into an --out
another encode is writing is refused likewise."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kmervae_core.run_lock import LOCK_NAME, RunLock
from kmervae_core.training.checkpoint import NAME, list_checkpoints
from tests.conftest import ROOT, child_env
from tests.test_outputs import cli, signals_kept  # noqa: F401 - a fixture
from tests.test_rank_agreement import launch, one_line_from_one_rank
from tests.test_train import TINY, train_args

pytestmark = pytest.mark.slow
WAIT_S = 300  # a bound on waiting for a child to reach a point, never a timing assumption


def wait_for(what: str, ready, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.1)


def checkpoints_after(out: Path, step: int):
    return lambda: any(int(NAME.match(p.name).group(2)) > step for p in list_checkpoints(out))


def newest_step(out: Path) -> int:
    found = list_checkpoints(out)
    return int(NAME.match(found[-1].name).group(2)) if found else -1


def start(*command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", *command], cwd=ROOT, env=child_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_second_run_is_refused_naming_the_live_one_and_a_killed_ones_lock_is_taken_over(
        train_store, tmp_path, signals_kept):  # noqa: F811
    out = tmp_path / "run"
    args = train_args(train_store[0], out, "--epochs", 1000, "--checkpoint-every", 2, *TINY)
    first = start("-m", "train", *args)
    try:
        wait_for("a checkpoint", checkpoints_after(out, 0), first)
        config = (out / "config.json").stat().st_mtime_ns
        status, err, _ = cli("train", *args)
        assert status == 2 and err.count("\n") == 1, err
        assert err.startswith(f"train: error: {out}: another run is writing it (host {socket.gethostname()}, "
                              f"pid {first.pid}, since "), err
        assert (out / "config.json").stat().st_mtime_ns == config  # the second wrote nothing
        wait_for("a checkpoint after the refusal", checkpoints_after(out, newest_step(out)), first)  # unharmed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid  # a killed run leaves its name
    epoch = int(NAME.match(list_checkpoints(out)[-1].name).group(1))
    status, err, said = cli("train", *train_args(train_store[0], out, "--epochs", epoch + 1, *TINY))
    assert status == 0, err
    assert f"{out}: took over the lock of a run that is gone (host {socket.gethostname()}, pid {first.pid}, " in said
    assert f"resuming from {out / 'checkpoints'}" in said


def test_torchrun_refuses_a_second_job_on_every_rank_and_a_restart_takes_the_killed_ranks_lock_over(
        train_store, tmp_path):
    out = tmp_path / "run"
    args = train_args(train_store[0], out, "--epochs", 1000, "--checkpoint-every", 2, *TINY)
    first = start("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
                  "-m", "train", *args)
    try:
        wait_for("a checkpoint", checkpoints_after(out, 0), first)
        line = one_line_from_one_rank(launch("train", *args))
        assert f"{out}: another run is writing it (host {socket.gethostname()}" in line, line
        rank0 = [p for p in psutil.Process(first.pid).children(recursive=True)
                 if p.environ().get("RANK") == "0" and "train" in p.cmdline()]
        assert len(rank0) == 1, rank0
        rank0[0].kill()
        step = newest_step(out)
        wait_for("a checkpoint of the restarted ranks", checkpoints_after(out, step), first)
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        output = first.communicate(timeout=120)[0]
    assert f"{out}: took over the lock of a run that is gone (host {socket.gethostname()}, pid {rank0[0].pid}" \
           in output, output[-3000:]
    assert output.count("resuming from ") == 1, output[-3000:]


def test_an_encode_into_an_out_another_encode_is_writing_is_refused(train_store, tmp_path):
    from tests.conftest import train_here
    train_here(*train_args(train_store[0], tmp_path / "run", "--epochs", 1, *TINY))
    out = tmp_path / "latents.zarr"
    held = RunLock(out, "encode", beside=True)  # the lock an encode writing `out` holds
    try:
        status, err, _ = cli("train.encode", "--checkpoint", tmp_path / "run" / "vae_multi_encoder_final.pt",
                          "--data", train_store[0], "--out", out, "--overwrite")
    finally:
        held.release()
    assert status == 2 and err.startswith(f"train.encode: error: {out}: another encode is writing it (host "), err
    assert not out.exists()


def test_a_clean_end_leaves_no_lock_file_and_the_next_writer_takes_the_lock_without_a_word(tmp_path):
    run = RunLock(tmp_path / "run")
    run.release()
    encode = RunLock(tmp_path / "latents.zarr", "encode", beside=True)
    encode.release()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["run"]  # no lock file beside or inside
    again = RunLock(tmp_path / "run")
    assert again.note is None
    again.release()


def test_a_writer_that_locks_the_file_a_holder_removed_as_it_ended_locks_the_new_one(tmp_path, monkeypatch):
    """The race of a clean end: B opens the lock file, A ends (removes it, lets go), B's flock then
    succeeds on the removed file. B must hold the file at the path, or a third writer would get in."""
    import kmervae_core.run_lock as run_lock
    first = RunLock(tmp_path / "run")
    flock, ended = run_lock.fcntl.flock, []

    def first_ends_then_flock(fd, op):
        if not ended:
            ended.append(first.release())
        return flock(fd, op)
    monkeypatch.setattr(run_lock.fcntl, "flock", first_ends_then_flock)
    second = RunLock(tmp_path / "run")
    monkeypatch.setattr(run_lock.fcntl, "flock", flock)
    assert ended and os.stat(tmp_path / "run" / LOCK_NAME).st_ino == os.fstat(second.fd).st_ino
    with pytest.raises(run_lock.KmervaeError, match="another run is writing it"):
        RunLock(tmp_path / "run")
    second.release()
