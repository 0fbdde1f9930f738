"""Learned priors and per-scale latents as users run them: DDP like one process, exact resume,
exports that `train.encode` takes, and one-line refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kmervae_core.model.vae import encoder_from_state
from tests.conftest import run, train_here
from tests.test_train import TINY, final_weights, history, torchrun, train_args

pytestmark = pytest.mark.slow
BLOCKS = ["--latent-blocks", "4,2,2"]  # 6-mers, 5-mers, 4..1-mers (the default --block-kmers)


def one_line_refusal(proc, text: str) -> None:
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and text in proc.stderr, proc.stderr


@pytest.fixture(scope="module", params=[["--prior", "mog:3"], ["--prior", "vamp:4", *BLOCKS]],
                ids=["mog", "vamp-blocks"])
def one_and_two(train_store, tmp_path_factory, request) -> tuple[list[str], Path]:
    """A variant trained 2 epochs by one process and by two (torchrun): (its flags, the folder
    holding runs `one` and `two`)."""
    store, _ = train_store
    d = tmp_path_factory.mktemp("variant")
    args = ("--epochs", 2, "--latent-sample", 0, *TINY, *request.param)
    train_here(*train_args(store, d / "one", *args))
    two = torchrun("train", *train_args(store, d / "two", *args))
    assert two.returncode == 0, two.stderr[-3000:]
    return request.param, d


def test_two_processes_train_a_learned_prior_like_one(one_and_two):
    variant, d = one_and_two
    h1, h2 = history(d / "one"), history(d / "two")
    keys = [k for k in h1[0] if k.startswith(("train_", "val_")) and "kl" in k or k in ("train_recon", "val_loss")]
    assert ("val_kl_block_4+3+2+1" in keys) == ("--latent-blocks" in variant)
    # Validation runs BatchNorm on running statistics, which follow the rounding noise that Adam
    # turns into lr-sized steps of the Linear biases feeding BatchNorm (see test_train.py): the
    # reconstruction hides it, a validation KL of a few nats per row shows it at ~1e-4.
    for a, b in zip(h1, h2, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4 if key.startswith("train_") else 2e-3), key


def test_two_processes_learn_the_prior_one_does_and_export_it(one_and_two):
    _, d = one_and_two
    w1, w2 = final_weights(d / "one"), final_weights(d / "two")
    prior = [k for k in w1 if k.startswith("prior.")]
    assert prior  # the prior's parameters are in the exported model
    for name in prior:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5)


VARIANT = ("--prior", "vamp:4", *BLOCKS, *TINY)


@pytest.fixture(scope="module")
def resumed(train_store, tmp_path_factory) -> tuple[Path, str]:
    """A VampPrior with per-scale latents trained 3 epochs in one go (`a`) and as 2 epochs
    then 1 more (`b`): the folder and what the resumed run said."""
    store, _ = train_store
    d = tmp_path_factory.mktemp("resumed")
    train_here(*train_args(store, d / "a", "--epochs", 3, *VARIANT))
    train_here(*train_args(store, d / "b", "--epochs", 2, *VARIANT))
    return d, train_here(*train_args(store, d / "b", "--epochs", 3, *VARIANT))


def test_a_learned_prior_with_per_scale_latents_resumes_exactly(resumed):
    d, stdout = resumed
    assert "resuming from" in stdout
    a, b = final_weights(d / "a"), final_weights(d / "b")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_kl_block_6"] for h in history(d / "a")] == [h["train_kl_block_6"] for h in history(d / "b")]


def test_the_encoder_export_of_a_learned_prior_run_is_the_models_encoder_alone(resumed):
    encoder = torch.load(resumed[0] / "a" / "vae_multi_encoder_final.pt", weights_only=True)
    model = final_weights(resumed[0] / "a")
    want = {k.removeprefix("encoder."): v for k, v in model.items() if k.startswith("encoder.")}
    assert any(k.startswith("prior.") for k in model)  # the prior is the model's, not the encoder's
    assert encoder.keys() == want.keys() and all(torch.equal(encoder[k], want[k]) for k in want)


def test_encode_gives_the_per_scale_encoders_means(train_store, resumed, tmp_path):
    store, _ = train_store
    enc_path = resumed[0] / "a" / "vae_multi_encoder_final.pt"
    run("train.encode", "--checkpoint", enc_path, "--data", store, "--out", tmp_path / "z.zarr", check=True)
    state = torch.load(enc_path, weights_only=True)
    enc = encoder_from_state(state)
    enc.load_state_dict(state)
    with torch.no_grad():
        want = enc.eval()(torch.from_numpy(zarr.open_group(store, mode="r")["clr"][:]))[0].numpy()
    got = zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["z_mean"][:]
    assert got.shape == (600, 8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resuming_under_another_prior_is_one_line(train_store, resumed):
    store, _ = train_store
    other = run("train", *train_args(store, resumed[0] / "b", "--epochs", 4, *TINY, *BLOCKS, "--prior", "mog:4"))
    one_line_refusal(other, "prior vamp:4 in the checkpoint, mog:4 now: a resumed run keeps its model")


@pytest.mark.parametrize("args, message", [
    (("--prior", "mog:0"), "prior 'mog:0'"),
    (("--prior", "vamp:-1"), "prior 'vamp:-1'"),
    (("--prior", "cauchy"), "prior 'cauchy'"),
    ((*TINY, "--latent-blocks", "4,2,1"), "must be positive and add up to latent 8"),
], ids=["mog:0", "vamp:-1", "cauchy", "blocks-not-adding-up"])
def test_settings_that_cannot_work_are_one_line(train_store, tmp_path, args, message):
    one_line_refusal(run("train", *train_args(train_store[0], tmp_path / "x", *args)), message)


def test_resuming_a_flat_run_with_latent_blocks_is_one_line(train_store, tmp_path):
    store, _ = train_store
    train_here(*train_args(store, tmp_path / "flat", "--epochs", 1, *TINY))
    one_line_refusal(run("train", *train_args(store, tmp_path / "flat", "--epochs", 2, *TINY, *BLOCKS)),
                     "latent_blocks none in the checkpoint, 4,2,2 now: a resumed run keeps its model")
