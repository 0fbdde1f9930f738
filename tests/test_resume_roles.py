"""A resumed run whose settings differ from its checkpoint's, one role at a time (config.py's ROLES):
a plan or model setting is refused in one line naming both values, a recipe setting is in force
from the resume on (also where the optimizer, the plateau schedule or the best-epoch tracking
restore a value of their own), a run setting is applied and changes nothing the run computes. A
file that is not a training checkpoint is refused in one line. A damaged newest checkpoint is moved
aside and the run resumes from the newest sound one. The store is no setting but the checkpoint's
record: a moved or copied store resumes, a store of other content is refused, naming --init-from,
which starts a new run from the weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kmervae_core.config import TrainConfig
from kmervae_core.errors import KmervaeError
from kmervae_core.training.checkpoint import list_checkpoints, read_checkpoint
from kmervae_core.distributed import DistContext
from kmervae_core.training.trainer import Trainer
from tests.conftest import run, train_config
from tests.test_rank_agreement import unlabelled_store  # noqa: F401 - a store of other content (300 rows)
from tests.test_train import TINY, final_weights, history, train_args

pytestmark = pytest.mark.slow
SETTINGS = dict(batch_size=48, workers=0, metrics_port=0, hidden=[64, 32], latent=8, latent_sample=60,
                checkpoint_every=100)


def train(store: str, out: Path, **change) -> list[str]:
    """Train in this process as `python -m train` would with SETTINGS and `change`: what the run said."""
    cfg = TrainConfig(data=store, out=str(out), **{**SETTINGS, **change})
    cfg.validate()
    return train_config(cfg)


@pytest.fixture(scope="module")
def runs(train_store, tmp_path_factory) -> tuple[str, Path]:
    """(the store, a folder holding `base`: a 2-epoch run to copy and resume, and `straight`: the
    same run for 3 epochs uninterrupted)."""
    store, d = train_store[0], tmp_path_factory.mktemp("roles")
    train(store, d / "base", epochs=2)
    train(store, d / "straight", epochs=3)
    return store, d


def resume(runs, tmp_path: Path, **change) -> tuple[Path, str]:
    """A copy of `base` resumed to 3 epochs with `change`: (its folder, what the run said)."""
    store, d = runs
    out = tmp_path / "run"
    shutil.copytree(d / "base", out)
    return out, "\n".join(train(store, out, epochs=3, **change))


def newest(out: Path) -> dict:
    return torch.load(list_checkpoints(out)[-1], weights_only=True)


@pytest.mark.parametrize("change, said, kept", [
    (dict(seed=7), "seed 42 in the checkpoint, 7 now", "its batches"),
    (dict(hidden=[32, 16]), "hidden 64,32 in the checkpoint, 32,16 now", "its model"),
], ids=["plan", "model"])
def test_a_changed_plan_or_model_setting_is_refused_naming_both_values(runs, tmp_path, change, said, kept):
    out = tmp_path / "run"
    shutil.copytree(runs[1] / "base", out)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    with pytest.raises(KmervaeError) as e:
        train(runs[0], out, epochs=3, **change)
    assert str(e.value) == (f"{list_checkpoints(out)[-1]}: {said}: a resumed run keeps {kept}; keep that setting, "
                            "or choose another --out")
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before


def test_a_learning_rate_given_on_resume_is_the_optimizers_from_there(runs, tmp_path):
    out, said = resume(runs, tmp_path, lr=1e-3)
    assert "settings changed since the checkpoint, in force from step 21: epochs 2 -> 3, lr 0.0001 -> 0.001" in said
    assert [g["lr"] for g in newest(out)["optimizer"]["param_groups"]] == [1e-3]  # no cut within patience 20


def test_plateau_settings_given_on_resume_are_the_schedules_from_there(runs, tmp_path):
    out, _ = resume(runs, tmp_path, plateau_factor=0.25, plateau_patience=0, min_lr=1e-5)
    plateau = newest(out)["tracker"]["plateau"]
    assert (plateau["factor"], plateau["patience"], plateau["min_lrs"]) == (0.25, 0, [1e-5])
    # ReduceLROnPlateau by hand: with patience 0, epoch 3 cuts the rate unless its validation loss
    # beats the best so far by the relative threshold 1e-4
    val = [h["val_loss"] for h in history(out)]
    cut = val[2] >= min(val[:2]) * (1 - 1e-4)
    assert [g["lr"] for g in newest(out)["optimizer"]["param_groups"]] == [pytest.approx(2.5e-5 if cut else 1e-4)]


def test_select_by_changed_on_resume_restarts_best_tracking_under_the_new_measure(runs, tmp_path):
    out, said = resume(runs, tmp_path, select_by="spearman")
    assert "select_by val_loss -> spearman; best-epoch tracking restarts by spearman" in said
    last = history(out)[-1]
    assert last["best"] is True  # the first epoch measured by spearman, not compared with a val_loss
    assert newest(out)["tracker"]["best"] == {"by": "spearman", "value": last["latent_spearman"], "epoch": 2}
    best, final = torch.load(out / "vae_multi_best.pt", weights_only=True), final_weights(out)
    assert all(torch.equal(best[k], final[k]) for k in final)


def test_a_likelihood_given_on_resume_is_the_losss_from_there(runs, tmp_path):
    out, said = resume(runs, tmp_path, likelihood="multinomial")
    assert "in force from step 21: epochs 2 -> 3, likelihood mse -> multinomial" in said
    straight, resumed = ([h["train_recon"] for h in history(d)] for d in (runs[1] / "straight", out))
    assert resumed[:2] == straight[:2] and resumed[2] != straight[2]
    decoder = torch.load(out / "vae_multi_decoder_final.pt", weights_only=True)
    assert decoder["logit_groups"].tolist() == [6, 5, 4, 3, 2, 1]  # exported as a multinomial decoder


def test_a_run_setting_changed_on_resume_is_applied_and_changes_nothing_computed(runs, tmp_path):
    out, said = resume(runs, tmp_path, checkpoint_every=4, keep_checkpoints=20)
    assert "in force from step 21: epochs 2 -> 3\n" in said + "\n"  # the only change named
    step = lambda path: int(path.name.split("-s")[1][:9])  # noqa: E731
    steps = [step(p) for p in list_checkpoints(out)]
    assert steps == [10, 20, 24, 28, 30]  # every 4th step of the third epoch, and its end
    straight, resumed = final_weights(runs[1] / "straight"), final_weights(out)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resuming_from_an_export_is_one_line_naming_the_checkpoint_to_give(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs[1] / "base", out)
    proc = run("train", *train_args(runs[0], tmp_path / "new", "--resume", out / "vae_multi_best.pt", *TINY))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"train: error: {out / 'vae_multi_best.pt'}: an exported model (weights only, for train.encode), not a "
        f"training checkpoint; give --resume {list_checkpoints(out)[-1]} (its run's newest), or --resume auto with "
        "--out set to the run folder"]


def test_a_file_torch_cannot_read_is_not_a_checkpoint(tmp_path):
    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint")
    with pytest.raises(KmervaeError, match=f"^{notes}: not a training checkpoint \\(unreadable: "):
        read_checkpoint(notes)


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_newest_sound_one(runs, tmp_path):
    store, d = runs
    out = tmp_path / "run"
    train(store, out, epochs=2, checkpoint_every=4)
    older, newer, newest_one = list_checkpoints(out)
    newest_one.write_bytes(newest_one.read_bytes()[: newest_one.stat().st_size // 2])  # a file system fault
    said = "\n".join(train(store, out, epochs=3))
    assert f"{newest_one}: damaged, moved aside (renamed *.damaged): not a training checkpoint" in said
    assert f"; resuming from the newest sound checkpoint, {newer.name}" in said
    assert f"resuming from {newer}: epoch 2, batch 6, step 16" in said
    assert newest_one.with_name(newest_one.name + ".damaged").is_file()  # kept, out of the rotation
    straight, resumed = final_weights(d / "straight"), final_weights(out)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # as if nothing had happened


def test_a_run_whose_checkpoints_are_all_damaged_is_refused_and_nothing_is_moved(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs[1] / "base", out)
    for path in list_checkpoints(out):
        path.write_bytes(path.read_bytes()[:1000])
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(KmervaeError) as e:
        train(runs[0], out, epochs=3)
    assert str(e.value).startswith(f"{out}: no sound checkpoint to resume: the newest, {names[-1]}, is damaged (")
    assert str(e.value).endswith("; move the damaged ones away to start the run again")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == names


def test_a_store_moved_or_copied_resumes_as_before(runs, tmp_path):
    moved = tmp_path / "scratch" / "copy.zarr"
    shutil.copytree(runs[0], moved)
    out = tmp_path / "run"
    shutil.copytree(runs[1] / "base", out)
    said = "\n".join(train(str(moved), out, epochs=3))
    assert f"resuming from {out / 'checkpoints' / 'ckpt-e0002-s000000020.pt'}: epoch 3, batch 0, step 20" in said
    straight, resumed = final_weights(runs[1] / "straight"), final_weights(out)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resuming_on_a_store_of_other_content_is_refused_naming_both_and_init_from(runs, unlabelled_store, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs[1] / "base", out)
    ckpt = list_checkpoints(out)[-1]
    with pytest.raises(KmervaeError) as e:
        train(unlabelled_store, out, epochs=3)
    assert str(e.value) == (
        f"{ckpt} was trained on {runs[0]} (600 rows in 40-row chunks, global CLR, from all_kmers.npy), not on "
        f"--data {unlabelled_store} (300 rows in 40-row chunks, global CLR, from a.npy): resume on that store, or start a "
        f"new run from its weights with --init-from {ckpt} and another --out")
    assert list_checkpoints(out) == [ckpt.with_name(p.name) for p in list_checkpoints(runs[1] / "base")]


def test_init_from_starts_a_new_run_at_epoch_one_from_the_checkpoints_weights(runs, unlabelled_store, tmp_path):
    ckpt = list_checkpoints(runs[1] / "base")[-1]
    cfg = TrainConfig(data=unlabelled_store, out=str(tmp_path / "new"), init_from=str(ckpt), epochs=1, **SETTINGS)
    trainer = Trainer(cfg, DistContext(0, 1, 0, torch.device("cpu")), log=lambda line: None)
    try:
        weights, saved = trainer.model.state_dict(), torch.load(ckpt, weights_only=True)["model"]
        assert all(torch.equal(weights[k], saved[k]) for k in saved)
        assert (trainer.epoch, trainer.batch, trainer.runner.step) == (0, 0, 0)
    finally:
        trainer.close()
    said = "\n".join(train(unlabelled_store, tmp_path / "new", init_from=str(ckpt), epochs=1))
    assert f"starting at epoch 1 from the weights of {ckpt} (optimizer, schedule and epoch plan new)" in said
    assert [h["epoch"] for h in history(tmp_path / "new")] == [1]
