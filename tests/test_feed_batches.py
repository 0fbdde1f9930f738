"""The in-rank feed gives the batches the DataLoader-worker KmerStream gave (the fixture made by
it at 503f1c9: tests/fixtures/batches-503f1c9), holding the store's values; it decodes every chunk
once per epoch whatever the plan's shape, once per run when it keeps them; and leaves no thread."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kmervae_core import KmerStream
from kmervae_core.feed.reader import READER_THREAD_PREFIX

FIXTURE = Path(__file__).parent / "fixtures" / "batches-503f1c9"
_spec = importlib.util.spec_from_file_location("make_batches", FIXTURE / "make.py")
made = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(made)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("feed-batches")
    return {name: made.make_store(d, name) for name in made.STORES}


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "batches.npz") as f:
        return dict(f)


@pytest.fixture
def earlier_threads() -> set[threading.Thread]:
    """Threads alive before the test (another test's unclosed stream is not this test's to check)."""
    return set(threading.enumerate())


def reader_threads(before: set[threading.Thread]) -> list[str]:
    """Reader threads started since `before` and still alive."""
    return [t.name for t in set(threading.enumerate()) - before if t.name.startswith(READER_THREAD_PREFIX)]


@pytest.mark.parametrize("world", made.WORLDS)
@pytest.mark.parametrize("plan", list(made.PLANS))
@pytest.mark.parametrize("name", list(made.STORES))
def test_every_batch_holds_the_rows_and_values_the_loader_worker_stream_gave(earlier_threads, stores, recorded, name,
                                                                           plan, world):
    clr = zarr.open_group(stores[name], mode="r")["clr"][:]  # the store read with zarr, not the feed
    for rank in range(world):
        key = f"{name}/{plan}/w{world}/r{rank}"
        with KmerStream(stores[name], rank=rank, world_size=world, workers=2, **made.PLANS[plan]) as s:
            for epoch, start, want in [(0, 0, "e0"), (1, 0, "e1"), (*made.RESUME, "e%d-k%d" % made.RESUME)]:
                s.set_epoch(epoch, start_batch=start)
                batches = [(x.numpy().copy(), rows.numpy()) for x, rows in s]
                np.testing.assert_array_equal(np.stack([rows for _, rows in batches]), recorded[f"{key}/{want}"])
                for x, rows in batches:
                    assert x.dtype == np.float32
                    np.testing.assert_array_equal(x, clr[rows].astype(np.float32))
        with KmerStream(stores[name], "val", rank=rank, world_size=world, workers=2, **made.PLANS[plan]) as v:
            val = [rows.numpy() for _, rows in v]
        assert [len(b) for b in val] == recorded[f"{key}/val-lengths"].tolist()
        np.testing.assert_array_equal(np.concatenate(val or [np.zeros(0, np.int64)]), recorded[f"{key}/val"])
    assert not reader_threads(earlier_threads)


def counted(s: KmerStream) -> list[int]:
    """Every chunk `s` decodes from now on, in order."""
    reads: list[int] = []
    original = s.read_chunk
    s.read_chunk = lambda chunk, target: (reads.append(chunk), original(chunk, target))[1]
    return reads


@pytest.mark.parametrize("partitions,lanes,window", [(1, 1, 1), (6, 4, 1), (30, 4, 1), (6, 3, 2)])
def test_each_chunk_is_decoded_once_per_epoch_whatever_the_plan_shape(stores, partitions, lanes, window):
    """Regions that share a chunk (partition, lane and window boundaries inside it) share its decode."""
    with KmerStream(stores["f32"], batch_size=30, partitions=partitions, lanes=lanes, window_chunks=window,
                    workers=2) as s:
        reads = counted(s)
        for epoch in (0, 1):
            reads.clear()
            s.set_epoch(epoch)
            used = {int(c) for _, rows in s for c in rows.numpy() // 37}
            assert sorted(reads) == sorted(used)  # every chunk it used, each once


def test_a_kept_share_decodes_each_chunk_once_per_run_even_resumed_mid_epoch(stores):
    with KmerStream(stores["f32"], batch_size=30, partitions=6, rank=1, world_size=2, workers=2, keep=True) as s:
        reads = counted(s)
        s.set_epoch(0, start_batch=len(s) - 1)  # resumed at the last batch: the rest of the share comes later
        list(s)
        assert not s.complete
        for epoch in (1, 2):
            s.set_epoch(epoch)
            batches = [rows.numpy() for _, rows in s]
            assert len(batches) == len(s)
        assert s.complete
        assert sorted(reads) == s.rank_chunks()  # each chunk of the share, once


def test_a_kept_share_feeds_the_batches_streaming_does(stores):
    with KmerStream(stores["f16"], batch_size=48, keep=True, workers=1) as kept, \
            KmerStream(stores["f16"], batch_size=48, workers=1) as rolling:
        for epoch in (0, 1, 2):
            for s in (kept, rolling):
                s.set_epoch(epoch)
            for (x, rows), (y, want) in zip(kept, rolling, strict=True):
                assert torch.equal(rows, want) and torch.equal(x, y)


def test_a_stream_abandoned_mid_epoch_and_closed_leaves_no_thread(earlier_threads, stores):
    s = KmerStream(stores["f32"], batch_size=30, partitions=6, workers=3)
    batches = iter(s)
    next(batches)
    batches.close()  # the consumer broke off: reads in flight finish, queued ones are dropped
    assert reader_threads(earlier_threads)
    assert s.close() == []
    assert not reader_threads(earlier_threads)
