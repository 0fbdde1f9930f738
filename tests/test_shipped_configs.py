"""The config files in configs/: each holds the recipe its measurement was made with, and a
config tuned on one CLR refuses a store of the other, in training and in encoding, instead of
working on the wrong input."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import zarr

from benchmarks.real_genomes import VARIANTS
from kmervae_core.config import TrainConfig, load_config
from kmervae_core.evaluation.encode import load_encoder
from tests.conftest import ROOT, run, train_here
from tests.test_train import train_args

PER_K_TINY = ROOT / "configs" / "per-k-tiny.toml"
# what docs/experiments.md ("Trained quick runs") measured, written out by hand
MEASURED = dict(store_clr="per-k", kmers=[5, 4, 3, 2, 1], kmer_weights=[0.3, 1.0, 1.0, 1.0, 1.0],
                hidden=[128, 64], latent=16, epochs=15, batch_size=256, lr=1e-3)
# canonical k-mers of k = 5, 4, 3, 2, 1: (4^k + palindromes) / 2
TRAINED_COLUMNS = 512 + 136 + 32 + 10 + 2


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """One synthetic sample ingested twice: global CLR and `--clr per-k`."""
    d = tmp_path_factory.mktemp("configs")
    npy = d / "all_kmers.npy"
    run("ingest.synth", npy, "--rows", 200, "--seed", 3, "--genomes", 4, check=True)
    for scope in ("global", "per-k"):
        run("ingest", npy, d / f"{scope}.zarr", "--chunk-rows", 40, "--clr", scope, check=True)
    return {scope: str(d / f"{scope}.zarr") for scope in ("global", "per-k")}


def test_the_per_k_config_holds_the_measured_recipe_and_the_reference_elsewhere():
    cfg = load_config(str(PER_K_TINY), {})
    reference = TrainConfig()
    for name, value in dataclasses.asdict(cfg).items():
        assert value == MEASURED.get(name, getattr(reference, name)), name


def test_the_benchmark_variant_trains_the_shipped_config():
    scope, flags = VARIANTS["per-k-5mer-weight-0.3-tiny"]
    assert scope == "per_k" and flags == ["--config", str(PER_K_TINY)]


def test_a_config_tuned_on_per_k_clr_refuses_a_global_store_in_one_line(stores, tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--config", PER_K_TINY, *train_args(stores["global"], out, "--epochs", 1))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "holds the global CLR" in proc.stderr and "--clr per-k" in proc.stderr, proc.stderr
    assert not list(out.glob("*.pt")), "a refused run writes no checkpoint"


@pytest.fixture(scope="module")
def per_k_run(stores, tmp_path_factory) -> Path:
    """One epoch of the per-k config on the per-k store."""
    out = tmp_path_factory.mktemp("per-k-run") / "run"
    train_here("--config", PER_K_TINY, *train_args(stores["per-k"], out, "--epochs", 1))
    return out


def test_the_per_k_config_trains_on_a_per_k_store(per_k_run):
    encoder = load_encoder(str(per_k_run / "vae_multi_encoder_final.pt"), torch.device("cpu"))
    assert encoder.columns.numel() == TRAINED_COLUMNS
    assert encoder(torch.zeros(3, TRAINED_COLUMNS))[0].shape == (3, 16)


def test_its_encoder_refuses_to_encode_a_store_of_the_other_clr_in_one_line(per_k_run, stores, tmp_path):
    encoder = per_k_run / "vae_multi_encoder_final.pt"
    proc = run("train.encode", "--checkpoint", encoder, "--data", stores["global"], "--out", tmp_path / "z.zarr")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "holds the global CLR" in proc.stderr and "trained on the per-k CLR" in proc.stderr, proc.stderr
    assert not (tmp_path / "z.zarr").exists(), "a refused encode writes nothing"
    run("train.encode", "--checkpoint", encoder, "--data", stores["per-k"], "--out", tmp_path / "z.zarr", check=True)
    assert zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["z_mean"].shape == (200, 16)
