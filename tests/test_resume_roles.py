"""A resumed run whose settings differ from its checkpoint's, one role at a time (config.py's ROLES):
a plan or model setting is refused in one line naming both values, a recipe setting is in force
from the resume on (also where the optimizer, the plateau schedule or the best-epoch tracking
restore a value of their own), a run setting is applied and changes nothing the run computes. And
a file that is not a training checkpoint is refused in one line."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kmervae_core.config import TrainConfig
from kmervae_core.errors import KmervaeError
from kmervae_core.training.checkpoint import list_checkpoints, read_checkpoint
from tests.conftest import run, train_config
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
