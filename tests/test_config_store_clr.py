"""A config file that names the CLR its recipe was tuned on (`store_clr`) refuses a store of the
other CLR, in training and in encoding, in one line, instead of working on the wrong input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import zarr

from kmervae_core.evaluation.encode import load_encoder
from kmervae_core.store.kmers import N_FEATURES
from tests.conftest import run, train_here
from tests.test_train import train_args

LATENT = 8


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """One synthetic sample ingested twice: global CLR and `--clr per-k`."""
    d = tmp_path_factory.mktemp("clr")
    npy = d / "all_kmers.npy"
    run("ingest.synth", npy, "--rows", 200, "--seed", 3, "--genomes", 4, check=True)
    for scope in ("global", "per-k"):
        run("ingest", npy, d / f"{scope}.zarr", "--chunk-rows", 40, "--clr", scope, check=True)
    return {scope: str(d / f"{scope}.zarr") for scope in ("global", "per-k")}


@pytest.fixture(scope="module")
def per_k_config(tmp_path_factory) -> Path:
    """A user's recipe tuned on the per-k CLR (the multinomial likelihood, as issue 31 measured)."""
    path = tmp_path_factory.mktemp("config") / "per-k.toml"
    path.write_text(f'store_clr = "per-k"\nlikelihood = "multinomial"\nhidden = [32]\nlatent = {LATENT}\n')
    return path


def test_a_config_tuned_on_per_k_clr_refuses_a_global_store_in_one_line(stores, per_k_config, tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--config", per_k_config, *train_args(stores["global"], out, "--epochs", 1))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "holds the global CLR" in proc.stderr and "--clr per-k" in proc.stderr, proc.stderr
    assert not list(out.glob("*.pt")), "a refused run writes no checkpoint"


@pytest.fixture(scope="module")
def per_k_run(stores, per_k_config, tmp_path_factory) -> Path:
    """One epoch of the per-k config on the per-k store."""
    out = tmp_path_factory.mktemp("per-k-run") / "run"
    train_here("--config", per_k_config, *train_args(stores["per-k"], out, "--epochs", 1))
    return out


def test_its_encoder_refuses_to_encode_a_store_of_the_other_clr_in_one_line(per_k_run, stores, tmp_path):
    encoder = per_k_run / "vae_multi_encoder_final.pt"
    assert load_encoder(str(encoder), torch.device("cpu"))(torch.zeros(3, N_FEATURES))[0].shape == (3, LATENT)
    proc = run("train.encode", "--checkpoint", encoder, "--data", stores["global"], "--out", tmp_path / "z.zarr")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "holds the global CLR" in proc.stderr and "trained on the per-k CLR" in proc.stderr, proc.stderr
    assert not (tmp_path / "z.zarr").exists(), "a refused encode writes nothing"
    run("train.encode", "--checkpoint", encoder, "--data", stores["per-k"], "--out", tmp_path / "z.zarr", check=True)
    assert zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["z_mean"].shape == (200, LATENT)
