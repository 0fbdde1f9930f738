"""Cluster behaviour of `torchrun -m train`: a stop signal (preemption) checkpoints every rank at
one step and the next start continues exactly; a run resumes on another world size of its plan's
family and refuses one outside it; torchrun agents rendezvous as two nodes and restart a killed
node's worker. Small stores, few steps, gloo on loopback."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from kmervae_core.training.checkpoint import NAME, list_checkpoints
from tests.conftest import ROOT, child_env, run, train_here
from tests.test_train import TINY, final_weights, history, torchrun, train_args

pytestmark = pytest.mark.slow
STOPPED = 143  # train's documented status for a run stopped by SIGTERM or SIGUSR1


def newest_step(out: Path) -> int:
    found = list_checkpoints(out)
    return int(NAME.match(found[-1].name).group(2)) if found else -1


def wait_for_step(agent: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while newest_step(out) < step:
        assert agent.poll() is None, f"the run ended (status {agent.returncode}) before step {step}"
        assert time.time() < deadline, f"no checkpoint of step {step} in time"
        time.sleep(0.01)


def processes_of(agent: subprocess.Popen) -> list[psutil.Process]:
    """torchrun's ranks and everything they started (none are expected: the feed's readers are threads)."""
    return psutil.Process(agent.pid).children(recursive=True)


def stop_midway(agent: subprocess.Popen, out: Path, send) -> tuple[str, list[psutil.Process]]:
    """Once the run has checkpointed 3 steps past where it started, freeze its ranks, `send`
    the signal(s), let them go on, and wait for the job to end: (its output, its processes)."""
    wait_for_step(agent, out, newest_step(out) + 3)
    ranks = psutil.Process(agent.pid).children()
    family = processes_of(agent)
    for rank in ranks:
        rank.suspend()  # so that the run cannot end before the signal arrives
    send(agent, ranks)
    time.sleep(0.5)
    for rank in ranks:
        rank.resume()
    return agent.communicate(timeout=120)[0], family


def assert_stopped_with_a_checkpoint(output: str, out: Path, family: list[psutil.Process]) -> int:
    lines = [line for line in output.splitlines() if line.startswith("train: stopped at epoch")]
    assert len(lines) == 1, output[-3000:]
    step = int(lines[0].split("step ")[1].split()[0])
    assert newest_step(out) == step
    assert not list((out / "checkpoints").glob(".*.tmp"))
    for path in list_checkpoints(out):  # every checkpoint whole, none written halfway
        assert torch.load(path, weights_only=True)["runner"]["step"] <= step
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    return step


# The uninterrupted run the interrupted ones below must end like: 2 processes, 3 epochs
ARGS = ("--epochs", 3, "--checkpoint-every", 1, *TINY)


@pytest.fixture(scope="module")
def full(train_store, tmp_path_factory) -> Path:
    """The run folder of `torchrun` with ARGS on the train store, left alone."""
    out = tmp_path_factory.mktemp("uninterrupted") / "full"
    proc = torchrun("train", *train_args(train_store[0], out, *ARGS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_stop_signal_checkpoints_every_rank_at_one_step_and_the_next_start_continues_exactly(train_store, full,
                                                                                               tmp_path):
    store, _ = train_store
    args = ARGS  # checkpoints at every step, also in the uninterrupted run: the epoch sums reduce alike
    out = tmp_path / "cut"

    # SIGTERM to torchrun, as `scancel` and a Kubernetes eviction send it: torchrun passes it on
    agent = torchrun("train", *train_args(store, out, *args, "--workers", 1), popen=True)
    output, family = stop_midway(agent, out, lambda agent, ranks: agent.send_signal(signal.SIGTERM))
    first = assert_stopped_with_a_checkpoint(output, out, family)
    assert 3 <= first < 30

    # SIGUSR1 (Slurm's advance notice) reaching one rank only, many times: some land while a
    # checkpoint is written, and the other rank stops at the same step all the same
    agent = torchrun("train", *train_args(store, out, *args, "--workers", 1), popen=True)
    output, family = stop_midway(agent, out, lambda agent, ranks: [ranks[1].send_signal(signal.SIGUSR1)
                                                                    for _ in range(20)])
    assert f"resuming from {out / 'checkpoints'}" in output and f"step {first} " in output
    assert f"exitcode  : {STOPPED}" in output  # both ranks, as torchrun reports them
    second = assert_stopped_with_a_checkpoint(output, out, family)
    assert first < second < 30

    rest = torchrun("train", *train_args(store, out, *args))
    assert rest.returncode == 0, rest.stderr[-3000:]
    w_full, w_cut = final_weights(full), final_weights(out)
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)
    assert history(out) == [{**h, "seconds": c["seconds"], "samples_per_s": c["samples_per_s"]}
                            for h, c in zip(history(full), history(out), strict=True)]


def test_one_process_stopped_by_sigterm_exits_143_after_its_checkpoint(train_store, tmp_path):
    store, _ = train_store
    proc = subprocess.Popen([sys.executable, "-m", "train", *train_args(store, tmp_path, "--epochs", 50, *TINY)],
                            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "history.json").exists():  # an epoch is done: training is under way
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == STOPPED
    assert stderr.startswith("train: stopped at epoch") and len(stderr.strip().splitlines()) == 1, stderr
    assert newest_step(tmp_path) == int(stderr.split("step ")[1].split()[0])


def test_a_run_stopped_on_two_processes_resumes_on_one_and_trains_every_row_once(train_store, tmp_path):
    """Both world sizes divide the plan's 48 partitions, so the resumed run takes the same global
    batches: the interrupted epoch's rows and losses are those of an uninterrupted run."""
    store, _ = train_store
    args = ("--epochs", 2, "--checkpoint-every", 1, *TINY)
    train_here(*train_args(store, tmp_path / "one", *args))
    out = tmp_path / "cut"
    agent = torchrun("train", *train_args(store, out, *args), popen=True)
    output, family = stop_midway(agent, out, lambda agent, ranks: agent.send_signal(signal.SIGTERM))
    step = assert_stopped_with_a_checkpoint(output, out, family)
    assert 3 <= step < 20

    changed = run("train", *train_args(store, out, *args, "--partitions", 24))
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert "partitions 48 in the checkpoint, 24 now: a resumed run keeps its batches" in changed.stderr

    rest = train_here(*train_args(store, out, *args))
    assert f"step {step} (written by 2 processes, now 1; 48 partitions)" in rest
    for a, b in zip(history(tmp_path / "one"), history(out), strict=True):
        assert a["train_rows"] == b["train_rows"]
        for key in ("train_recon", "train_kl", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_a_checkpoint_whose_plan_does_not_fit_the_new_world_size_is_refused_in_one_line(train_store, tmp_path):
    store, _ = train_store
    train_here(*train_args(store, tmp_path, "--epochs", 1, "--partitions", 3, *TINY))
    before = {p: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path)}
    proc = torchrun("train", *train_args(store, tmp_path, "--epochs", 2, *TINY))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train: error:")]
    assert lines and set(lines) == {lines[0]}, proc.stderr[-3000:]
    assert "its epoch plan has 3 partitions, which world size 2 does not divide; resume it on 1, 3 processes" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path)} == before  # the last good one intact


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_tree(proc: subprocess.Popen) -> None:
    """Kill `proc` and every process under it (ranks and anything they started), whatever state it is in."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    proc.wait()


def sigterm_pending(process: psutil.Process) -> bool:
    status = Path(f"/proc/{process.pid}/status").read_text()
    pending = (int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:")))
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in pending)


def test_two_nodes_rendezvous_and_a_killed_workers_restart_ends_with_the_uninterrupted_weights(train_store, full,
                                                                                             tmp_path):
    """Two torchrun agents as two nodes (c10d rendezvous on loopback, one process each): node 1's
    worker is killed while node 0's is busy (frozen, as a rank waiting in a collective would be),
    so node 1's agent restarts for a failure and node 0's for the new rendezvous, and the two
    agents count different restarts; both start their worker once more, and the workers resume
    from the newest checkpoint and end with the weights of an uninterrupted run."""
    store, _ = train_store
    args = ("--epochs", 3, "--checkpoint-every", 2, *TINY)  # the weights do not depend on checkpoints
    out, port = tmp_path / "nodes", free_port()
    logs = [tmp_path / f"node{n}.log" for n in range(2)]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
         f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=kmervae-test", "--max-restarts=1", "--monitor-interval=0.2",
         "-m", "train", *train_args(store, out, *args)],
        cwd=ROOT, env=child_env(OMP_NUM_THREADS="1", LOGLEVEL="INFO"), stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs]
    workers: list[set[int]] = [set(), set()]  # every worker each agent started

    def watch(until) -> None:
        """Note the agents' workers until `until()` holds (a hang fails here, not in CI's timeout)."""
        deadline = time.time() + 240
        while True:
            for node, seen in zip(nodes, workers):
                try:
                    seen.update(p.pid for p in psutil.Process(node.pid).children())
                except psutil.Error:  # the agent has ended
                    pass
            if until():
                return
            assert time.time() < deadline, "timed out"
            time.sleep(0.02)

    error = None
    try:
        wait_for_step(nodes[0], out, 6)
        watch(lambda: True)
        busy, killed = (psutil.Process(node.pid).children()[0] for node in nodes)
        busy.suspend()
        killed.kill()
        watch(lambda: sigterm_pending(busy))  # node 0's agent stops its healthy worker for the new round
        busy.resume()
        watch(lambda: all(node.poll() is not None for node in nodes))
    except Exception as e:  # reported below with the agents' logs
        error = e
    finally:
        codes = [node.poll() for node in nodes]
        for node in nodes:
            end_tree(node)
    outputs = "\n".join(f"--- node {n} (status {code}) ---\n{log.read_text()[-8000:]}"
                         for n, (code, log) in enumerate(zip(codes, logs)))
    assert error is None and codes == [0, 0], f"{error!r}\n{outputs}"
    assert [len(seen) for seen in workers] == [2, 2], outputs
    assert "resuming from" in outputs
    w_full, w_nodes = final_weights(full), final_weights(out)
    assert all(torch.equal(w_full[k], w_nodes[k]) for k in w_full)
