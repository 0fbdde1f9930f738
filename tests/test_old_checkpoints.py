"""Files written by an older main (tests/fixtures/main-1c9f7e9, made by commit 1c9f7e9 before the
package was split into folders and before checkpoints were nested by part) still work: a checkpoint
resumes to the weights that older code ended with, and an exported encoder encodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import ROOT, run

FIXTURE = ROOT / "tests" / "fixtures" / "main-1c9f7e9"
ARGS = ("--hidden", 8, "--latent", 2, "--kmers", "3,2,1", "--batch-size", 32, "--workers", 0, "--metrics-port", 0,
        "--latent-sample", 40, "--deterministic", "--checkpoint-every", 3)


@pytest.fixture(scope="module")
def old_store(tmp_path_factory) -> Path:
    """The store the fixture was trained on, made again by the same (seeded) commands."""
    d = tmp_path_factory.mktemp("old")
    run("ingest.synth", d / "all_kmers.npy", "--rows", 240, "--seed", 3, "--genomes", 3, check=True)
    run("ingest", d / "all_kmers.npy", d / "kmers.zarr", "--chunk-rows", 40, "--labels", d / "all_kmers_labels.npy",
        check=True)
    return d / "kmers.zarr"


def test_a_checkpoint_of_the_older_main_resumes_to_the_weights_it_ended_with(old_store, tmp_path):
    run("train", "--data", old_store, "--out", tmp_path / "run", "--epochs", 3,
        "--resume", FIXTURE / "ckpt-e0000-s000000003.pt", *ARGS, env={"OMP_NUM_THREADS": "1"}, check=True)
    now = torch.load(tmp_path / "run" / "vae_multi_final.pt", weights_only=True)
    then = torch.load(FIXTURE / "vae_multi_final.pt", weights_only=True)
    assert now.keys() == then.keys()
    assert all(torch.equal(now[k], then[k]) for k in then)


def test_an_encoder_exported_by_the_older_main_encodes_every_row(old_store, tmp_path):
    out = tmp_path / "latents.zarr"
    run("train.encode", "--checkpoint", FIXTURE / "vae_multi_encoder_final.pt", "--data", old_store, "--out", out,
        check=True)
    z = zarr.open_group(str(out), mode="r")["z_mean"][:]
    assert z.shape == (240, 2) and np.isfinite(z).all()
