"""What a user sees when a job of several ranks fails or is stopped: the failing rank's one line,
printed once and naming the rank, every rank leaving with the same status, no collective
traceback; Ctrl-C stops like SIGTERM; `python -m train.launch` ends with the ranks' status."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

from tests.conftest import ROOT, child_env, run, train_here
from tests.test_integrity import damage, training_chunk
from tests.test_train import TINY, torchrun, train_args

pytestmark = pytest.mark.slow
NOISE = ("Traceback", "ChildFailedError", "Connection closed", "SignalException")


def launch(module: str, *args, nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m train.launch --standalone --nproc_per_node=N -m module args`, as a user runs it."""
    return run("train.launch", "--standalone", f"--nproc_per_node={nproc}", "-m", module, *args,
               env={"OMP_NUM_THREADS": "1"}, timeout=600)


def one_line_from_one_rank(proc: subprocess.CompletedProcess, status: int = 2) -> str:
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == status and len(errors) == 1, (proc.returncode, output[-3000:])
    assert not any(noise in output for noise in NOISE), output[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def unlabelled_store(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("unlabelled")
    run("ingest.synth", d / "a.npy", "--rows", 300, "--seed", 4, "--genomes", 3, check=True)
    run("ingest", d / "a.npy", d / "s.zarr", "--chunk-rows", 40, check=True)
    return str(d / "s.zarr")


def test_a_damaged_chunk_met_by_one_rank_ends_every_rank_with_its_one_line(train_store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(train_store[0], copy)
    chunk = training_chunk(copy)
    damage(copy, chunk, "flipped")
    args = train_args(str(copy), tmp_path / "run", "--epochs", 2, "--cache", "none", *TINY)
    line = one_line_from_one_rank(launch("train", *args))
    assert re.match(rf"train: error: rank [01]: {re.escape(str(copy))}: clr chunk {chunk} .* is damaged", line), line
    plain = torchrun("train", *train_args(str(copy), tmp_path / "plain", "--epochs", 2, "--cache", "none", *TINY))
    assert plain.stderr.count("exitcode  : 2") == 2, plain.stderr[-3000:]  # both ranks, as torchrun reports them
    assert "Connection closed" not in plain.stderr and plain.stderr.count("train: error: rank") == 1


def test_select_by_knn_on_a_store_without_labels_is_refused_once_by_every_rank(unlabelled_store, tmp_path):
    line = one_line_from_one_rank(launch("train", *train_args(unlabelled_store, tmp_path, "--select-by", "knn", *TINY)))
    assert "--select-by knn needs a store with labels" in line and line.startswith("train: error: rank ")


def test_an_odd_world_size_is_refused_once_with_batch_sizes_that_work(train_store, tmp_path):
    args = train_args(train_store[0], tmp_path, *TINY)
    args[args.index("--batch-size") + 1] = "128"
    line = one_line_from_one_rank(launch("train", *args, nproc=3))
    assert "--batch-size 128 does not divide over 3 processes" in line
    assert "--batch-size 126 or --batch-size 129" in line


def test_encode_under_torchrun_refuses_an_existing_out_on_every_rank_and_leaves_it_alone(train_store, tmp_path):
    train_here(*train_args(train_store[0], tmp_path / "run", "--epochs", 1, *TINY))
    out = tmp_path / "latents.zarr"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    proc = launch("train.encode", "--checkpoint", tmp_path / "run" / "vae_multi_encoder_final.pt",
                  "--data", train_store[0], "--out", out)
    assert "already exists; pass --overwrite to replace it" in one_line_from_one_rank(proc)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


CAPTURE_SCRIPT = '''
import sys, torch
from kmervae_core.config import TrainConfig
from kmervae_core.distributed import init_distributed, shutdown
from kmervae_core.training.trainer import Trainer
from tests.test_step_graph import Replay
class FailsOnRankOne(Replay):
    def capture(self, fn):
        if torch.distributed.get_rank() == 1:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        super().capture(fn)
ctx = init_distributed()
cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], batch_size=48, workers=0, hidden=[64, 32], latent=8, epochs=1,
                  metrics_port=0, latent_sample=0, cache="none", deterministic=True, resume="never")
lines = []
trainer = Trainer(cfg, ctx, log=lines.append)
trainer.runner.graph_wanted, trainer.runner.graph_class = True, FailsOnRankOne
trainer.run()
print(ctx.rank, trainer.runner.graph is None, [line for line in lines if line.startswith("CUDA graph")])
trainer.close()
shutdown()
'''


def test_a_capture_failing_on_one_rank_under_ddp_sends_every_rank_to_eager_steps(train_store, tmp_path):
    """The ranks agree before any runs the capture check, whose replay all-reduces gradients:
    a rank that could not capture must not pair its vote with the others' gradients."""
    script = tmp_path / "capture.py"
    script.write_text(CAPTURE_SCRIPT)
    proc = torchrun(script, train_store[0], tmp_path / "run", module=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 True ['CUDA graph: not used (another rank could not capture); eager steps from here']" in proc.stdout


def ctrl_c(command: list[str], out, presses: int = 1) -> tuple[int, str, list[psutil.Process]]:
    """Run `command` in a session of its own and press Ctrl-C (SIGINT to its process group, as a
    terminal does) once the third epoch has begun: its status, output and processes."""
    proc = subprocess.Popen(command, cwd=ROOT, env=child_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Epoch 2/"):
            break
    family = psutil.Process(proc.pid).children(recursive=True)
    for _ in range(presses):
        os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stdout.read()
    proc.wait(timeout=120)
    psutil.wait_procs(family, timeout=10)
    return proc.returncode, "".join(seen) + rest, [p for p in family if p.is_running() and p.status() != "zombie"]


def test_ctrl_c_stops_every_rank_at_one_step_with_a_checkpoint_and_one_line(train_store, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "train.launch", "--standalone", "--nproc_per_node=2", "-m", "train",
               *train_args(train_store[0], out, "--epochs", 500, "--workers", 1, *TINY)]
    status, output, left = ctrl_c(command, out)
    assert status == 128 + signal.SIGINT, output[-3000:]
    stops = [line for line in output.splitlines() if line.startswith("train: stopped at epoch")]
    assert len(stops) == 1 and not any(noise in output for noise in (*NOISE, "KeyboardInterrupt")), output[-3000:]
    written = stops[0].split("after writing ")[1].split(";")[0]
    assert os.path.isfile(written) and not left, left
    assert f"resuming from {written}" in train_here(*train_args(train_store[0], out, "--epochs", 3, *TINY))


def test_a_first_ctrl_c_asks_for_a_stop_and_leaves_the_second_to_end_the_process_at_once():
    from train.__main__ import StopRequest
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        stop = StopRequest()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat (Slurm and torchrun both pass one on): still a stop
        assert stop.is_set() and signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        stop = StopRequest()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # the kernel ends the process on the next
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # torchrun's answer to a second Ctrl-C
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
