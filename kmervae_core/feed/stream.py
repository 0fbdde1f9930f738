"""KmerStream: a rank's batches, read and decoded whole chunks at a time inside the rank.

The batches follow the epoch plan (epoch_plan.py): the stream knows every batch of the epoch
ahead, so it knows when each chunk is first and last needed. Reader threads (reader.py) decode
whole chunks, in the order they are first needed and as far ahead as the slab's free slots
allow, into a preallocated slab (slab.py); each batch is then one gather from the slab, and a
chunk's slot is freed after its last batch. A chunk shared by several regions of the plan
(partitions, lanes, windows that split it) is decoded once and gathered from by all of them.
With `keep` the slab holds every chunk of the rank's share and frees none: the row cache, each
chunk decoded once per run. `set_epoch(e, start_batch=k)` resumes exactly and reads only what
batches k.. need.

    from kmervae_core import KmerStream
    with KmerStream("kmers.zarr", batch_size=1024, workers=4) as stream:
        for epoch in range(3):
            stream.set_epoch(epoch)
            for x, rows in stream:   # x float32 [1024, 2772], rows int64 [1024]: store rows
                ...
"""
from __future__ import annotations

import dataclasses
import weakref
from collections import deque
from typing import Iterator

import numpy as np
import torch
import zarr
from zarr.core.buffer.cpu import NDBuffer

from ..config import TrainConfig
from ..errors import DamagedChunk, KmervaeError, ReaderFailed
from ..store.contract import StoreInfo, chunk_name, chunk_span, damaged_chunk, open_array, open_store
from ..store.kmers import N_FEATURES
from .epoch_plan import EpochPlan, default_partitions, make_split, rank_share
from .reader import ChunkReader, Job, ReadTimeout
from .slab import Slab

SPLITS = ("train", "val")
TRANSPORT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
READ_TIMEOUT_S = 600.0  # a chunk read this long is hung (a stalled disk or object store)
READ_AHEAD_PER_THREAD = 2  # chunks decoded ahead per reader thread, within the memory budget
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # one source: the trainer's settings


def _distributed_rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When each chunk is needed by a sequence of batches: `order`, the chunks in the order
    they are first needed; `new[j]`, those first needed by batch j; `done[j]`, those last
    needed by it; `live`, the most chunks any batch needs resident at once."""

    order: list[int]
    new: list[list[int]]
    done: list[list[int]]
    live: int


def schedule(batches: list[np.ndarray], chunk_rows: int) -> Schedule:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for j, rows in enumerate(batches):
        for c in np.unique(rows // chunk_rows).tolist():
            first.setdefault(c, j)
            last[c] = j
    n = len(batches)
    new: list[list[int]] = [[] for _ in range(n)]
    done: list[list[int]] = [[] for _ in range(n)]
    for c, j in first.items():  # dicts keep insertion order: by first use, then chunk
        new[j].append(c)
        done[last[c]].append(c)
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, list(first.values()), 1)
    np.add.at(delta, [last[c] + 1 for c in first], -1)
    return Schedule(list(first), new, done, int(np.cumsum(delta).max(initial=0)))


class KmerStream:
    """Yields (x [b, columns] on `device` as `dtype`, rows int64 [b]) with b = batch_size / world_size.

    Args:
        path: a complete kmervae store (checked here, with one clear line if it is not).
        split: "train" (shuffled, equal batch counts on every rank) or "val" (store order,
            disjoint across ranks, every row once, the last batch of a chunk may be short).
        batch_size: the global batch, over all ranks.
        seed: seeds the epoch plan and the random validation split.
        rank, world_size: default to torch.distributed's when it is initialised.
        val_fraction, val_split: the held-out share, "random" (seeded whole chunks) or "tail".
        window_chunks, lanes, partitions: the epoch plan's shape (epoch_plan.py); partitions 0:
            epoch_plan.default_partitions(batch_size, world_size). Defaults: the trainer's.
        dtype: what batches hold (float32, float16, bfloat16; a float32 store's values are
            rounded by the last two).
        info: the store as open_store gave it, where the caller has opened it already.
        workers: reader threads decoding whole chunks (0: each read runs in the iterating
            thread when its batch comes, with no read-ahead).
        keep: keep every chunk of the rank's share resident once read (the row cache): later
            epochs read nothing. The slab is allocated here, so it cannot run out later.
        device: where batches go; storage: where the slab is (None: the device).
        columns: store columns the batches hold (None: all 2,772), selected as chunks land.
        read_ahead: chunks decoded ahead of need (None: 2 per reader thread).
        read_timeout: seconds after which a chunk read counts as hung.
        share_slab: a stream of the same store, columns and device whose passes never overlap this
            one's (the rank's other split): both use one rolling slab (not with keep).
    """

    def __init__(self, path: str, split: str = "train", batch_size: int = _DEFAULTS["batch_size"],
                 seed: int = _DEFAULTS["seed"], rank: int | None = None, world_size: int | None = None,
                 val_fraction: float = _DEFAULTS["val_fraction"], val_split: str = _DEFAULTS["val_split"],
                 window_chunks: int = _DEFAULTS["window_chunks"], lanes: int = _DEFAULTS["lanes"],
                 partitions: int | None = _DEFAULTS["partitions"], dtype: torch.dtype = torch.float32,
                 info: StoreInfo | None = None, workers: int = _DEFAULTS["workers"], keep: bool = False,
                 device: torch.device | str = "cpu", storage: torch.device | str | None = None,
                 columns: np.ndarray | None = None, read_ahead: int | None = None,
                 read_timeout: float = READ_TIMEOUT_S, share_slab: KmerStream | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if dtype not in TRANSPORT_DTYPES:
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
        if workers < 0:
            raise ValueError(f"workers must be non-negative, got {workers}")
        self.info = open_store(path) if info is None else info
        default_rank, default_world = _distributed_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if batch_size < 1 or batch_size % self.world_size:
            raise ValueError(f"global batch {batch_size} does not divide evenly over {self.world_size} ranks")
        self.split_name, self.batch_size, self.seed = split, batch_size, seed
        self.window_chunks, self.lanes, self.dtype = window_chunks, lanes, dtype
        self.partitions = partitions or default_partitions(batch_size, self.world_size)
        self.split = make_split(self.info.rows, self.info.chunk_rows, val_fraction, val_split, seed)
        self.share = rank_share(self.plan(0), self.rank, self.world_size)  # checks the shapes
        train_rows = int(self.split.train_counts.sum())
        if split == "train" and train_rows < batch_size:
            raise ValueError(f"{path}: {train_rows} training rows, fewer than one global batch of {batch_size}")
        self.device = torch.device(device)
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        self.width = N_FEATURES if columns is None else len(self.columns)
        self.store_dtype = torch.float16 if self.info.dtype == np.float16 else torch.float32
        # the slab holds the store's dtype: reader threads decode straight into it, and a float16
        # store takes half the memory and half the gathered bytes (converted where the batch is
        # gathered, one pass: docs/benchmarks.md, "The in-rank feed")
        self.storage = self.device if storage is None else torch.device(storage)
        self.workers, self.keep, self.read_timeout = workers, keep, read_timeout
        self._read_ahead = read_ahead
        self.epoch, self.start_batch = 0, 0
        self.decoded = 0  # chunks read and decoded so far (each once per epoch; with keep, once per run)
        self._array: zarr.Array | None = None
        self._reader: ChunkReader | None = None
        # the slab, in a box that a rolling stream may share with another (share_slab)
        self._slab: list[Slab | None] = share_slab._slab if share_slab is not None and not keep else [None]
        if keep:
            self._slab[0] = self._make_slab(len(self.share_chunks()))

    # ---- the plan ----

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next, from batch start_batch on (exact resume)."""
        if start_batch < 0 or (self.split_name == "train" and start_batch > self.plan(epoch).batches):
            raise ValueError(f"start_batch {start_batch} is outside epoch {epoch}")
        self.epoch, self.start_batch = epoch, start_batch

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return EpochPlan(self.split, self.seed, self.epoch if epoch is None else epoch, self.batch_size,
                         window_chunks=self.window_chunks, lanes=self.lanes, partitions=self.partitions)

    def __len__(self) -> int:
        """Batches this rank yields in the selected epoch (from its start batch)."""
        if self.split_name == "train":
            return self.plan().batches - self.start_batch
        return sum(-(-(b - a) // self.share.local_batch) for a, b in self.share.val_ranges)

    def batch_rows(self, epoch: int, start_batch: int = 0) -> list[np.ndarray]:
        """The store rows of each batch this rank yields in `epoch` from `start_batch` on."""
        if self.split_name == "val":
            b = self.share.local_batch
            return [np.arange(s, min(s + b, stop)) for start, stop in self.share.val_ranges
                    for s in range(start, stop, b)]
        plan = self.plan(epoch)
        return list(plan.order()[plan.batch_positions(self.share.partitions, start_batch)])

    def share_chunks(self) -> list[int]:
        """The chunks holding this rank's rows of this split."""
        ranges = self.share.train_ranges if self.split_name == "train" else self.share.val_ranges
        cr = self.info.chunk_rows
        return sorted({c for a, b in ranges for c in range(a // cr, -(-b // cr))})

    @property
    def complete(self) -> bool:
        """With keep: every chunk of the share is resident (later epochs read nothing)."""
        return self.keep and self._slab[0] is not None and len(self._slab[0].ready) == len(self.share_chunks())

    def memory(self) -> int:
        """Bytes the slab takes: every chunk of the share (keep), else the most chunks an epoch
        needs resident at once (epoch 0's) plus the read-ahead; on a GPU slab, staging too."""
        slots = len(self.share_chunks()) if self.keep else self._rolling_slots(self.batch_rows(0))
        return Slab.bytes_for(slots, self.info.chunk_rows, self.width, self.store_dtype, self._staging_slots())

    # ---- reading ----

    @property
    def read_ahead(self) -> int:
        """Chunks decoded ahead of need. `workers` may change between iterations after close()."""
        return READ_AHEAD_PER_THREAD * self.workers if self._read_ahead is None else self._read_ahead

    def _rolling_slots(self, batches: list[np.ndarray]) -> int:
        """The chunks needed at once plus the read-ahead, never more than the share has."""
        return self._slots_for(schedule(batches, self.info.chunk_rows))

    def _slots_for(self, plan: Schedule) -> int:
        return min(plan.live + self.read_ahead, max(plan.live, len(plan.order)))

    def _staging_slots(self) -> int:
        return max(1, self.read_ahead) if self.storage.type == "cuda" else 0

    def _make_slab(self, slots: int) -> Slab:
        return Slab(max(1, slots), self.info.n_chunks, self.info.chunk_rows, self.width, self.store_dtype,
                    self.storage, pin=self.device.type == "cuda", staging=self._staging_slots())

    def _clr(self) -> zarr.Array:
        if self._array is None:
            self._array = open_array(self.info.url)
        return self._array

    def read_chunk(self, chunk: int, target: torch.Tensor) -> None:
        """Decode a whole chunk into `target` (a reader thread's job: rows x the stream's columns,
        in the store's dtype); DamagedChunk names a chunk that cannot be decoded."""
        array = self._clr()
        a, b = chunk_span(chunk, self.info.chunk_rows, self.info.rows)
        try:
            if self.columns is None:
                array.get_basic_selection(slice(a, b), out=NDBuffer.from_numpy_array(target.numpy()))
            else:
                torch.index_select(torch.from_numpy(array[a:b]), 1, torch.from_numpy(self.columns), out=target)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - codecs raise ValueError, RuntimeError, zlib.error...
            raise damaged_chunk(self.info.url, array, a, b, e) from None

    def _wait(self, job: Job, chunk: int) -> None:
        """A chunk's read, done: its failure becomes one line naming the chunk and this rank."""
        try:
            job.wait(self.read_timeout)
        except (DamagedChunk, KmervaeError):
            raise
        except ReadTimeout:
            raise ReaderFailed(f"rank {self.rank}: reading {chunk_name(self.info.url, self._clr(), chunk)} did not "
                               f"finish in {self.read_timeout:g} s (a stalled disk or object store?)") from None
        except MemoryError:
            raise ReaderFailed(f"rank {self.rank}: a reader thread ran out of memory decoding "
                               f"{chunk_name(self.info.url, self._clr(), chunk)}; try fewer --workers, --cache none "
                               "or a smaller --cache-fraction (docs/memory.md sizes a job)") from None
        except Exception as e:  # noqa: BLE001 - an unexpected error in a reader thread
            text = str(e).splitlines()[0] if str(e) else ""
            raise ReaderFailed(f"rank {self.rank}: a reader thread failed reading "
                               f"{chunk_name(self.info.url, self._clr(), chunk)}: {type(e).__name__}"
                               + (f": {text}" if text else "")) from None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._serve(self.batch_rows(self.epoch, self.start_batch))

    def _serve(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = schedule(batches, self.info.chunk_rows)
        # a kept slab is made again only after a hung read abandoned it; a rolling one is reused by every
        # pass (its pages are not faulted in again each epoch: docs/benchmarks.md), also by the passes of the
        # stream it was shared with (the rank's other split: never at once), and grown where one needs more
        box, need = self._slab, len(self.share_chunks()) if self.keep else self._slots_for(plan)
        if box[0] is None or box[0].slots < need:
            box[0] = None  # the old slab goes before the new one is allocated
            box[0] = self._make_slab(need)
        slab = box[0]
        if self._reader is None:
            self._reader = ChunkReader(self.workers, self.read_timeout)
            # a stream dropped without close() ends and joins its threads too: one still ending while the
            # interpreter shuts down aborts the process ("terminate called without an active exception")
            weakref.finalize(self, self._reader.close)
        pending = deque(c for c in plan.order if c not in slab.ready)
        jobs: dict[int, tuple[Job, int]] = {}

        def submit() -> None:
            while pending and slab.can_take():
                chunk = pending.popleft()
                a, b = chunk_span(chunk, self.info.chunk_rows, self.info.rows)
                target, staged = slab.take(chunk, b - a)
                jobs[chunk] = (self._reader.submit(lambda c=chunk, t=target: self.read_chunk(c, t)), staged)

        try:
            submit()
            for j, rows in enumerate(batches):
                for chunk in plan.new[j]:
                    if chunk in slab.ready:
                        continue
                    if chunk not in jobs:  # all ahead of it in `order` were waited for: slots came free
                        submit()
                    job, staged = jobs[chunk]
                    self._wait(job, chunk)
                    del jobs[chunk]
                    a, b = chunk_span(chunk, self.info.chunk_rows, self.info.rows)
                    slab.land(chunk, b - a, staged)
                    self.decoded += 1
                x = slab.gather(slab.index(rows), self.device, self.dtype)
                yield x, torch.from_numpy(rows)
                if not self.keep:
                    for chunk in plan.done[j]:
                        slab.drop(chunk)
                submit()
        finally:  # ended early (a stop, an error, a consumer that broke off): no read left running
            for chunk, (job, staged) in jobs.items():
                if not job.cancel():
                    try:
                        job.wait(self.read_timeout)
                    except ReadTimeout:  # a hung read may still write into its slot: never reuse this slab
                        box[0] = None
                    except BaseException:  # noqa: BLE001 - abandoned: its error is not this run's
                        pass
                slab.drop(chunk, staged)
            if not self.keep:  # a pass ended early leaves chunks resident: the next starts from an empty slab
                for chunk in list(slab.slot_of):
                    slab.drop(chunk)

    def close(self) -> list[str]:
        """End the reader threads; returns the names of any hung in a read (they end with the
        process). The stream can be iterated again (new threads start)."""
        reader, self._reader = self._reader, None
        return [] if reader is None else reader.close()

    def __enter__(self) -> KmerStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
