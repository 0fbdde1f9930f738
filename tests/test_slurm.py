"""deploy/slurm/train.sbatch, unmodified, on a real one-node Slurm cluster started on this machine
(deploy/slurm/local_cluster.sh: slurmctld, slurmd and munged; CPU, gloo, 2 processes): a job trains
to the end; a job preempted the way Slurm's advance notice preempts it checkpoints, requeues itself
under the same id and finishes from its checkpoint with the weights of an uninterrupted run.
Without Slurm these tests skip, unless KMERVAE_REQUIRE_SLURM=1 (as in CI), where they fail."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from tests.conftest import ROOT, child_env
from tests.test_cluster import free_port, newest_step
from tests.test_train import TINY, final_weights, history

pytestmark = pytest.mark.slow
SLURM_COMMANDS = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "scontrol", "scancel", "sinfo", "squeue")
EPOCHS, STEPS_PER_EPOCH = 6, 10  # 600 rows, 10% held out, global batch 48
# The same run for both jobs, so that the first job's weights are the uninterrupted reference
TRAIN_ARGS = " ".join(map(str, ["--epochs", EPOCHS, "--checkpoint-every", 2, "--batch-size", 48, "--workers", 0,
                                "--deterministic", "--metrics-port", 0, *TINY]))
TRAP = "kmervae: USR1: every rank checkpoints at its current step, then the job is requeued"
CANCEL_TRAP = "kmervae: TERM: every rank checkpoints at its current step, then the job ends"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[dict]:
    """A throwaway cluster for this module; the environment that reaches it (SLURM_CONF)."""
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing and os.environ.get("KMERVAE_REQUIRE_SLURM") == "1":
        pytest.fail(f"KMERVAE_REQUIRE_SLURM=1, but {', '.join(missing)} not installed (Debian: slurm-wlm munge)")
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)")
    d = tmp_path_factory.mktemp("slurm")
    cluster = subprocess.Popen([ROOT / "deploy/slurm/local_cluster.sh", d / "cluster"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=(d / "cluster.err").open("w"), text=True)
    ready = cluster.stdout.readline()  # or EOF: the script gives up on a node not up in a minute
    daemons = psutil.Process(cluster.pid).children(recursive=True)
    try:
        assert ready.startswith("SLURM_CONF="), f"no cluster: {(d / 'cluster.err').read_text()}"
        yield {"SLURM_CONF": ready.strip().split("=", 1)[1]}
    finally:
        cluster.stdin.close()  # the script cancels what still runs and stops its daemons
        assert cluster.wait(timeout=120) == 0, (d / "cluster.err").read_text()
        _, alive = psutil.wait_procs(daemons, timeout=10)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]


def sbatch(slurm: dict, store: str, run_dir: Path, logs: Path) -> str:
    """Submit train.sbatch as it is: resources by sbatch options (no GPUs, this machine's CPUs),
    everything else by its environment variables; torchrun from this Python's environment."""
    env = child_env(**slurm, STORE=store, RUN_DIR=str(run_dir), GPUS_PER_NODE="2", RDZV_PORT=str(free_port()),
                    OMP_NUM_THREADS="1", TRAIN_ARGS=TRAIN_ARGS,
                    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    proc = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", f"--cpus-per-task={os.cpu_count()}",
                           f"--output={logs}/%x-%j.out", ROOT / "deploy/slurm/train.sbatch"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def job(slurm: dict, job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], env=child_env(**slurm), capture_output=True, text=True,
                         check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for_end(slurm: dict, job_id: str, timeout: float = 300) -> dict[str, str]:
    deadline = time.time() + timeout
    while (info := job(slurm, job_id))["JobState"] in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
        assert time.time() < deadline, f"job {job_id} still {info['JobState']}"
        time.sleep(0.5)
    return info


@pytest.fixture(scope="module")
def uninterrupted(slurm, train_store, tmp_path_factory) -> tuple[Path, Path, dict]:
    """One job left alone: (its run folder, its log, its final `scontrol show job`)."""
    d = tmp_path_factory.mktemp("uninterrupted")
    job_id = sbatch(slurm, train_store[0], d / "run", d)
    return d / "run", d / f"kmervae-{job_id}.out", wait_for_end(slurm, job_id)


def test_a_job_trains_to_the_end(uninterrupted):
    run_dir, log, info = uninterrupted
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log.read_text()[-3000:]
    assert f"done: {EPOCHS} epochs, {EPOCHS * STEPS_PER_EPOCH} steps" in log.read_text()
    assert [h["epoch"] for h in history(run_dir)] == list(range(1, EPOCHS + 1))
    assert (run_dir / "vae_multi_final.pt").exists()


def submit_and_wait_for_a_checkpoint(slurm: dict, store: str, run_dir: Path, logs: Path) -> str:
    """A job under way, with a checkpoint (step 2) behind it: its id."""
    job_id = sbatch(slurm, store, run_dir, logs)
    deadline = time.time() + 300
    while newest_step(run_dir) < 2:
        assert job(slurm, job_id)["JobState"] in ("PENDING", "RUNNING"), (logs / f"kmervae-{job_id}.out").read_text()
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    return job_id


def stopped_step(log: str) -> int:
    """The step of the ranks' one "stopped" line (rank 0 reports it)."""
    stopped = re.findall(r"^train: stopped at epoch \d+, step (\d+) ", log, flags=re.M)
    assert len(stopped) == 1, log[-3000:]
    return int(stopped[0])


def test_a_preempted_job_requeues_itself_and_finishes_from_its_checkpoint_with_the_uninterrupted_weights(
        slurm, train_store, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit_and_wait_for_a_checkpoint(slurm, train_store[0], run_dir, tmp_path)
    # what --signal=B:USR1@120 sends 120 s before the time limit: USR1 to the batch shell only
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=child_env(**slurm), check=True)
    info = wait_for_end(slurm, job_id)

    log = (tmp_path / f"kmervae-{job_id}.out").read_text()  # both runs append to the job's one file
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-3000:]
    assert log.count(TRAP) == 1, log[-3000:]
    step = stopped_step(log)
    assert 2 <= step < EPOCHS * STEPS_PER_EPOCH
    resumed = re.findall(rf"^resuming from {run_dir / 'checkpoints'}/\S+: epoch \d+, batch \d+, step (\d+) ", log,
                         flags=re.M)
    assert resumed == [str(step)], log[-3000:]
    assert log.index(TRAP) < log.index("train: stopped at") < log.index("resuming from") < log.index(f"done: {EPOCHS} epochs")

    reference = uninterrupted[0]
    w_full, w_cut = final_weights(reference), final_weights(run_dir)
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)
    assert history(run_dir) == [{**h, "seconds": c["seconds"], "samples_per_s": c["samples_per_s"]}
                                for h, c in zip(history(reference), history(run_dir), strict=True)]


def test_a_cancelled_job_checkpoints_and_ends_without_requeueing_itself(slurm, train_store, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit_and_wait_for_a_checkpoint(slurm, train_store[0], run_dir, tmp_path)
    subprocess.run(["scancel", job_id], env=child_env(**slurm), check=True)  # TERM to the job, KILL after KillWait
    info = wait_for_end(slurm, job_id)

    log = (tmp_path / f"kmervae-{job_id}.out").read_text()
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), log[-3000:]
    assert log.count(CANCEL_TRAP) == 1 and TRAP not in log, log[-3000:]
    assert newest_step(run_dir) == stopped_step(log)  # what a later job with this RUN_DIR resumes from
