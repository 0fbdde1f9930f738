"""`python -m train` and `torchrun -m train` as users run them, and `python -m train.encode`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import zarr

from kmervae_core.model.vae import VAE, Encoder
from tests.conftest import ROOT, child_env, run, train_config, train_here

pytestmark = pytest.mark.slow
TINY = ["--hidden", "64,32", "--latent", "8"]


def train_args(store: str, out: Path, *extra) -> list[str]:
    return ["--data", store, "--out", str(out), "--batch-size", "48", "--workers", "0",
            "--deterministic", "--metrics-port", "0", *map(str, extra)]


def torchrun(*args, nproc: int = 2, restarts: int = 0, popen: bool = False, module: bool = True):
    """torchrun a module (`-m`), or a script where module=False."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", *(["-m"] if module else []), *map(str, args)]
    env = child_env(OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if log := os.environ.get("KMERVAE_CHILD_LOG"):  # benchmarks/soak_exit.sh searches these for aborts
        with open(log, "a") as f:
            f.write(f"$ torchrun {' '.join(map(str, args))}\nstatus {proc.returncode}\n{proc.stdout}{proc.stderr}\n")
    return proc


def final_weights(out: Path) -> dict:
    return torch.load(out / "vae_multi_final.pt", weights_only=True)


def history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


def test_two_processes_train_like_one(train_store, tmp_path):
    store, _ = train_store
    one = train_here(*train_args(store, tmp_path / "one", "--epochs", 2, *TINY))
    two = torchrun("train", *train_args(store, tmp_path / "two", "--epochs", 2, *TINY))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Epoch 2/2: Recon:" in one and "Epoch 2/2: Recon:" in two.stdout
    for a, b in zip(history(tmp_path / "one"), history(tmp_path / "two"), strict=True):
        for key in ("train_recon", "train_kl", "val_loss", "val_mse_6mer", "val_mse_1mer"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
        assert a["train_rows"] == b["train_rows"]
    # A Linear bias feeding BatchNorm has zero true gradient, so Adam turns rounding noise into
    # lr-sized steps there, and the BatchNorm running mean follows it; in eval mode the two cancel.
    # Compare every other weight closely, and what the models compute.
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    shifted = {f"{part}.body.{i}.{what}" for part in ("encoder", "decoder")
               for i, what in [(0, "bias"), (3, "bias"), (1, "running_mean"), (4, "running_mean")]}
    for name in set(w1) - shifted:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-6)
    models = []
    for w in (w1, w2):
        vae = VAE(hidden=(64, 32), latent=8).eval()
        vae.load_state_dict(w)
        models.append(vae)
    x = torch.from_numpy(zarr.open_group(store, mode="r")["clr"][:])
    with torch.no_grad():
        out1, out2 = (m(x, torch.zeros(len(x), 8)) for m in models)
    for a, b in zip(out1, out2):  # the running-mean EMA over that bias noise leaves ~1e-3
        torch.testing.assert_close(a, b, rtol=1e-2, atol=5e-3)


def test_killed_rank_restarts_and_ends_with_the_uninterrupted_weights_leaving_none_of_its_processes(
        train_store, tmp_path):
    """SIGKILL leaves a rank no chance to end anything: whatever it started must end with it, or it
    outlives the job holding torchrun's output pipe open (its reader threads die with it)."""
    store, _ = train_store
    args = ("--epochs", 3, "--checkpoint-every", 4)
    full = torchrun("train", *train_args(store, tmp_path / "full", *args))
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "cut"
    agent = torchrun("train", *train_args(store, out, *args, "--workers", 2), restarts=1, popen=True)
    deadline, killed, its_processes = time.time() + 300, None, []
    while time.time() < deadline and killed is None and agent.poll() is None:
        if any(int(p.name.split("-s")[1][:9]) >= 6 for p in (out / "checkpoints").glob("ckpt-*.pt")):
            killed = psutil.Process(agent.pid).children()[-1]  # a rank
            its_processes = killed.children(recursive=True)  # none expected: the feed reads in threads
            killed.send_signal(signal.SIGKILL)
        time.sleep(0.01)
    output = agent.communicate(timeout=300)[0]  # returns once every holder of the pipe is gone
    assert killed is not None, "the run ended before a rank could be killed"
    assert not [p for p in its_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert agent.returncode == 0, output[-3000:]
    assert "resuming from" in output
    resumed_step = int(output.split("resuming from")[1].split("step ")[1].split()[0])
    assert 6 <= resumed_step < 3 * 11
    w_full, w_cut = final_weights(tmp_path / "full"), final_weights(out)
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full)
    assert [h["train_recon"] for h in history(out)] == [h["train_recon"] for h in history(tmp_path / "full")]


def test_a_stop_after_the_last_step_of_an_epoch_resumes_to_the_uninterrupted_weights(train_store, tmp_path):
    """A stop signal seen after an epoch's last step, before its validation, writes a checkpoint at
    batch = the epoch's batch count; resuming it ends that epoch and trains on (it used to fail:
    no batches left to plan)."""
    from kmervae_core.config import TrainConfig
    from kmervae_core.training.trainer import Stopped

    def train(out: Path, stop_after_epoch_1: bool = False) -> None:
        cfg = TrainConfig(data=train_store[0], out=str(out), batch_size=48, workers=0, hidden=[64, 32], latent=8,
                          metrics_port=0, latent_sample=0, epochs=2, deterministic=True)
        train_config(cfg, stop=lambda t: stop_after_epoch_1 and t.epoch == 0 and t.batch == t.batches)

    train(tmp_path / "straight")
    with pytest.raises(Stopped, match=r"stopped at epoch 1, step (\d+) \(batch \1\) on a signal"):
        train(tmp_path / "cut", stop_after_epoch_1=True)
    train(tmp_path / "cut")
    for name, w in final_weights(tmp_path / "straight").items():
        assert torch.equal(w, final_weights(tmp_path / "cut")[name]), name
    assert [h["val_loss"] for h in history(tmp_path / "cut")] == [h["val_loss"] for h in history(tmp_path / "straight")]


def test_resume_auto_continues_a_finished_run_exactly(train_store, tmp_path):
    store, _ = train_store
    train_here(*train_args(store, tmp_path / "a", "--epochs", 3, *TINY))
    train_here(*train_args(store, tmp_path / "b", "--epochs", 2, *TINY))
    more = run("train", *train_args(store, tmp_path / "b", "--epochs", 3, *TINY), check=True)
    assert "resuming from" in more.stdout and "Epoch 3/3" in more.stdout and "Epoch 2/3" not in more.stdout
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(history(tmp_path / "b")) == 3


def test_checkpoints_and_exports_load_with_weights_only(train_store, tmp_path):
    store, _ = train_store
    train_here(*train_args(store, tmp_path, "--epochs", 1, "--checkpoint-every", 5, *TINY))
    names = {p.name for p in tmp_path.glob("vae_multi*.pt")}
    assert names == {f"vae_multi{part}_{tag}.pt" for part in ("", "_encoder", "_decoder") for tag in ("best", "final")}
    vae = VAE(hidden=(64, 32), latent=8)
    vae.load_state_dict(torch.load(tmp_path / "vae_multi_best.pt", weights_only=True))
    state = torch.load(sorted((tmp_path / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert set(state) == {"config", "world_size", "store", "model", "optimizer", "tracker", "runner", "trainer"}  # by part
    assert set(state["tracker"]) == {"plateau", "best"} and set(state["runner"]) == {"step", "epoch_sums"}
    assert set(state["trainer"]) == {"epoch", "batch", "rng_cpu"}
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 48
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def _assert_stopped_cleanly(proc, out: Path, *what: str) -> int:
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and any(f"non-finite {w} at epoch 1, step" in lines[0] for w in what), proc.stderr
    bad_step = int(lines[0].split("step ")[1].split()[0])
    for path in (out / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert state["runner"]["step"] < bad_step
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "vae_multi_final.pt").exists()
    return bad_step


def test_exploding_weights_stop_the_run_and_keep_good_checkpoints(train_store, tmp_path):
    store, _ = train_store
    proc = run("train", *train_args(store, tmp_path, "--epochs", 5, "--lr", "1e6", "--checkpoint-every", 1,
                                    "--log-every", 1, *TINY))
    _assert_stopped_cleanly(proc, tmp_path, "weights", "loss")  # whichever overflows first


def test_weights_gone_non_finite_stop_the_run_even_while_the_loss_is_finite(train_store, tmp_path):
    """Training losses use batch statistics, so a BatchNorm running variance can overflow
    unseen by the loss: the check covers weights and buffers too."""
    from kmervae_core.config import TrainConfig
    from kmervae_core.distributed import DistContext
    from kmervae_core.training.trainer import NonFiniteLoss, Trainer
    cfg = TrainConfig(data=train_store[0], out=str(tmp_path), batch_size=48, workers=0, hidden=[64, 32], latent=8,
                      metrics_port=0, latent_sample=0, epochs=1)
    trainer = Trainer(cfg, DistContext(0, 1, 0, torch.device("cpu")), log=lambda line: None)
    x, _ = next(trainer.feed.train(0))
    for _ in range(2):
        trainer.runner(x)
    trainer.check_finite()  # all finite so far
    trainer.model.encoder.body[1].running_var[0] = float("inf")
    with pytest.raises(NonFiniteLoss, match="non-finite weights at epoch 1, step 2 "):
        trainer.check_finite()


def test_non_finite_loss_names_its_step(train_store, tmp_path):
    import shutil
    from kmervae_core import KmerStream
    store = str(tmp_path / "poisoned.zarr")
    shutil.copytree(train_store[0], store)
    stream = KmerStream(store, batch_size=48, seed=42)
    first = int(list(stream)[3][1][0]) // 40 * 40  # the chunk of a row of the 4th training batch
    zarr.open_group(store, mode="r+")["clr"][first:first + 40] = 1e30  # its squared error overflows
    expected = next(k for k, (_, rows) in enumerate(stream) if ((rows >= first) & (rows < first + 40)).any())
    proc = run("train", *train_args(store, tmp_path / "run", "--epochs", 2, "--checkpoint-every", 2, *TINY))
    assert _assert_stopped_cleanly(proc, tmp_path / "run", "loss") == expected + 1


def test_a_missing_store_is_one_line_and_exit_2(tmp_path):
    proc = run("train", "--data", tmp_path / "absent.zarr", "--out", tmp_path / "run")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no such store" in proc.stderr


def test_a_setting_out_of_range_is_refused_before_the_store_is_read(tmp_path):
    proc = run("train", "--data", tmp_path / "absent.zarr", "--epochs", "0")
    assert proc.returncode == 2 and "epochs must be at least 1" in proc.stderr


def test_a_run_without_validation_rows_says_so_and_names_the_training_loss_as_its_best(train_store, tmp_path):
    proc = run("train", *train_args(train_store[0], tmp_path / "run", "--epochs", 1, "--val-fraction", 0, *TINY),
               check=True)
    assert ("validation: none (--val-fraction 0); vae_multi_best.pt tracks the training loss and the latent "
            "metrics are off") in proc.stdout
    done = proc.stdout.split("done:")[1]
    assert "best training loss" in done and "val_loss" not in done


def test_encode_writes_every_row_once_in_store_order(train_store, tmp_path):
    store, _ = train_store
    train_here(*train_args(store, tmp_path / "run", "--epochs", 1, *TINY))
    enc_path = tmp_path / "run" / "vae_multi_encoder_best.pt"
    # one thread, as torchrun's ranks have: a matrix product's last bits depend on the thread count
    run("train.encode", "--checkpoint", enc_path, "--data", store, "--out", tmp_path / "one.zarr", "--log-var",
        check=True, env={"OMP_NUM_THREADS": "1"})
    two = torchrun("train.encode", "--checkpoint", enc_path, "--data", store, "--out", tmp_path / "two.zarr")
    assert two.returncode == 0, two.stderr[-2000:]
    enc = Encoder(hidden=(64, 32), latent=8).eval()
    enc.load_state_dict(torch.load(enc_path, weights_only=True))
    with torch.no_grad():
        mu, lv = enc(torch.from_numpy(zarr.open_group(store, mode="r")["clr"][:]))
    one, other = zarr.open_group(str(tmp_path / "one.zarr"), mode="r"), zarr.open_group(str(tmp_path / "two.zarr"), mode="r")
    assert one["z_mean"].shape == (600, 8) and one.attrs["kmervae_latents"]["complete"] is True
    np.testing.assert_allclose(one["z_mean"][:], mu.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one["z_log_var"][:], lv.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(other["z_mean"][:], one["z_mean"][:])


@pytest.fixture(scope="module")
def encoded(train_store, tmp_path_factory) -> Path:
    """A one-epoch run and its latents (RUN/latents.zarr): the folder."""
    out = tmp_path_factory.mktemp("encoded") / "run"
    train_here(*train_args(train_store[0], out, "--epochs", 1, *TINY))
    run("train.encode", "--checkpoint", out / "vae_multi_encoder_best.pt", "--data", train_store[0],
        "--out", out / "latents.zarr", check=True)
    return out


def test_the_latents_store_records_which_latent_columns_encode_which_kmers(encoded):
    attrs = zarr.open_group(str(encoded / "latents.zarr"), mode="r").attrs["kmervae_latents"]
    assert attrs["latent_blocks"] == [{"z": [0, 8], "k": [6, 5, 4, 3, 2, 1]}]


def test_a_per_scale_encoder_records_each_blocks_latent_columns_and_kmers():
    from kmervae_core.evaluation.encode import latent_layout
    from kmervae_core.store.kmers import N_FEATURES, block_columns
    blocks = [torch.as_tensor(c) for c in block_columns([6, 5, 4, 3, 2, 1], [[6], [5, 4], [3, 2, 1]])]
    model = VAE(N_FEATURES, (16,), 8, torch.arange(N_FEATURES), "normal", blocks, [4, 2, 2])
    assert latent_layout(model.encoder) == [{"z": [0, 4], "k": [6]}, {"z": [4, 6], "k": [5, 4]},
                                            {"z": [6, 8], "k": [3, 2, 1]}]


@pytest.mark.parametrize("name,message", [
    ("vae_multi_best.pt", "a whole-model export, not an encoder; pass its run's exported encoder, {run}/vae_multi_encoder_best.pt (or _final.pt)"),
    ("checkpoints", "a training checkpoint, not an encoder; pass its run's exported encoder, {run}/vae_multi_encoder_best.pt (or _final.pt)")])
def test_encode_given_another_file_of_the_run_names_the_encoder_to_pass(train_store, encoded, tmp_path, name, message):
    path = encoded / name if name != "checkpoints" else sorted((encoded / "checkpoints").glob("*.pt"))[-1]
    proc = run("train.encode", "--checkpoint", path, "--data", train_store[0], "--out", tmp_path / "z.zarr")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"train.encode: error: {path}: " + message.format(run=encoded)], proc.stderr
    assert not (tmp_path / "z.zarr").exists()


@pytest.mark.parametrize("case,message", [("float labels", "needs one integer label (genome or bin id) per row, 600 in "
                                                            "all; it holds float64 of shape (600,)"),
                                          ("k 0", "-k 0: the neighbours must number from 1 to 599"),
                                          ("k 600", "-k 600: the neighbours must number from 1 to 599")])
def test_evaluate_bad_input_is_one_line_and_exit_2(train_store, encoded, tmp_path, case, message):
    labels = np.load(train_store[1])
    args = ["--labels", train_store[1]]
    if case == "float labels":
        np.save(tmp_path / "f.npy", labels.astype(np.float64))
        args = ["--labels", tmp_path / "f.npy"]
    else:
        args += ["-k", case.split()[1]]
    proc = run("train.evaluate", encoded / "latents.zarr", *args)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_rerunning_a_finished_run_says_it_is_already_finished(train_store, encoded):
    again = run("train", *train_args(train_store[0], encoded, "--epochs", 1, *TINY), check=True)
    assert "already finished its 1 epoch; nothing to train (raise --epochs to train on)" in again.stdout
    assert "resuming from" not in again.stdout and "Epoch 1/1" not in again.stdout


@pytest.fixture(scope="module")
def knn_run(train_store, tmp_path_factory) -> tuple[Path, str]:
    """A 3-epoch run that keeps the epoch of the best kNN accuracy: (its folder, its output)."""
    out = tmp_path_factory.mktemp("knn") / "run"
    return out, train_here(*train_args(train_store[0], out, "--epochs", 3, "--select-by", "knn", *TINY))


def test_select_by_knn_keeps_the_epoch_with_the_best_knn(train_store, knn_run):
    from kmervae_core.evaluation.embedding import knn_accuracy
    store, _ = train_store
    out, stdout = knn_run
    assert " | active " in stdout and ", kNN " in stdout
    hist = history(out)
    knn = [h["latent_knn"] for h in hist]
    assert [h["best"] for h in hist] == [k > max(knn[:i], default=-1) for i, k in enumerate(knn)]
    best = max(range(len(knn)), key=lambda i: (knn[i], -i))
    enc = Encoder(hidden=(64, 32), latent=8).eval()
    enc.load_state_dict(torch.load(out / "vae_multi_encoder_best.pt", weights_only=True))
    held = np.load(out / "heldout_latents.npz")
    group = zarr.open_group(store, mode="r")
    with torch.no_grad():
        z = enc(torch.from_numpy(group["clr"].oindex[held["rows"], :]))[0].numpy()
    assert int(held["epoch"]) == best + 1  # the report's projection is of the encoder train.encode is given
    np.testing.assert_allclose(held["z"], z, rtol=1e-5, atol=1e-5)
    assert knn_accuracy(z, group["labels"].oindex[held["rows"]]) == pytest.approx(knn[best])
    assert 0 < hist[-1]["latent_active_units"] <= 8 and -1 <= hist[-1]["latent_spearman"] <= 1


def test_the_report_draws_every_figure_of_a_run(knn_run):
    out, _ = knn_run
    report = run("train.report", out, check=True)
    assert "report.md" in report.stdout
    pngs = sorted((out / "report").glob("*.png"))
    assert {p.name for p in pngs} >= {"losses.png", "kmer_mse.png", "beta_lr.png", "latent.png", "latents_pca.png"}
    import matplotlib.image
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(png).shape[0] > 100
    assert "latents_pca.png" in (out / "report" / "report.md").read_text()


def test_each_report_figure_labels_its_axes_and_draws_train_and_validation_alike(knn_run, monkeypatch, tmp_path):
    from matplotlib.figure import Figure
    from kmervae_core.evaluation.report import write_report
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("history.json", "config.json", "heldout_latents.npz"):
        (run_dir / name).write_bytes((knn_run[0] / name).read_bytes())
    drawn = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **_: drawn.__setitem__(Path(path).name, [
        (ax.get_title(), ax.get_ylabel(), [line.get_label() for line in ax.lines], ax.get_ylim()) for ax in fig.axes]))
    write_report(run_dir)
    best = [h["epoch"] for h in history(knn_run[0]) if h["best"]][-1]
    assert [(title, ylabel, labels) for title, ylabel, labels, _ in drawn["losses.png"]] == [
        (title, "per row", ["train", "validation", f"best epoch {best} (by knn)"])
        for title in ("Loss", "Reconstruction (weighted MSE)", "KL divergence")]
    (_, ylabel, labels, (low, high)), = drawn["active_units.png"]
    assert labels == ["active units", "latent size (8)"] and low == 0 and high > 8
    assert all(ylabel for axes in drawn.values() for _, ylabel, _, _ in axes)


def test_a_report_of_a_folder_without_history_is_one_line_and_exit_2(tmp_path):
    missing = run("train.report", tmp_path / "nowhere")
    assert missing.returncode == 2 and "no history.json" in missing.stderr


def test_training_on_some_kmer_groups_reports_and_encodes_those(train_store, tmp_path):
    store, _ = train_store
    out = tmp_path / "run"
    said = train_here(*train_args(store, out, "--epochs", 1, "--kmers", "5,4,3,2,1", "--kmer-weights", "2,1,1,1,1", *TINY))
    line = next(l for l in said.splitlines() if l.startswith("Epoch 1/1"))
    assert "6mer" not in line and "5mer=" in line and "1mer=" in line
    assert "val_mse_6mer" not in history(out)[0] and "val_mse_5mer" in history(out)[0]
    enc_path = out / "vae_multi_encoder_final.pt"
    run("train.encode", "--checkpoint", enc_path, "--data", store, "--out", tmp_path / "z.zarr", check=True)
    state = torch.load(enc_path, weights_only=True)
    np.testing.assert_array_equal(state["columns"].numpy(), np.arange(2080, 2772))
    enc = Encoder(692, (64, 32), 8).eval()
    enc.load_state_dict(state)
    with torch.no_grad():
        want = enc(torch.from_numpy(zarr.open_group(store, mode="r")["clr"][:, 2080:]))[0].numpy()
    np.testing.assert_allclose(zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["z_mean"][:], want,
                               rtol=1e-5, atol=1e-5)


def test_a_kmer_group_the_store_does_not_hold_is_refused(train_store, tmp_path):
    bad = run("train", *train_args(train_store[0], tmp_path / "bad", "--kmers", "7,6"))
    assert bad.returncode == 2 and "kmers must be distinct values" in bad.stderr


def first_step(store: str, out: Path, **settings) -> list[np.ndarray]:
    """One epoch trained in this process; of its first step: the clean batch, what the model was
    given, its reconstruction, and the loss sums the step added (float64)."""
    from kmervae_core.config import TrainConfig
    from kmervae_core.distributed import DistContext
    from kmervae_core.training.trainer import Trainer
    cfg = TrainConfig(data=store, out=str(out), batch_size=48, workers=0, hidden=[64, 32], latent=8, epochs=1,
                      metrics_port=0, latent_sample=0, cache="none", **settings)
    trainer = Trainer(cfg, DistContext(0, 1, 0, torch.device("cpu")), log=lambda line: None)
    steps, body = [], trainer.runner.step_body

    def recorded(x, graphed=False):
        seen = []
        hooks = [trainer.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone())),
                 trainer.model.register_forward_hook(lambda m, args, out: seen.append(out[0].detach().clone()))]
        before = trainer.runner.epoch_sums.clone()
        try:
            return body(x, graphed)
        finally:
            for h in hooks:
                h.remove()
            steps.append((x.clone(), *seen, trainer.runner.epoch_sums - before))
    trainer.runner.step_body = recorded
    try:
        trainer.run()
    finally:
        trainer.finish()
        trainer.close()
    return [t.double().numpy() for t in steps[0]]


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_denoising_feeds_the_encoder_a_noisy_row_and_scores_the_reconstruction_against_the_clean_one(
        train_store, tmp_path, noise):
    clean, seen, recon, sums = first_step(train_store[0], tmp_path / "run", input_noise=noise)
    diff = seen - clean
    assert abs(diff.mean()) < 0.01 and abs(diff.std() - noise) < 0.01 * max(noise, 1)  # N(0, noise^2) per value
    assert sums[1] == pytest.approx(((recon - clean) ** 2).sum(), rel=1e-5)  # the recon term: the clean row


def test_length_weights_are_the_lengths_to_the_power_scaled_to_mean_one():
    from kmervae_core.model.losses import length_weights
    np.testing.assert_allclose(length_weights(np.array([1000, 2000, 4000]), 1), [3 / 7, 6 / 7, 12 / 7], rtol=1e-6)
    np.testing.assert_allclose(length_weights(np.array([100, 400]), 0.5), [2 / 3, 4 / 3], rtol=1e-6)


def test_length_weighting_weighs_each_rows_reconstruction_by_its_contig_length(train_store, tmp_path):
    store = train_store[0]
    clean, _, recon, sums = first_step(store, tmp_path / "run", length_weight=1.0)
    group = zarr.open_group(store, mode="r")
    where = {row.tobytes(): i for i, row in enumerate(group["clr"][:])}  # the batch's store rows, by value
    lengths = group["column0"][:].astype(np.float64)
    w = lengths[[where[row.astype(np.float32).tobytes()] for row in clean]] / lengths.mean()
    assert sums[1] == pytest.approx((w[:, None] * (recon - clean) ** 2).sum(), rel=1e-5)
    assert sums[1] != pytest.approx(((recon - clean) ** 2).sum(), rel=1e-3)  # the weights do change it


def test_length_weighting_a_store_without_lengths_is_one_line_and_exit_2(sample, tmp_path):
    rows = np.load(sample[0])
    rows[:3, 0] = 0  # three rows whose column 0 holds no contig length
    np.save(tmp_path / "all_kmers.npy", rows)
    run("ingest", tmp_path / "all_kmers.npy", tmp_path / "kmers.zarr", "--chunk-rows", 100, check=True)
    proc = run("train", *train_args(str(tmp_path / "kmers.zarr"), tmp_path / "run", "--length-weight", 1, *TINY))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"train: error: --length-weight needs each row's contig length in column 0; 3 rows of {tmp_path / 'kmers.zarr'} "
        "have none (0 or less)")
