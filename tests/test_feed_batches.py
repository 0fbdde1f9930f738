"""The in-rank feed gives the batches the DataLoader-worker KmerStream gave (the fixture made by
it at 503f1c9: tests/fixtures/batches-503f1c9), holding the store's values; it decodes every chunk
once per epoch whatever the plan's shape, once per run when it keeps them; and leaves no thread.
A staged (GPU) slab copies each chunk in as soon as it is decoded, and orders copies and gathers
by events (checked on the CPU with a copy engine that records its calls); pinned memory is
registered and budgeted as allocated, host and device bytes apart; a column subset is read
without a fresh full-chunk array."""
from __future__ import annotations

import gc
import importlib.util
import threading
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kmervae_core import KmerStream
from kmervae_core.feed import slab as slab_module
from kmervae_core.feed.reader import READER_THREAD_PREFIX, Job
from kmervae_core.feed.slab import plan_pass

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


class RecordingEngine:
    """A copy engine on the CPU: copies at once, events are numbers, every call logged (with the
    chunk a copy holds, known by its first row, and the thread that issued it)."""

    def __init__(self, first_rows: dict[bytes, int]) -> None:
        self.first_rows, self.log, self._lock, self._events = first_rows, [], threading.Lock(), 0

    def _event(self) -> int:
        with self._lock:
            self._events += 1
            return self._events

    def copy(self, dst: torch.Tensor, src: torch.Tensor, after: int | None) -> int:
        dst.copy_(src)
        event = self._event()
        self.log.append(("copy", event, self.first_rows[src[0].numpy().tobytes()], dst.data_ptr(), after,
                         threading.current_thread().name))
        return event

    def wait(self, event: int) -> None:
        self.log.append(("wait", event))

    def record(self) -> int:
        event = self._event()
        self.log.append(("record", event))
        return event

    def synchronize(self, event: int) -> None:
        pass


def test_a_staged_slab_copies_each_chunk_as_decoded_and_orders_copies_and_gathers_by_events(stores):
    clr = zarr.open_group(stores["f32"], mode="r")["clr"][:]
    engine = RecordingEngine({clr[c * 37].tobytes(): c for c in range(-(-len(clr) // 37))})
    s = KmerStream(stores["f32"], batch_size=30, partitions=1, lanes=1, workers=2, read_ahead=1,
                   copy_engine=engine)
    s.set_epoch(1)
    decode = s.read_chunk
    s.read_chunk = lambda chunk, target: (decode(chunk, target),
                                          engine.log.append(("decoded", chunk, threading.current_thread().name)))[0]
    used = []
    for j, (x, rows) in enumerate(s):
        np.testing.assert_array_equal(x.numpy(), clr[rows.numpy()])
        used.append({int(c) for c in rows.numpy() // 37})
        engine.log.append(("batch", j))
    s.close()
    log = engine.log
    at = {entry: i for i, entry in enumerate(log)}
    batch_at = [at[("batch", j)] for j in range(len(used))]
    first = {c: min(j for j, u in enumerate(used) if c in u) for c in set().union(*used)}
    last = {c: max(j for j, u in enumerate(used) if c in u) for c in first}
    copies = [entry for entry in log if entry[0] == "copy"]
    assert sorted(c for _, _, c, *_ in copies) == sorted(first)  # each chunk copied in once
    assert any(thread.startswith(READER_THREAD_PREFIX) for *_, thread in copies)  # overlapping the loop
    previous: dict[int, int] = {}  # slot (its address) -> the chunk copied there before
    for entry in copies:
        _, event, chunk, slot, after, thread = entry
        by_thread = [e for e in log[:at[entry]] if e[-1] == thread]
        assert by_thread[-1] == ("decoded", chunk, thread)  # copied at once by the thread that decoded it
        wait = at[("wait", event)]
        assert at[entry] < wait < batch_at[first[chunk]]  # the compute stream waits before the first gather
        if slot in previous:  # reused: only after the event behind the last gather from the slot's last chunk
            j = last[previous[slot]]
            assert after is not None and (j == 0 or batch_at[j - 1] < at[("record", after)]) \
                and at[("record", after)] < batch_at[j] and at[("record", after)] < at[entry]
        previous[slot] = chunk
    assert len(set(previous)) < len(copies)  # slots were reused


def test_pinned_memory_is_registered_and_budgeted_as_allocated(stores, monkeypatch):
    """A host-tier slab feeding a GPU is pinned by registering exactly its pages (torch's caching
    host allocator would round it up to a power of two), unregistered when the stream goes."""
    registered, unregistered = [], []
    monkeypatch.setattr(slab_module, "register_host", lambda ptr, size: registered.append((ptr, size)))
    monkeypatch.setattr(slab_module, "unregister_host", unregistered.append)
    s = KmerStream(stores["f32"], batch_size=30, partitions=6, keep=True, device="cuda", storage="cpu", workers=2)
    chunks = len(s.rank_chunks())
    slab_bytes = chunks * 37 * 2772 * 4
    page = slab_module.PAGE
    assert registered == [(registered[0][0], -(-slab_bytes // page) * page)]
    batch_stage = 2 * (-(-30 * 2772 * 4 // page) * page)  # two pinned batch buffers, made at the first batch
    assert s.memory() == slab_module.Footprint(host=registered[0][1] + batch_stage, device=0)
    del s
    gc.collect()
    assert unregistered == [registered[0][0]]


def test_a_gpu_slab_budgets_its_device_slots_and_host_staging_apart(stores):
    s = KmerStream(stores["f16"], batch_size=30, partitions=1, lanes=1, workers=2, device="cuda")
    chunk = 40 * 2772 * 2  # every chunk whole: 600 rows in chunks of 40, float16
    page = slab_module.PAGE
    # one partition, one lane: a batch of 30 spans at most 2 chunks, plus 2 read ahead per thread
    assert s.memory().device == (2 + 4) * chunk
    assert s.memory().host == 2 * (-(-chunk // page) * page)  # a pinned staging buffer per reader thread


def test_every_gather_index_of_a_pass_is_known_at_its_start_and_no_two_live_chunks_share_a_slot():
    rng = np.random.default_rng(0)
    cr, n_chunks = 10, 12
    batches = [np.sort(rng.choice(n_chunks * cr, 8, replace=False)) for _ in range(15)]
    live = max(len({int(r) // cr for b in batches[j:] for r in b} & {int(r) // cr for b in batches[:j + 1] for r in b})
               for j in range(len(batches)))
    p = plan_pass(batches, cr, n_chunks, slots=live + 1, resident={}, keep=False)
    read_at = {c: j for j, chunks in enumerate(p.reads) for c in chunks}
    last = {int(r) // cr: j for j, b in enumerate(batches) for r in b}
    for j, rows in enumerate(batches):
        index = p.index[p.batch_index(j)]
        np.testing.assert_array_equal(index % cr, rows % cr)
        np.testing.assert_array_equal(index // cr, p.slot[rows // cr])
        assert all(read_at[int(c)] <= j for c in rows // cr)  # read submitted before its batch
    for a in last:
        for b in last:
            if a < b and p.slot[a] == p.slot[b]:  # one slot, one chunk at a time
                assert last[a] < read_at[b] or last[b] < read_at[a]


def test_a_column_subset_is_read_without_a_fresh_full_chunk_array(stores):
    """With --kmers each reader thread decodes into a full-width buffer it reuses: reading a
    subset allocates no more than reading every column does."""
    clr = zarr.open_group(stores["f32"], mode="r")["clr"][:]
    columns = np.arange(2728, 2772)  # the 3-, 2- and 1-mers
    with KmerStream(stores["f32"], batch_size=30, workers=0, columns=columns) as subset, \
            KmerStream(stores["f32"], batch_size=30, workers=0) as whole:
        some, every = torch.empty((37, len(columns))), torch.empty((37, 2772))

        def peak(read) -> int:
            tracemalloc.start()
            read()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            return peak
        subset.read_chunk(0, some)  # the thread's buffer is made once
        for chunk in (1, 2):
            assert peak(lambda: subset.read_chunk(chunk, some)) < peak(lambda: whole.read_chunk(chunk, every)) + 37 * 2772 * 2
            np.testing.assert_array_equal(some.numpy(), clr[chunk * 37:(chunk + 1) * 37][:, columns])


def test_a_pass_broken_off_on_a_staged_slab_copies_into_its_slots_only_after_its_gathers(stores):
    clr = zarr.open_group(stores["f32"], mode="r")["clr"][:]
    engine = RecordingEngine({clr[c * 37].tobytes(): c for c in range(-(-len(clr) // 37))})
    s = KmerStream(stores["f32"], batch_size=30, partitions=1, lanes=1, workers=0, copy_engine=engine)
    batches = iter(s)
    next(batches)
    next(batches)
    engine.log.append(("broke off",))
    batches.close()
    assert sum(1 for _ in s) == len(s)  # the next pass
    log = engine.log
    cut = log.index(("broke off",))
    at = {entry: i for i, entry in enumerate(log)}
    last_copy = {}  # slot -> where the broken-off pass last copied into it
    for i, entry in enumerate(log[:cut]):
        if entry[0] == "copy":
            last_copy[entry[3]] = i
    firsts = {}  # slot -> the next pass's first copy into it
    for entry in log[cut:]:
        if entry[0] == "copy" and entry[3] in last_copy:
            firsts.setdefault(entry[3], entry)
    assert firsts
    for slot, (_, _, _, _, after, _) in firsts.items():  # after an event behind the gathers from its chunk
        assert after is not None and at[("record", after)] > last_copy[slot]


def test_a_pass_broken_off_has_the_compute_stream_wait_for_copies_still_in_flight():
    """Slots a broken-off pass was copying into are handed out again (by the next pass, or by a grown
    slab reusing the memory): the compute stream must wait for those copies first."""
    engine = RecordingEngine({})
    engine.first_rows = {torch.full((3,), 7.0).numpy().tobytes(): 7}
    slab = slab_module.Slab(2, 4, 3, torch.float32, torch.device("cpu"), pin=False, batches=2, engine=engine)
    staged = slab.staging(4)
    staged.fill_(7.0)
    slab.copy_in(7, 1, staged)  # decoded and copying; the pass breaks off before chunk 7 is needed
    (copy,) = [entry for entry in engine.log if entry[0] == "copy"]
    slab.forget_copies()
    assert ("wait", copy[1]) in engine.log and slab.copied == {}


def test_a_batch_buffer_is_reused_only_once_nothing_refers_to_its_batch():
    batches = slab_module.BatchBuffers(keep=2)
    first = batches.take(4, 3, torch.float32)
    address = first.data_ptr()
    view, array = first[1:], first.numpy()
    del first
    assert batches.take(4, 3, torch.float32).data_ptr() != address  # a view and a numpy array still hold it
    del view
    assert batches.take(4, 3, torch.float32).data_ptr() != address  # the numpy array still does
    del array
    again = batches.take(2, 3, torch.float16)  # any batch that fits
    assert again.data_ptr() == address and again.shape == (2, 3) and again.dtype == torch.float16


def test_batch_buffers_beyond_those_kept_are_not_kept(monkeypatch):
    made, real = [], slab_module.mapped
    monkeypatch.setattr(slab_module, "mapped", lambda n, **kw: made.append(n) or real(n, **kw))
    batches = slab_module.BatchBuffers(keep=1)
    held = [batches.take(4, 3, torch.float32) for _ in range(3)]  # the consumer holds three at once
    del held
    again = [batches.take(4, 3, torch.float32) for _ in range(2)]  # two at once: the one kept and a fresh one
    assert len(made) == 3 + 1 and len(again) == 2


def test_a_job_waited_for_keeps_no_reference_to_its_result():
    """A gather the loop ran itself stays queued until a reader thread skips it: by then the
    consumer may have dropped the batch, whose buffer must come free."""
    job = Job(lambda: torch.zeros(3))
    batch = job.wait(None)
    gone = weakref.ref(batch)
    del batch
    assert gone() is None  # the job lives on (as in a queue); its batch does not


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_consumer_taking_one_batch_at_a_time_is_served_from_workers_plus_two_buffers(stores, monkeypatch, dtype):
    """No fresh memory a batch: batches gathered ahead (one per reader thread), the one being
    taken and the one the consumer holds come from workers + 2 buffers, reused once dropped."""
    made, real = [], slab_module.mapped
    monkeypatch.setattr(slab_module, "mapped", lambda n, **kw: made.append(n) or real(n, **kw))
    with KmerStream(stores["f16"], batch_size=30, partitions=1, workers=2, dtype=dtype) as s:
        for epoch in range(3):
            s.set_epoch(epoch)
            assert sum(1 for _ in s) == len(s) > 4
    assert 0 < made.count(30 * 2772 * dtype.itemsize) <= 2 + 2
