"""KmerStream: exactly-once, equal batch counts, the same batches for any reader thread count and
under a DataLoader with any worker count, exact resume; `--workers auto`; the read timeout below
the process group's."""
from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr

from torch.utils.data import DataLoader

from kmervae_core import KmerStream
from kmervae_core.distributed import PROCESS_GROUP_TIMEOUT, init_distributed
from kmervae_core.feed.epoch_plan import EpochPlan, default_partitions, make_split
from kmervae_core.feed.stream import READ_TIMEOUT_S
from kmervae_core.errors import StoreError
from kmervae_core.limits import auto_workers
from tests.conftest import ROOT, child_env, pages, random_kmers, run, write_npy
from tests.test_limits import V2_MOUNT, fake_tree

ROWS, CHUNK, BATCH, PARTS = 1009, 37, 30, 6  # 1009 is prime: nothing divides it


def stream(path, **kw) -> KmerStream:
    return KmerStream(path, **{"batch_size": BATCH, "seed": 5, "partitions": PARTS, **kw})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    npy = write_npy(d / "x.npy", random_kmers(ROWS, seed=11))
    run("ingest", npy, d / "x.zarr", "--chunk-rows", CHUNK, check=True)
    return str(d / "x.zarr")


def loader_order(stream: KmerStream, workers: int) -> list[np.ndarray]:
    """The row ids of every batch of `stream`'s selected epoch, read by `workers` reader threads."""
    stream.close()
    stream.workers = workers
    rows = [r.numpy() for _, r in stream]
    stream.close()
    return rows


def train_rows(stream: KmerStream) -> np.ndarray:
    return np.concatenate([stream.split.train_rows_of(c) for c in range(len(stream.split.length))])


@pytest.fixture(scope="module", params=list(itertools.product([1, 2, 3], [0, 1, 3])),
                ids=lambda p: f"world={p[0]}-workers={p[1]}")
def epoch_2(store, request) -> tuple[int, list[list[np.ndarray]], np.ndarray]:
    """Epoch 2 streamed by every rank of a world size through a worker count: (world size,
    each rank's batches, the store's training rows)."""
    world, workers = request.param
    ranks = []
    for rank in range(world):
        s = stream(store, rank=rank, world_size=world)
        s.set_epoch(2)
        ranks.append(loader_order(s, workers))
    return world, ranks, train_rows(s)


def test_every_rank_gets_the_same_number_of_equal_batches(epoch_2):
    world, ranks, _ = epoch_2
    for batches in ranks:
        assert all(len(b) == BATCH // world for b in batches)
    assert len({len(batches) for batches in ranks}) == 1


def test_an_epoch_streams_every_training_row_once(epoch_2):
    _, ranks, everything = epoch_2
    rows = np.concatenate([b for batches in ranks for b in batches])
    assert len(np.unique(rows)) == len(rows)  # nothing twice
    assert np.isin(rows, everything).all()  # no validation row
    assert 0 <= len(everything) - len(rows) < BATCH  # only a tail shorter than a global batch is left


def test_a_rank_serves_the_same_rows_in_every_epoch(store):
    """Partitions are fixed for the run (what lets a rank keep its rows resident): each epoch
    shuffles within them, and leaves out fewer than one sub-batch per partition."""
    world = 2
    for rank in range(world):
        s = stream(store, rank=rank, world_size=world)
        own = np.concatenate([np.arange(a, b) for p in s.rank_rows.partitions for a, b in s.plan(0).pieces[p]])
        orders = []
        for e in (0, 1, 5):
            s.set_epoch(e)
            rows = np.concatenate(loader_order(s, 0))
            assert np.isin(rows, own).all()
            assert 0 <= len(own) - len(rows) < len(s.rank_rows.partitions) * (BATCH // PARTS + 1)
            orders.append(rows)
        assert not np.array_equal(orders[0], orders[1])


def test_global_batches_are_the_same_for_any_world_size(store):
    """Rank r's part of global batch k is rows r*b:(r+1)*b of the 1-process batch k."""
    single = loader_order(stream(store), 0)
    for world in (2, 3, 6):
        ranks = [loader_order(stream(store, rank=r, world_size=world), 2) for r in range(world)]
        for k, whole in enumerate(single):
            np.testing.assert_array_equal(np.concatenate([batches[k] for batches in ranks]), whole)


def global_batches(plan, world: int) -> np.ndarray:
    """[batches, global batch] store rows of each global batch, rank 0's part first."""
    order = plan.order()
    return np.concatenate([order[plan.batch_positions(plan.partitions_of(r, world))] for r in range(world)], axis=1)


WORLD_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


@pytest.mark.parametrize("batch", [4096, 1024, 48])
def test_by_default_every_world_size_dividing_the_batch_gets_a_plan(batch):
    """Without a partition setting, each world size W dividing the global batch gets a plan:
    the W dividing gcd(batch, 48) all the same one, a larger W its own."""
    family = math.gcd(batch, 48)
    for world in [w for w in WORLD_SIZES if batch % w == 0]:
        partitions = default_partitions(batch, world)
        assert partitions % world == 0 and batch % partitions == 0
        if family % world:
            assert partitions != family
        else:
            assert partitions == family


@pytest.mark.parametrize("batch", [4096, 1024, 48])
def test_by_default_the_world_sizes_of_a_family_train_on_the_same_global_batches(batch):
    """The W dividing gcd(batch, 48) share one plan, so a run can resume on any of them."""
    family = math.gcd(batch, 48)
    rows, chunk_rows = 6 * batch + 17, max(1, batch // 3)
    split = make_split(rows, chunk_rows, 0.1, "random", seed=3)
    reference = None
    for world in [w for w in WORLD_SIZES if family % w == 0]:
        plan = EpochPlan(split, seed=3, epoch=1, global_batch=batch, partitions=default_partitions(batch, world))
        batches = global_batches(plan, world)
        assert len(np.unique(batches)) == batches.size == plan.batches * batch  # no row twice
        reference = batches if reference is None else reference
        np.testing.assert_array_equal(batches, reference)  # the same global batches, whatever W


def test_the_default_partition_count_is_the_family_or_a_larger_world_size():
    assert default_partitions(4096, 16) == 16 and default_partitions(4096, 32) == 32
    assert default_partitions(48, 3) == 48 and default_partitions(96, 32) == 96


def read_epoch(s: KmerStream, workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(values, store rows) of every batch of the selected epoch, read by `workers` reader threads."""
    s.close()
    s.workers = workers
    batches = [(x.numpy().copy(), rows.numpy()) for x, rows in s]
    s.close()
    return batches


def test_the_slab_is_what_a_batch_needs_from_first_to_last_use_plus_the_read_ahead(store):
    """What a job is sized by: the most chunks any batch of the epoch needs resident, each held
    from its first batch to its last (a chunk two regions share, at a lane or partition boundary,
    is held between the one's use and the other's: more than a chunk per region), plus 2 read
    ahead per reader thread; memory() counts that and the batches kept for reuse: one gathered
    ahead per thread, the one being taken and the one the consumer holds (mapped: whole pages)."""
    s = stream(store, partitions=2, lanes=2, workers=2)
    uses: dict[int, list[int]] = {}
    for j, rows in enumerate(s.batch_rows(0)):
        for c in set((rows // CHUNK).tolist()):
            uses.setdefault(c, []).append(j)
    live = max(sum(min(js) <= j <= max(js) for js in uses.values()) for j in range(len(s.batch_rows(0))))
    assert 2 * 2 < live < len(uses)  # more than one per region (2 partitions x 2 lanes), fewer than all
    assert s.slab_chunks() == (live + 4, live)
    assert s.memory().host == pages((live + 4) * CHUNK * 2772 * 4) + (2 + 2) * pages(BATCH * 2772 * 4)
    read_epoch(s, 2)
    assert s._holder.slab.slots == live + 4  # the slab the pass allocated


def test_batches_hold_the_same_values_for_any_reader_thread_count(store):
    clr = zarr.open_group(store, mode="r")["clr"][:]  # the store read with zarr, not the stream
    s = stream(store, rank=1, world_size=2)
    s.set_epoch(3)
    reference = read_epoch(s, 0)
    for x, rows in reference:
        np.testing.assert_array_equal(x, clr[rows])
    for workers in (1, 4):
        batches = read_epoch(s, workers)
        assert len(batches) == len(reference)
        for (x, rows), (want_x, want_rows) in zip(batches, reference):
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(x, want_x)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-CPU machine
@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_dataloader_with_workers_yields_the_in_rank_batches_in_order(store, world):
    """num_workers N: worker w serves batches w, w + N, ...; the loader gives them in turn, so every
    N yields the batches (rows and values) of the rank's own iteration, resumed ones too."""
    clr = zarr.open_group(store, mode="r")["clr"][:]
    for rank in range(world):
        s = stream(store, rank=rank, world_size=world, workers=1)
        for epoch, start in [(2, 0), (3, 5)]:
            s.set_epoch(epoch, start_batch=start)
            want = [(x.numpy().copy(), rows.numpy()) for x, rows in DataLoader(s, batch_size=None, num_workers=0)]
            assert len(want) == len(s) > 0
            for x, rows in want:
                np.testing.assert_array_equal(x, clr[rows])
            for n in (1, 2, 3):
                got = [(x.numpy(), rows.numpy()) for x, rows in DataLoader(s, batch_size=None, num_workers=n)]
                assert len(got) == len(want)
                for (x, rows), (want_x, want_rows) in zip(got, want):
                    np.testing.assert_array_equal(rows, want_rows)
                    np.testing.assert_array_equal(x, want_x)
        s.close()


def test_a_dataloader_worker_started_by_spawn_yields_the_in_rank_batches(store):
    """spawn and forkserver (Linux's default from Python 3.14) pickle the dataset: the stream goes
    without its threads and buffers, and the worker makes its own."""
    s = stream(store, workers=1)
    s.set_epoch(2, start_batch=1)
    want = [(x.numpy().copy(), rows.numpy()) for x, rows in s]
    got = [(x.numpy(), rows.numpy()) for x, rows in
           DataLoader(s, batch_size=None, num_workers=1, multiprocessing_context="spawn")]
    s.close()
    assert len(got) == len(want) > 0
    for (x, rows), (want_x, want_rows) in zip(got, want):
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(x, want_x)


def test_a_stream_closed_and_iterated_again_keeps_none_of_its_closed_readers(store):
    import gc
    import weakref
    s = stream(store, workers=1)
    closed = []
    for epoch in range(3):
        s.set_epoch(epoch)
        next(iter(s))
        closed.append(weakref.ref(s._reader))
        s.close()
    gc.collect()
    assert [r() for r in closed] == [None, None, None]


def test_a_dataloader_worker_reads_only_the_chunks_of_its_batches(store, monkeypatch):
    s = stream(store, workers=0)
    s.set_epoch(1, start_batch=2)
    batches = s.batch_rows(1, 2)
    read = []
    original = s.read_chunk
    s.read_chunk = lambda chunk, target: (read.append(chunk), original(chunk, target))[1]
    for w in range(3):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=w, num_workers=3))
        read.clear()
        served = [rows.numpy() for _, rows in s]
        assert [b.tolist() for b in served] == [b.tolist() for b in batches[w::3]]
        assert sorted(read) == sorted({int(c) for b in batches[w::3] for c in b // CHUNK})


def test_auto_workers_are_the_jobs_cpus_per_rank_on_the_node_less_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    quota = fake_tree(tmp_path / "quota", "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "800000 100000\n"})
    unlimited = fake_tree(tmp_path / "none", "", "", {})
    for ranks, root, want in [(1, quota, 7), (2, quota, 3), (8, quota, 1), (1, unlimited, 15), (4, unlimited, 3)]:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
        assert auto_workers(root) == want, (ranks, root.name)


def test_train_help_says_how_auto_workers_are_counted(capsys):
    from train.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers" in text and "auto: the CPUs this job may use (affinity and cgroup quota)" in text
    assert "(default auto)" in text
    assert parse_args(["--workers", "auto"]).workers == "auto" and parse_args(["--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        parse_args(["--workers", "many"])
    assert "--workers: expected auto or a non-negative integer, got 'many'" in capsys.readouterr().err


def test_a_hung_read_is_named_before_the_process_group_would_time_out(monkeypatch):
    """The process group's timeout is set at init, not left to the backend, and the read timeout
    stays below it: the rank's one line comes first, not the watchdog's kill."""
    seen = {}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: seen.update(kw))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    init_distributed()
    assert seen["timeout"] == PROCESS_GROUP_TIMEOUT
    assert READ_TIMEOUT_S < PROCESS_GROUP_TIMEOUT.total_seconds() / 2


def epoch_rows(s: KmerStream, epoch: int = 0) -> np.ndarray:
    s.set_epoch(epoch)
    return np.concatenate(loader_order(s, 0))


@pytest.fixture(scope="module")
def shuffles(store) -> dict[str, np.ndarray]:
    """The rows of epoch 0, epoch 1 and epoch 0 selected again (seed 5), and of epoch 0 of seed 6."""
    s = stream(store)
    first, second, again = (epoch_rows(s, e) for e in (0, 1, 0))
    return {"first": first, "second": second, "again": again, "other seed": epoch_rows(stream(store, seed=6))}


def test_each_epoch_shuffles_differently(shuffles):
    assert not np.array_equal(shuffles["first"], shuffles["second"])


def test_an_epoch_selected_again_repeats_its_order(shuffles):
    np.testing.assert_array_equal(shuffles["first"], shuffles["again"])


def test_another_seed_shuffles_differently(shuffles):
    assert not np.array_equal(shuffles["first"], shuffles["other seed"])


def test_values_are_the_store_rows_named(store):
    clr = zarr.open_group(store, mode="r")["clr"][:]
    with stream(store) as s:
        for x, rows in itertools.islice(s, 5):
            assert x.dtype == torch.float32 and x.shape == (BATCH, 2772)
            np.testing.assert_array_equal(x.numpy(), clr[rows.numpy()])


def test_batches_the_consumer_keeps_are_never_written_into(store):
    """Batch buffers are reused once nothing refers to a batch: one kept whole, as a view or as a
    numpy array until the epoch's end still holds the store rows it names."""
    clr = zarr.open_group(store, mode="r")["clr"][:]
    with stream(store, workers=2) as s:
        kept = [(x if k % 3 == 0 else x[:5] if k % 3 == 1 else x.numpy(), rows.numpy()) for k, (x, rows) in enumerate(s)]
    assert len(kept) == len(s) > 3 * (2 + 2)  # more batches than the stream keeps buffers for
    for x, rows in kept:
        np.testing.assert_array_equal(np.asarray(x), clr[rows[:len(x)]])


def test_batches_can_be_streamed_as_bfloat16(store):
    with stream(store, dtype=torch.bfloat16) as s:
        x16, _ = next(iter(s))
    assert x16.dtype == torch.bfloat16


def test_a_float16_store_streams_exactly_as_float16_or_float32(tmp_path):
    """A float16 store is decoded into a float16 slab and gathered as float16 or float32, exactly."""
    npy = write_npy(tmp_path / "x.npy", random_kmers(300, seed=3))
    run("ingest", npy, tmp_path / "half.zarr", "--chunk-rows", 37, "--dtype", "float16", check=True)
    clr = zarr.open_group(tmp_path / "half.zarr", mode="r")["clr"][:]
    assert clr.dtype == np.float16
    for dtype in (torch.float16, torch.float32):
        with stream(str(tmp_path / "half.zarr"), dtype=dtype, workers=1) as s:
            batches = [(x.clone(), rows.clone()) for x, rows in s]
        assert len(batches) == len(s)
        for x, rows in batches:
            assert x.dtype == dtype
            np.testing.assert_array_equal(x.float().numpy(), clr[rows.numpy()].astype(np.float32))


def test_start_batch_resumes_exactly_without_reading_what_it_skips(store):
    s = stream(store, rank=0, world_size=3)
    s.set_epoch(4)
    full = loader_order(s, 0)
    k = len(full) - 4
    needed = {int(c) for b in full[k:] for c in b // CHUNK}
    read = []
    original = s.read_chunk
    s.read_chunk = lambda chunk, target: (read.append(chunk), original(chunk, target))[1]
    s.set_epoch(4, start_batch=k)
    for workers in (0, 3):
        read.clear()
        tail = loader_order(s, workers)
        assert [b.tolist() for b in tail] == [b.tolist() for b in full[k:]]
        assert set(read) == needed and len(read) == len(needed)
    assert len(s) == 4


@pytest.fixture(scope="module", params=["random", "tail"])
def validation(store, request) -> tuple[str, dict[int, list[tuple[int, list[np.ndarray]]]]]:
    """(split mode, {world size: per rank (len(stream), the batches its loader yields)}) for
    1 rank with no reader thread, 2 ranks with 1 and 3 ranks with 3."""
    by_world = {}
    for world, workers in [(1, 0), (2, 1), (3, 3)]:
        streams = [stream(store, split="val", rank=rank, world_size=world, val_split=request.param)
                   for rank in range(world)]
        by_world[world] = [(len(s), loader_order(s, workers)) for s in streams]
    return request.param, by_world


def all_val_rows(ranks: list[tuple[int, list[np.ndarray]]]) -> np.ndarray:
    return np.concatenate([np.concatenate(batches) for _, batches in ranks])


def test_a_validation_stream_yields_as_many_batches_as_its_length(validation):
    for ranks in validation[1].values():
        for length, batches in ranks:
            assert len(batches) == length


def test_validation_rows_are_disjoint_across_ranks(validation):
    for ranks in validation[1].values():
        rows = all_val_rows(ranks)
        assert len(np.unique(rows)) == len(rows)  # disjoint across ranks, nothing twice


def test_validation_rows_are_the_same_for_any_world_size_and_worker_count(validation):
    reference = np.sort(all_val_rows(validation[1][1]))
    for ranks in validation[1].values():
        np.testing.assert_array_equal(np.sort(all_val_rows(ranks)), reference)


def test_validation_holds_out_about_the_fraction_asked(validation):
    assert abs(len(all_val_rows(validation[1][1])) - 0.1 * ROWS) <= CHUNK


@pytest.mark.parametrize("validation", ["tail"], indirect=True)
def test_a_tail_split_holds_out_the_last_rows(validation):
    _, by_world = validation
    np.testing.assert_array_equal(np.sort(all_val_rows(by_world[1])), np.arange(ROWS - round(0.1 * ROWS), ROWS))


def test_validation_rows_never_train(store, validation):
    mode, by_world = validation
    train = stream(store, val_split=mode)
    assert not np.isin(all_val_rows(by_world[1]), train_rows(train)).any()


def test_a_missing_store_is_refused_at_construction(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        KmerStream(str(tmp_path / "absent.zarr"))


def test_what_is_not_a_kmervae_store_is_refused_at_construction(tmp_path):
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w").attrs["other"] = 1
    with pytest.raises(StoreError, match="not a kmervae store"):
        KmerStream(str(tmp_path / "foreign.zarr"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a kmervae store"):
        KmerStream(str(tmp_path / "plain"))


def test_an_incomplete_store_is_refused_at_construction(store, tmp_path):
    shutil.copytree(store, tmp_path / "cut.zarr")
    g = zarr.open_group(str(tmp_path / "cut.zarr"), mode="r+")
    g.attrs["kmervae"] = {**g.attrs["kmervae"], "complete": False}
    with pytest.raises(StoreError, match="incomplete"):
        KmerStream(str(tmp_path / "cut.zarr"))


def test_settings_that_cannot_work_fail_at_construction(store):
    with pytest.raises(ValueError, match="does not divide evenly"):
        KmerStream(store, batch_size=31, world_size=2, rank=0)
    with pytest.raises(ValueError, match="workers must be"):
        stream(store, workers=-1)
    with pytest.raises(ValueError, match="not a multiple of the plan's 6 partitions"):
        stream(store, batch_size=32)
    with pytest.raises(ValueError, match="world size 4 does not divide"):
        stream(store, batch_size=36, world_size=4, rank=0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        stream(store, batch_size=3000)


DROPPED_STREAM = """
import sys
from kmervae_core import KmerStream
def epoch():
    stream = KmerStream(sys.argv[1], batch_size=48, workers=2)
    return sum(len(x) for x, _ in stream)  # the stream goes, unclosed, with its reader threads
print(epoch())
"""


@pytest.mark.slow
def test_a_stream_dropped_without_close_lets_the_process_exit_cleanly(train_store):
    """Its threads are joined when it goes: one still ending as the interpreter shut down
    aborted the process ("terminate called without an active exception") 2 times in 3."""
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", DROPPED_STREAM, train_store[0]], cwd=ROOT, capture_output=True,
                              text=True, env=child_env(), timeout=120)
        assert proc.returncode == 0 and "terminate" not in proc.stderr, proc.stderr[-2000:]
