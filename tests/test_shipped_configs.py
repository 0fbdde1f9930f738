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

SHIPPED = ROOT / "configs" / "per-k-multinomial.toml"
# what docs/experiments.md ("The multinomial likelihood on the protocol") measured, written out by hand:
# the variant's flags over the benchmark's quick setting (15 epochs, batch 256, lr 1e-3)
MEASURED = dict(store_clr="per-k", likelihood="multinomial", hidden=[512, 256], latent=64, thinning=0.5,
                contrastive=1000.0, epochs=15, batch_size=256, lr=1e-3)
MEASURED_FLAGS = ["--likelihood", "multinomial", "--hidden", "512,256", "--latent", "64", "--thinning", "0.5",
                  "--contrastive", "1000"]
# canonical k-mers of k = 6, 5, 4, 3, 2, 1: (4^k + palindromes) / 2
TRAINED_COLUMNS = 2080 + 512 + 136 + 32 + 10 + 2
LATENT = 64


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """One synthetic sample ingested twice: global CLR and `--clr per-k`."""
    d = tmp_path_factory.mktemp("configs")
    npy = d / "all_kmers.npy"
    run("ingest.synth", npy, "--rows", 200, "--seed", 3, "--genomes", 4, check=True)
    for scope in ("global", "per-k"):
        run("ingest", npy, d / f"{scope}.zarr", "--chunk-rows", 40, "--clr", scope, check=True)
    return {scope: str(d / f"{scope}.zarr") for scope in ("global", "per-k")}


def test_the_shipped_config_holds_the_measured_recipe_and_the_reference_elsewhere():
    cfg = load_config(str(SHIPPED), {})
    reference = TrainConfig()
    for name, value in dataclasses.asdict(cfg).items():
        assert value == MEASURED.get(name, getattr(reference, name)), name


def test_the_benchmark_variant_that_was_measured_is_the_shipped_recipe():
    assert VARIANTS["mn-6to1-h512-l64-thin-0.5-ntxent-1000"] == ("per_k", MEASURED_FLAGS)


def test_a_config_tuned_on_per_k_clr_refuses_a_global_store_in_one_line(stores, tmp_path):
    out = tmp_path / "run"
    proc = run("train", "--config", SHIPPED, *train_args(stores["global"], out, "--epochs", 1))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "holds the global CLR" in proc.stderr and "--clr per-k" in proc.stderr, proc.stderr
    assert not list(out.glob("*.pt")), "a refused run writes no checkpoint"


@pytest.fixture(scope="module")
def per_k_run(stores, tmp_path_factory) -> Path:
    """One epoch of the shipped config on the per-k store."""
    out = tmp_path_factory.mktemp("per-k-run") / "run"
    train_here("--config", SHIPPED, *train_args(stores["per-k"], out, "--epochs", 1))
    return out


def test_the_shipped_config_trains_on_a_per_k_store(per_k_run):
    encoder = load_encoder(str(per_k_run / "vae_multi_encoder_final.pt"), torch.device("cpu"))
    assert encoder.columns.numel() == TRAINED_COLUMNS
    assert encoder(torch.zeros(3, TRAINED_COLUMNS))[0].shape == (3, LATENT)


def test_its_encoder_refuses_to_encode_a_store_of_the_other_clr_in_one_line(per_k_run, stores, tmp_path):
    encoder = per_k_run / "vae_multi_encoder_final.pt"
    proc = run("train.encode", "--checkpoint", encoder, "--data", stores["global"], "--out", tmp_path / "z.zarr")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "holds the global CLR" in proc.stderr and "trained on the per-k CLR" in proc.stderr, proc.stderr
    assert not (tmp_path / "z.zarr").exists(), "a refused encode writes nothing"
    run("train.encode", "--checkpoint", encoder, "--data", stores["per-k"], "--out", tmp_path / "z.zarr", check=True)
    assert zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["z_mean"].shape == (200, LATENT)
