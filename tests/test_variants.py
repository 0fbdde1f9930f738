"""Learned priors and per-scale latents as users run them: DDP like one process, exact resume,
exports that `train.encode` takes, and one-line refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from kmervae_core.model import encoder_from_state
from tests.conftest import run
from tests.test_train import TINY, final_weights, history, torchrun, train_args

pytestmark = pytest.mark.slow
BLOCKS = ["--latent-blocks", "4,2,2"]  # 6-mers, 5-mers, 4..1-mers (the default --block-kmers)


def one_line_refusal(proc, text: str) -> None:
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and text in proc.stderr, proc.stderr


@pytest.mark.parametrize("variant", [["--prior", "mog:3"], ["--prior", "vamp:4", *BLOCKS]])
def test_two_processes_train_a_learned_prior_like_one(train_store, tmp_path, variant):
    store, _ = train_store
    args = ("--epochs", 2, "--latent-sample", 0, *TINY, *variant)
    run("train", *train_args(store, tmp_path / "one", *args), check=True)
    two = torchrun("train", *train_args(store, tmp_path / "two", *args))
    assert two.returncode == 0, two.stderr[-3000:]
    h1, h2 = history(tmp_path / "one"), history(tmp_path / "two")
    keys = [k for k in h1[0] if k.startswith(("train_", "val_")) and "kl" in k or k in ("train_recon", "val_loss")]
    assert ("val_kl_block_4+3+2+1" in keys) == ("--latent-blocks" in variant)
    # Validation runs BatchNorm on running statistics, which follow the rounding noise that Adam
    # turns into lr-sized steps of the Linear biases feeding BatchNorm (see test_train.py): the
    # reconstruction hides it, a validation KL of a few nats per row shows it at ~1e-4.
    for a, b in zip(h1, h2, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4 if key.startswith("train_") else 2e-3), key
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    prior = [k for k in w1 if k.startswith("prior.")]
    assert prior  # the prior's parameters are in the exported model
    for name in prior:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5)


def test_a_learned_prior_with_per_scale_latents_resumes_exactly_and_encodes(train_store, tmp_path):
    store, _ = train_store
    variant = ("--prior", "vamp:4", *BLOCKS, *TINY)
    run("train", *train_args(store, tmp_path / "a", "--epochs", 3, *variant), check=True)
    run("train", *train_args(store, tmp_path / "b", "--epochs", 2, *variant), check=True)
    more = run("train", *train_args(store, tmp_path / "b", "--epochs", 3, *variant), check=True)
    assert "resuming from" in more.stdout
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_kl_block_6"] for h in history(tmp_path / "a")] == [h["train_kl_block_6"] for h in history(tmp_path / "b")]

    enc_path = tmp_path / "a" / "vae_multi_encoder_final.pt"
    run("train.encode", "--checkpoint", enc_path, "--data", store, "--out", tmp_path / "z.zarr", check=True)
    state = torch.load(enc_path, weights_only=True)
    assert not any(k.startswith("prior") for k in state)  # the encoder export is the encoder alone
    enc = encoder_from_state(state)
    enc.load_state_dict(state)
    with torch.no_grad():
        want = enc.eval()(torch.from_numpy(zarr.open_group(store, mode="r")["clr"][:]))[0].numpy()
    got = zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["z_mean"][:]
    assert got.shape == (600, 8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    other = run("train", *train_args(store, tmp_path / "b", "--epochs", 4, *TINY, *BLOCKS, "--prior", "mog:4"))
    one_line_refusal(other, "checkpoint of a run with prior vamp:4, not mog:4")


def test_settings_that_cannot_work_are_one_line(train_store, tmp_path):
    store, _ = train_store
    one_line_refusal(run("train", *train_args(store, tmp_path / "x", "--prior", "mog:0")), "prior 'mog:0'")
    one_line_refusal(run("train", *train_args(store, tmp_path / "x", "--prior", "vamp:-1")), "prior 'vamp:-1'")
    one_line_refusal(run("train", *train_args(store, tmp_path / "x", "--prior", "cauchy")), "prior 'cauchy'")
    one_line_refusal(run("train", *train_args(store, tmp_path / "x", *TINY, "--latent-blocks", "4,2,1")),
                     "must be positive and add up to latent 8")
    run("train", *train_args(store, tmp_path / "flat", "--epochs", 1, *TINY), check=True)
    one_line_refusal(run("train", *train_args(store, tmp_path / "flat", "--epochs", 2, *TINY, *BLOCKS)),
                     "checkpoint of a flat latent run")
