"""Stores are trusted only whole: checksummed chunks, lost and damaged chunks refused by train,
encode and `ingest --verify` with one line naming store, chunk and rows, and old stores without
checksums still read."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import zarr

from kmervae_core.errors import StoreError
from kmervae_core.store.contract import open_store
from kmervae_core.feed.stream import KmerStream
from tests.conftest import random_kmers, run, store_attrs, train_here

CHUNK_ROWS = 40
TINY = ["--hidden", "64,32", "--latent", "8", "--batch-size", "48", "--metrics-port", "0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """240 rows in 6 chunks of 40, with labels."""
    d = tmp_path_factory.mktemp("integrity")
    run("ingest.synth", d / "a.npy", "--rows", 240, "--seed", 3, "--genomes", 3, check=True)
    run("ingest", d / "a.npy", d / "s.zarr", "--chunk-rows", CHUNK_ROWS, "--labels", d / "a_labels.npy", check=True)
    return d / "s.zarr"


@pytest.fixture(scope="module")
def encoder(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc")
    train_here("--data", store, "--out", out, "--epochs", 1, "--workers", 0, *TINY)
    return out / "vae_multi_encoder_final.pt"


def chunk_file(store: Path, chunk: int, array: str = "clr") -> Path:
    return store / array / "c" / str(chunk) / ("0" if array == "clr" else "")


def damage(store: Path, chunk: int, how: str, array: str = "clr") -> None:
    """What an interrupted copy or a bad disk leaves: no file, half a file, one bit changed."""
    path = chunk_file(store, chunk, array)
    path = path if path.is_file() else path.parent / str(chunk)
    data = bytearray(path.read_bytes())
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 3] ^= 0x04
        path.write_bytes(data)


def damaged_copy(store: Path, tmp_path: Path, chunk: int, how: str) -> Path:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    damage(copy, chunk, how)
    return copy


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    return lines[0]


def training_chunk(store: Path) -> int:
    """A chunk holding only training rows (validation rows are read again at every start)."""
    split = KmerStream(str(store), batch_size=48, seed=42).split
    return int(np.flatnonzero(split.val_counts == 0)[-1])


def test_new_stores_checksum_every_chunk_of_every_array_and_say_so(store):
    assert store_attrs(store)["checksum"] == "crc32c"
    for array in ("clr", "column0", "labels"):
        codecs = json.loads((store / array / "zarr.json").read_text())["codecs"]
        assert codecs[-1]["name"] == "crc32c", array  # last: it covers the compressed bytes
        assert len(list((store / array / "c").rglob("*"))) >= 6


def test_an_all_zero_chunk_is_still_written(tmp_path):
    """Zarr skips chunks equal to the fill value by default; a store would then look like one
    that lost them. Here column 0 (kept verbatim) is zero in the whole first chunk."""
    x = random_kmers(80, seed=4)
    x[:40, 0] = 0
    np.save(tmp_path / "zeros.npy", x)
    run("ingest", tmp_path / "zeros.npy", tmp_path / "zeros.zarr", "--chunk-rows", 40, check=True)
    assert not zarr.open_group(str(tmp_path / "zeros.zarr"), mode="r")["column0"][:40].any()
    assert (tmp_path / "zeros.zarr" / "column0" / "c" / "0").is_file()
    assert run("ingest", "--verify", tmp_path / "zeros.zarr").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "truncated", "flipped"])
@pytest.mark.parametrize("command", ["train", "encode", "verify"])
def test_a_lost_or_damaged_chunk_is_refused_with_one_line(store, encoder, tmp_path, how, command):
    copy = damaged_copy(store, tmp_path, 3, how)
    if command == "train":  # the chunk is decoded by a reader thread
        proc = run("train", "--data", copy, "--out", tmp_path / "run", "--epochs", 2, "--workers", 1, *TINY)
    elif command == "encode":
        proc = run("train.encode", "--checkpoint", encoder, "--data", copy, "--out", tmp_path / "z.zarr")
    else:
        proc = run("ingest", "--verify", copy)
    line = one_line(proc)
    assert f"{copy}: clr chunk 3 (rows 120-159) is {'missing' if how == 'deleted' else 'damaged'}" in line
    if how != "deleted":
        assert "CRC-32C checksum mismatch" in line
    assert "sound" not in proc.stdout and "done:" not in proc.stdout


@pytest.fixture(scope="module", params=[0, 1], ids=["workers=0", "workers=1"])
def damaged_mid_run(store, tmp_path_factory, request) -> dict:
    """A 2-epoch run (checkpoints then), a training chunk damaged, and the run resumed to 3
    epochs with `request.param` reader threads: what it said and its checkpoints before and after."""
    d = tmp_path_factory.mktemp("midrun")
    copy, out = d / "copy.zarr", d / "run"
    shutil.copytree(store, copy)
    args = ["--data", copy, "--out", out, "--workers", request.param, "--cache", "none", *TINY]
    run("train", *args, "--epochs", 2, check=True)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    chunk = training_chunk(copy)
    damage(copy, chunk, "flipped")
    proc = run("train", *args, "--epochs", 3)  # resumes, then meets the chunk in epoch 3
    after = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    return {"copy": copy, "chunk": chunk, "proc": proc, "before": before, "after": after, "out": out}


@pytest.mark.slow
def test_damage_found_mid_run_stops_it_with_one_line_naming_the_chunk(damaged_mid_run):
    line = one_line(damaged_mid_run["proc"])
    chunk, a = damaged_mid_run["chunk"], damaged_mid_run["chunk"] * CHUNK_ROWS
    assert f"{damaged_mid_run['copy']}: clr chunk {chunk} (rows {a}-{a + CHUNK_ROWS - 1}) is damaged" in line


@pytest.mark.slow
def test_damage_found_mid_run_keeps_the_last_checkpoint(damaged_mid_run):
    after = damaged_mid_run["after"]
    assert after == damaged_mid_run["before"]
    torch.load(damaged_mid_run["out"] / "checkpoints" / max(after), weights_only=True)


def strip_checksums(store: Path) -> None:
    """Rewrite a store as kmervae wrote it before checksums: zstd only, no `checksum` attribute."""
    group = zarr.open_group(str(store), mode="r+")
    for name in ("clr", "column0", "labels"):
        old = group[name]
        data, chunks, dtype = old[:], old.chunks, old.dtype
        del group[name]
        group.create_array(name, shape=data.shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=[zarr.codecs.ZstdCodec(level=1)])[:] = data
    group.attrs["kmervae"] = {k: v for k, v in group.attrs["kmervae"].items() if k != "checksum"}


@pytest.fixture(scope="module")
def unchecksummed(store, tmp_path_factory) -> Path:
    """The store as kmervae wrote stores before checksums (read-only)."""
    copy = tmp_path_factory.mktemp("old") / "old.zarr"
    shutil.copytree(store, copy)
    strip_checksums(copy)
    return copy


def test_a_store_without_checksums_verifies_as_sound(unchecksummed):
    proc = run("ingest", "--verify", unchecksummed, check=True)
    assert "checksums none" in proc.stdout and "sound" in proc.stdout


def test_a_store_without_checksums_still_opens(unchecksummed):
    np.testing.assert_array_equal(KmerStream(str(unchecksummed), batch_size=48).info.rows, 240)


def test_a_damaged_chunk_of_a_store_without_checksums_is_found_by_decoding(unchecksummed, tmp_path):
    copy = tmp_path / "old.zarr"
    shutil.copytree(unchecksummed, copy)
    damage(copy, 2, "truncated")
    line = one_line(run("ingest", "--verify", copy))
    assert f"{copy}: clr chunk 2 (rows 80-119) is damaged" in line


def test_verify_summarises_a_sound_store(store):
    out = run("ingest", "--verify", store, check=True).stdout
    assert f"{store}: sound" in out
    for part in ("240 (0 source rows dropped), 6 chunks of 40 rows", "clr, column0, labels", "codec zstd:1",
                 "CLR       global, pseudocount 1e-06", "crc32c on every chunk, 18 chunks checked"):
        assert part in out, part


def test_verify_refuses_a_lost_label_chunk(store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    damage(copy, 5, "deleted", array="labels")
    assert "labels chunk 5 (rows 200-239) is missing" in one_line(run("ingest", "--verify", copy))


def test_verify_refuses_a_row_count_that_does_not_add_up(store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group.attrs["kmervae"] = {**group.attrs["kmervae"], "dropped_rows": [7]}
    assert "records 240 rows, but its source had 240 and 1 were dropped" in one_line(run("ingest", "--verify", copy))


def test_ingest_still_needs_input_and_output():
    proc = run("ingest", "only_one.npy")
    assert proc.returncode == 2 and "give INPUT and OUTPUT" in proc.stderr


def test_a_missing_chunk_is_found_on_an_fsspec_store_too(store):
    """The presence check is one listing through fsspec: object storage, here its in-memory store."""
    fs = fsspec.filesystem("memory")
    fs.put(str(store), "/integrity/s.zarr", recursive=True)
    try:
        assert open_store("memory://integrity/s.zarr").n_chunks == 6
        fs.rm("/integrity/s.zarr/clr/c/4/0")
        with pytest.raises(StoreError, match=r"^memory://integrity/s.zarr: clr chunk 4 \(rows 160-199\) is missing"):
            open_store("memory://integrity/s.zarr")
    finally:
        fs.rm("/integrity", recursive=True)
