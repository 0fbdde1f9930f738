"""The epoch line's kNN on a store in file order (rows grouped by label, as real matrices are
grouped by sample) tells what the offline 5-fold kNN over every row tells, not a flattering one."""
from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import torch
import zarr

from kmervae_core.evaluation.embedding import LATENT_READ_AT_ONCE, knn_cv_accuracy, sample_rows
from kmervae_core.model.vae import Encoder
from kmervae_core.store.contract import read_rows
from kmervae_core.store.synth import write_sample
from tests.conftest import run, train_here

GENOMES, ROWS, CHUNK = 16, 800, 50


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    """Two epochs on 800 short synthetic contigs of 16 genomes, sorted by genome into 50-row
    chunks (a 10% validation split of whole chunks then holds 2 chunks: a few genomes)."""
    d = tmp_path_factory.mktemp("grouped")
    labels = write_sample(str(d / "mixed.npy"), ROWS, seed=3, genomes=GENOMES, min_length=150, max_length=300)
    order = np.argsort(labels, kind="stable")
    np.save(d / "all_kmers.npy", np.load(d / "mixed.npy")[order])
    np.save(d / "labels.npy", labels[order])
    store, out = d / "kmers.zarr", d / "run"
    run("ingest", d / "all_kmers.npy", store, "--chunk-rows", CHUNK, "--labels", d / "labels.npy", "--quiet", check=True)
    return store, out, train_here("--data", store, "--out", out, "--epochs", 2, "--batch-size", 48, "--workers", 0,
                                  "--metrics-port", 0, "--hidden", "64,32", "--latent", 8, "--lr", "1e-3",
                                  "--latent-sample", 600, "--deterministic")


@pytest.mark.slow
def test_the_live_knn_matches_the_offline_5_fold_knn_over_every_row(grouped_run):
    store, out, stdout = grouped_run
    last = json.loads((out / "history.json").read_text())[-1]
    enc = Encoder(hidden=(64, 32), latent=8).eval()
    enc.load_state_dict(torch.load(out / "vae_multi_encoder_final.pt", weights_only=True))
    group = zarr.open_group(store, mode="r")
    with torch.no_grad():
        z = enc(torch.from_numpy(group["clr"][:]))[0].numpy()
    offline = knn_cv_accuracy(z, group["labels"][:])
    assert offline < 0.8  # a task where a sample of a few genomes would read far higher
    assert last["latent_knn"] == pytest.approx(offline, abs=0.06)


@pytest.mark.slow
def test_the_epoch_line_says_how_many_labels_the_sample_holds(grouped_run):
    store, _, stdout = grouped_run
    held = len(np.unique(zarr.open_group(store, mode="r")["labels"][:]))
    line = next(line for line in stdout.splitlines() if line.startswith("Epoch 2/2"))
    assert held > 10 and f"kNN " in line and f"({held} labels)" in line


def test_a_large_stores_latent_sample_comes_from_64_chunks_spread_over_all_of_it():
    total, chunk = 17_000_000, 4096  # 4,151 chunks: drawing from all would decode nearly every one at start-up
    n_chunks = -(-total // chunk)
    rows = sample_rows(total, chunk, 5000, seed=42)
    assert len(np.unique(rows)) == 5000 and (np.diff(rows) > 0).all() and 0 <= rows[0] and rows[-1] < total
    chunks = np.unique(rows // chunk)
    assert len(chunks) == 64
    span = n_chunks / 64  # one chunk from each 64th of the store: no gap wider than two such spans
    assert chunks[0] < span and chunks[-1] >= n_chunks - span and np.diff(chunks).max() < 2 * span
    assert np.array_equal(sample_rows(total, chunk, 5000, seed=42), rows)  # fixed by the seed


def test_a_small_stores_latent_sample_comes_from_every_chunk():
    rows = sample_rows(10_000, 200, 5000, seed=0)  # 50 chunks
    assert len(np.unique(rows)) == 5000 and len(np.unique(rows // 200)) == 50


def test_the_latent_samples_read_decodes_a_few_chunks_at_a_time(tmp_path, monkeypatch):
    """Each chunk is held whole, decoded, while its rows are copied out: read 10 at once (zarr's
    default), 64 chunks of 4,096 rows held 430 MiB more at start-up (docs/memory.md)."""
    values = np.arange(64 * 50 * 8, dtype=np.float32).reshape(64 * 50, 8)
    array = zarr.create_array(tmp_path / "a.zarr", shape=values.shape, chunks=(50, 8), dtype="float32",
                              compressors=zarr.codecs.ZstdCodec(level=1))
    array[:] = values
    decoding, most, lock = [0], [0], threading.Lock()
    decode = zarr.codecs.ZstdCodec._decode_single

    async def counted(self, *args):
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
        await asyncio.sleep(0.01)  # let other decodes start where the read allows them
        try:
            return await decode(self, *args)
        finally:
            with lock:
                decoding[0] -= 1
    monkeypatch.setattr(zarr.codecs.ZstdCodec, "_decode_single", counted)
    rows = sample_rows(len(values), 50, 500, seed=1)
    x = read_rows(str(tmp_path / "a.zarr"), zarr.open_array(tmp_path / "a.zarr", mode="r"), rows,
                  at_once=LATENT_READ_AT_ONCE)
    assert np.array_equal(x, values[rows]) and len(np.unique(rows // 50)) == 64
    assert 1 <= most[0] <= LATENT_READ_AT_ONCE == 2
