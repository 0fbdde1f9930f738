"""Tiered residency (`--cache`): which tier a rank takes and says it takes, and that cached
epochs feed exactly the batches (row ids and values), and give the losses, that streaming does."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kmervae_core import KmerStream
from kmervae_core.feed.cache import choose_tier, rolling_storage
from kmervae_core.config import TrainConfig
from kmervae_core.distributed import DistContext
from kmervae_core.feed.rank_feed import Feed
from kmervae_core.store.kmers import selected_groups
from tests.conftest import pages, run, train_here

GiB = 2**30
CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def make_feed(store: str, kmers: list[int] | None = None, **settings) -> Feed:
    cfg = TrainConfig(data=store, batch_size=48, workers=0, epochs=3, **settings)
    columns = None if kmers is None else selected_groups(kmers)[0]
    return Feed(cfg, DistContext(0, 1, 0, CPU), columns, log=lambda line: None)


def epoch(feed: Feed, number: int, start: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(store rows, values) of every batch fed to the step in an epoch."""
    return [(rows.numpy().copy(), x.numpy().copy()) for x, rows in feed.train(number, start)]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for (rows_a, x_a), (rows_b, x_b) in zip(a, b):
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(x_a, x_b)


def unreadable(chunk: int, target: torch.Tensor) -> None:
    raise AssertionError(f"a cached epoch read chunk {chunk} from the store")


def test_cached_epochs_feed_the_streamed_batches_row_for_row(train_store):
    store, _ = train_store
    streamed = make_feed(store, cache="none")
    cached = make_feed(store, cache="host")
    assert cached.cache is not None and streamed.cache is None
    first = epoch(cached, 0)
    assert cached.cache.complete  # the first epoch filled it
    assert_same_batches(first, epoch(streamed, 0))
    cached.train_stream.read_chunk = unreadable
    for number in (1, 2):
        again = epoch(cached, number)
        assert_same_batches(again, epoch(streamed, number))
    clr = zarr.open_group(store, mode="r")["clr"][:]
    for rows, x in again:  # and the values are the store's rows, read independently
        np.testing.assert_array_equal(x, clr[rows])


def test_validation_passes_after_the_first_come_from_the_cache_in_the_same_order(train_store):
    store, _ = train_store
    cached = make_feed(store, cache="host")
    first = [(rows.numpy().copy(), x.numpy().copy()) for x, rows in cached.val()]
    assert cached.val_stream.complete
    cached.val_stream.read_chunk = unreadable
    again = [(rows.numpy().copy(), x.numpy().copy()) for x, rows in cached.val()]
    assert_same_batches(again, first)
    rows = np.concatenate([r for r, _ in again])
    assert len(rows) == int(cached.val_stream.split.val_counts.sum())  # every validation row once
    clr = zarr.open_group(store, mode="r")["clr"][:]
    np.testing.assert_array_equal(np.concatenate([x for _, x in again]), clr[rows])


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_caches_only_its_own_rows_and_feeds_its_streamed_batches(train_store, world):
    store, _ = train_store
    clr = zarr.open_group(store, mode="r")["clr"]
    held = []
    for rank in range(world):
        kept = KmerStream(store, batch_size=48, seed=42, rank=rank, world_size=world, keep=True)
        stream = KmerStream(store, batch_size=48, seed=42, rank=rank, world_size=world)
        held.append(np.concatenate([np.arange(a, b) for a, b in kept.rank_rows.train_ranges]))
        for number in (0, 1, 2):
            kept.set_epoch(number)
            stream.set_epoch(number)
            batches = [(r.numpy(), x.numpy()) for x, r in kept]
            assert_same_batches(batches, [(r.numpy(), x.numpy()) for x, r in stream])
            assert np.isin(np.concatenate([r for r, _ in batches]), held[-1]).all()
        assert kept.complete
        kept.close()
        stream.close()
    rows = np.concatenate(held)
    assert len(np.unique(rows)) == len(rows)  # disjoint across ranks
    assert len(rows) == int(stream.split.train_counts.sum())  # together: every training row


def test_a_run_resumed_mid_epoch_completes_the_cache_and_then_feeds_the_same_batches(train_store):
    store, _ = train_store
    streamed = make_feed(store, cache="none")
    cached = make_feed(store, cache="host")
    tail = epoch(cached, 0, start=7)  # as after a restart at batch 7: rows before it never streamed
    assert_same_batches(tail, epoch(streamed, 0, start=7))
    assert_same_batches(epoch(cached, 1), epoch(streamed, 1))
    assert cached.cache.complete
    cached.train_stream.read_chunk = unreadable
    assert_same_batches(epoch(cached, 1), epoch(streamed, 1))
    assert_same_batches(epoch(cached, 2, start=3), epoch(streamed, 2, start=3))


def test_some_kmer_groups_are_cached_as_the_columns_trained(train_store):
    store, _ = train_store
    streamed = make_feed(store, cache="none", kmers=[3, 2, 1])
    cached = make_feed(store, cache="host", kmers=[3, 2, 1])
    assert cached.cache.width == 32 + 10 + 2
    epoch(cached, 0)
    later = epoch(cached, 1)
    assert_same_batches(later, epoch(streamed, 1))
    clr = zarr.open_group(store, mode="r")["clr"][:]
    for rows, x in later:
        np.testing.assert_array_equal(x, clr[rows][:, 2728:2772])  # the 3-, 2- and 1-mer columns


def test_a_float16_store_is_cached_in_float16_and_fed_as_float32(train_store, tmp_path):
    store, _ = train_store
    half = tmp_path / "half.zarr"
    run("ingest", Path(store).parent / "all_kmers.npy", half, "--chunk-rows", 40, "--dtype", "float16", check=True)
    streamed = make_feed(str(half), cache="none")
    cached = make_feed(str(half), cache="host")
    # 2 bytes a value: the kept chunks and the one batch of float16 the gather converts from; 4 for the
    # two float32 batches kept for reuse (no reader threads here); mapped buffers in whole pages
    kept, batch = len(cached.cache.rank_chunks()) * 40 * 2772 * 2, 48 * 2772
    assert cached.cache.memory().host == pages(kept) + batch * 2 + 2 * pages(batch * 4)
    epoch(cached, 0)
    later = epoch(cached, 1)
    assert later[0][1].dtype == np.float32
    assert_same_batches(later, epoch(streamed, 1))


NEED = 10 * GiB
ROOMY_HOST = (100 * GiB, "MemAvailable")


def test_the_device_tier_is_taken_where_the_rows_fit_the_gpu_budget():
    device = choose_tier("auto", NEED, GPU, 0.8, device_free=20 * GiB, host_free=ROOMY_HOST)
    assert device.tier == "device" and "10.00 GiB" in device.message and "20.00 GiB free" in device.message


def test_rows_that_do_not_fit_the_gpu_go_to_pinned_host_memory_and_the_line_says_why():
    host = choose_tier("auto", NEED, GPU, 0.8, device_free=12 * GiB, host_free=ROOMY_HOST)
    assert host.tier == "host" and "pinned" in host.message and "does not fit 0.8 x 12.00 GiB free" in host.message


def test_ranks_on_one_host_share_its_memory():
    shared = choose_tier("auto", NEED, GPU, 0.8, ranks_per_host=8, device_free=1 * GiB, host_free=(96 * GiB, "MemAvailable"))
    assert shared.tier == "none" and "/ 8 ranks" in shared.message  # 0.8 x 96 GiB / 8 ranks < 10 GiB


def test_a_requested_host_or_none_tier_is_taken_even_where_the_gpu_has_room():
    assert choose_tier("host", NEED, GPU, 0.8, device_free=80 * GiB, host_free=ROOMY_HOST).tier == "host"
    assert choose_tier("none", 1, GPU, 0.8, device_free=80 * GiB, host_free=ROOMY_HOST).tier == "none"


def test_on_a_cpu_the_host_tier_is_not_pinned():
    cpu = choose_tier("auto", NEED, CPU, 0.8, host_free=ROOMY_HOST)
    assert cpu.tier == "host" and "pinned" not in cpu.message


def test_the_device_tier_asked_without_a_gpu_falls_back_to_the_host_and_says_why():
    asked = choose_tier("device", NEED, CPU, 0.8, host_free=ROOMY_HOST)
    assert asked.tier == "host" and "no CUDA device" in asked.message


def test_the_streams_rolling_slabs_are_taken_from_the_host_budget():
    limited = choose_tier("auto", NEED, CPU, 0.8, host_free=(16 * GiB, "cgroup v2 memory.max"), stream_bytes=2 * GiB)
    assert limited.tier == "host" and "0.8 x (cgroup v2 memory.max - 2.00 GiB for the stream's slabs)" in limited.message
    workers = choose_tier("auto", NEED, CPU, 0.8, host_free=(16 * GiB, "cgroup v2 memory.max"), stream_bytes=4 * GiB)
    assert workers.tier == "none"  # 0.8 x (16 - 4) GiB < 10 GiB: the rolling slabs count
    assert "fewer --workers" not in workers.message


def test_slabs_that_alone_may_not_fit_are_named_with_what_to_try():
    crowded = choose_tier("auto", NEED, CPU, 0.8, host_free=(1 * GiB, "cgroup v2 memory.max"), stream_bytes=2 * GiB)
    assert crowded.tier == "none" and "the stream's slabs alone may not fit: fewer --workers" in crowded.message


def test_a_rolling_slab_goes_on_the_gpu_only_where_it_fits_the_gpu_budget():
    assert rolling_storage(GPU, 3 * GiB, 0.8, device_free=20 * GiB) == (GPU, "")
    storage, why = rolling_storage(GPU, 3 * GiB, 0.8, device_free=3 * GiB)  # 3 GiB > 0.8 x 3 GiB
    assert storage == CPU and why == ("the rolling slab: 3.00 GiB does not fit 0.8 x 3.00 GiB free on cuda:0: "
                                      "it is in pinned host memory, batches are copied over")
    assert rolling_storage(CPU, 0, 0.8) == (CPU, "")


def test_an_unknown_tier_is_refused():
    with pytest.raises(ValueError, match="cache must be one of"):
        choose_tier("disk", NEED, CPU, 0.8)


@pytest.fixture(scope="module")
def tier_runs(train_store, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Two 3-epoch runs alike but for --cache none and --cache host: their folder and output."""
    store, _ = train_store
    out = tmp_path_factory.mktemp("tiers")
    common = ["--data", store, "--batch-size", "48", "--workers", "1", "--deterministic", "--metrics-port", "0",
              "--epochs", "3", "--hidden", "64,32", "--latent", "8"]
    return out, {tier: train_here(*common, "--out", out / tier, "--cache", tier) for tier in ("none", "host")}


@pytest.mark.slow
def test_a_run_says_which_tier_it_uses_and_how_many_rows_it_holds(tier_runs):
    _, outputs = tier_runs
    assert "cache: off (--cache none)" in outputs["none"]
    held = re.search(r"cache: host tier, .*; this rank: ([\d,]+) training \+ ([\d,]+) validation rows", outputs["host"])
    train_rows, val_rows = (int(n.replace(",", "")) for n in held.groups())
    assert train_rows + val_rows == 600 and val_rows > 0  # one process holds every row of the store, once
    assert "holds this rank's" in outputs["host"]


@pytest.mark.slow
def test_cached_and_streamed_runs_train_identically(tier_runs):
    out, _ = tier_runs
    runs = [json.loads((out / tier / "history.json").read_text()) for tier in ("none", "host")]
    for a, b in zip(*runs, strict=True):
        assert {k: v for k, v in a.items() if "second" not in k and "samples" not in k} == \
               {k: v for k, v in b.items() if "second" not in k and "samples" not in k}
    w = [torch.load(out / tier / "vae_multi_final.pt", weights_only=True) for tier in ("none", "host")]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])


@pytest.mark.slow
def test_a_cache_that_does_not_fit_falls_back_to_streaming_with_one_line(train_store, tmp_path):
    store, _ = train_store
    said = train_here("--data", store, "--out", tmp_path, "--batch-size", "48", "--workers", "0", "--epochs", "2",
                      "--metrics-port", "0", "--hidden", "64,32", "--latent", "8", "--cache-fraction", "1e-9")
    lines = [line for line in said.splitlines() if line.startswith("cache:")]
    assert len(lines) == 1 and lines[0].startswith("cache: none") and "does not fit" in lines[0], said
    assert "Epoch 2/2" in said


def test_a_run_says_at_start_what_the_rank_takes_of_the_host(train_store):
    """The start line a job is sized by: the streams' bytes (one rolling slab serves both splits;
    kept slabs add up), what the slab is for, and what else the rank holds, added up."""
    store, _ = train_store
    streamed, kept = make_feed(store, cache="none"), make_feed(store, cache="host")
    slots, live = streamed.train_stream.slab_chunks()
    feed = max(streamed.train_stream.memory().host, streamed.val_stream.memory().host)
    line = streamed.memory_line({"the latent sample": 3 * GiB})
    assert line.startswith(f"memory: this rank expects {(feed + 3 * GiB) / GiB:.2f} GiB of host memory "), line
    assert (f"the feed {feed / GiB:.2f} GiB: a host slab of {slots} chunks x {40 * 2772 * 4 / 2**20:.1f} MiB ({live} "
            f"that a batch of epoch 1 needs at once + {slots - live} read ahead") in line
    assert line.endswith("; the latent sample 3.00 GiB")
    chunks = len(kept.train_stream.rank_chunks()) + len(kept.val_stream.rank_chunks())
    assert f"the feed {chunks * 40 * 2772 * 4 / GiB:.2f} GiB" in kept.memory_line()  # both kept slabs (workers 0)
    assert "every chunk of its share, kept" in kept.memory_line()


def test_a_rolling_slab_that_does_not_fit_the_gpu_moves_to_the_host_says_so_and_feeds_the_same_batches(
        train_store, monkeypatch):
    store, _ = train_store
    reference = epoch(make_feed(store, cache="none"), 1)
    monkeypatch.setattr("kmervae_core.feed.rank_feed.rolling_storage", lambda *a: (CPU, "the rolling slab: why"))
    moved = make_feed(store, cache="none")
    assert moved.message.endswith("; the rolling slab: why"), moved.message
    assert moved.val_stream._holder is moved.train_stream._holder  # the splits still share one rolling slab
    for (rows, x), (ref_rows, ref_x) in zip(epoch(moved, 1), reference, strict=True):
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(x, ref_x)


def test_the_row_weights_of_a_pass_are_uploaded_once_and_follow_its_batches(train_store, monkeypatch):
    """--length-weight: the pass's weights cross to the device in one copy at its start, not one
    pageable copy per batch; each batch's slice weighs its own rows."""
    store, _ = train_store
    feed = make_feed(store, cache="none", length_weight=1.0)
    lengths = zarr.open_group(store, mode="r")["column0"][:].astype(np.float64)
    uploads = []
    to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: (uploads.append(a[:1]), to(self, *a, **k))[1])
    batches = 0
    for split in (feed.train(1), feed.val()):
        uploads.clear()
        for _, rows in split:
            weights = feed.row_weights(rows).numpy()
            np.testing.assert_allclose(weights, lengths[rows.numpy()] / lengths.mean(), rtol=1e-5)
            batches += 1
        assert uploads.count((feed.device,)) == 1
    assert batches > 2
