"""KmerStream: a rank's batches, read and decoded whole chunks at a time inside the rank.

The batches follow the epoch plan (epoch_plan.py): the stream knows every batch of the epoch
ahead, so it knows when each chunk is first and last needed. Reader threads (reader.py) decode
whole chunks, in the order they are first needed and as far ahead as the slab's free slots
allow, into a preallocated slab (slab.py); each batch is then one gather from the slab (on a
host slab done by the reader threads too, a batch per thread ahead of need), and a chunk's slot
is freed after its last batch. A chunk shared by several regions of the plan
(partitions, lanes, windows that split it) is decoded once and gathered from by all of them.
With `keep` the slab holds every chunk of the rank's share and frees none: the row cache, each
chunk decoded once per run. `set_epoch(e, start_batch=k)` resumes exactly and reads only what
batches k.. need.

KmerStream is a torch IterableDataset. Iterated in the rank's own process (as the trainer does,
or under a DataLoader with num_workers=0) it is the in-rank feed above; under a DataLoader with
num_workers N, worker w serves batches w, w + N, ... of the rank's plan and reads only the chunks
those need, so the loader yields the same batches in the same order (batch_size=None: the stream
makes the batches).

    from kmervae_core import KmerStream
    with KmerStream("kmers.zarr", batch_size=1024, workers=4) as stream:
        for epoch in range(3):
            stream.set_epoch(epoch)
            for x, rows in stream:   # x float32 [1024, 2772], rows int64 [1024]: store rows
                ...
    loader = torch.utils.data.DataLoader(KmerStream("kmers.zarr", workers=1), batch_size=None, num_workers=4)
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from typing import Iterator

import numpy as np
import torch
from zarr.core.buffer.cpu import NDBuffer

from ..config import TrainConfig
from ..distributed import PROCESS_GROUP_TIMEOUT
from ..errors import DamagedChunk, KmervaeError, ReaderFailed
from ..limits import auto_workers
from ..store.contract import StoreInfo, chunk_name, chunk_span, damaged_chunk, open_store
from ..store.kmers import N_FEATURES
from .epoch_plan import EpochPlan, default_partitions, make_split, rank_rows
from .reader import ChunkReader, Job, ReadTimeout
from .slab import CopyEngine, Footprint, PassPlan, Slab, mapped_bytes, plan_pass, slots_needed

SPLITS = ("train", "val")
TRANSPORT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# a chunk read this long is hung (a stalled disk or object store); a quarter of the process group's
# timeout, so that the rank's one line and the ranks' agreement to stop come before the watchdog
# ends the peers blocked in a collective
READ_TIMEOUT_S = PROCESS_GROUP_TIMEOUT.total_seconds() / 4
READ_AHEAD_PER_THREAD = 2  # chunks decoded ahead per reader thread, within the memory budget
BATCHES_HELD = 2  # host batches in use besides those gathered ahead: the one being taken, the one the consumer holds
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # one source: the trainer's settings


def _distributed_rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclasses.dataclass
class SlabHolder:
    """The slab a stream gathers from; a rolling stream may hand its holder to the rank's other
    split (`reuse_slab_of`), whose passes never overlap its own."""

    slab: Slab | None = None


class KmerStream(torch.utils.data.IterableDataset):
    """Yields (x [b, columns] on `device` as `dtype`, rows int64 [b]) with b = batch_size / world_size.

    Args:
        store: a complete kmervae store: its path (checked here, with one clear line if it is
            not), or the StoreInfo open_store gave where the caller has opened it already.
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
        workers: reader threads decoding whole chunks (0: each read runs in the iterating
            thread when its batch comes, with no read-ahead); "auto": limits.auto_workers.
        keep: keep every chunk of the rank's share resident once read (the row cache): later
            epochs read nothing. The slab is allocated here, so it cannot run out later.
        device: where batches go; storage: where the slab is (None: the device).
        columns: store columns the batches hold (None: all 2,772), selected as chunks are read.
        read_ahead: chunks decoded ahead of need (None: 2 per reader thread).
        read_timeout: seconds after which a chunk read counts as hung.
        reuse_slab_of: a stream of the same store, columns and device whose passes never overlap
            this one's (the rank's other split): both use one rolling slab (not with keep).
        copy_engine: how a slab with staging copies chunks in (None: a CUDA copy stream where the
            slab is on a GPU, no staging elsewhere); the tests pass one that records its calls.
    """

    def __init__(self, store: str | StoreInfo, split: str = "train", batch_size: int = _DEFAULTS["batch_size"],
                 seed: int = _DEFAULTS["seed"], rank: int | None = None, world_size: int | None = None,
                 val_fraction: float = _DEFAULTS["val_fraction"], val_split: str = _DEFAULTS["val_split"],
                 window_chunks: int = _DEFAULTS["window_chunks"], lanes: int = _DEFAULTS["lanes"],
                 partitions: int | None = _DEFAULTS["partitions"], dtype: torch.dtype = torch.float32,
                 workers: int | str = _DEFAULTS["workers"], keep: bool = False,
                 device: torch.device | str = "cpu", storage: torch.device | str | None = None,
                 columns: np.ndarray | None = None, read_ahead: int | None = None,
                 read_timeout: float = READ_TIMEOUT_S, reuse_slab_of: KmerStream | None = None,
                 copy_engine: CopyEngine | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if dtype not in TRANSPORT_DTYPES:
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
        workers = auto_workers() if workers == "auto" else workers
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a non-negative integer or 'auto', got {workers!r}")
        self.info = store if isinstance(store, StoreInfo) else open_store(store)
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
        self.rank_rows = rank_rows(self.plan(0), self.rank, self.world_size)  # checks the shapes
        train_rows = int(self.split.train_counts.sum())
        if split == "train" and train_rows < batch_size:
            raise ValueError(f"{self.info.url}: {train_rows} training rows, fewer than one global batch of {batch_size}")
        self.device = torch.device(device)
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        self._columns = None if columns is None else torch.from_numpy(self.columns)
        self.width = N_FEATURES if columns is None else len(self.columns)
        self.store_dtype = torch.float16 if self.info.dtype == np.float16 else torch.float32
        # the slab holds the store's dtype: reader threads decode straight into it, and a float16
        # store takes half the memory and half the gathered bytes (converted where the batch is
        # gathered, one pass: docs/benchmarks.md, "The in-rank feed")
        self.storage = self.device if storage is None else torch.device(storage)
        self.copy_engine = copy_engine
        self.workers, self.keep, self.read_timeout = workers, keep, read_timeout
        self._read_ahead = read_ahead
        self.epoch, self.start_batch = 0, 0
        self.decoded = 0  # chunks read and decoded so far (each once per epoch; with keep, once per run)
        self._reader: ChunkReader | None = None
        self._reader_pid = 0  # the process whose threads the reader has (a forked DataLoader worker makes its own)
        self._finalizer: weakref.finalize | None = None
        self._full_rows = threading.local()  # a reader thread's full-width chunk buffer (with columns)
        self._hung = False
        self._holder = reuse_slab_of._holder if reuse_slab_of is not None and not keep else SlabHolder()
        if keep:
            self._holder.slab = self._make_slab(len(self.rank_chunks()))

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
        return sum(-(-(b - a) // self.rank_rows.local_batch) for a, b in self.rank_rows.val_ranges)

    def batch_rows(self, epoch: int, start_batch: int = 0) -> list[np.ndarray]:
        """The store rows of each batch this rank yields in `epoch` from `start_batch` on."""
        if self.split_name == "val":
            b = self.rank_rows.local_batch
            return [np.arange(s, min(s + b, stop)) for start, stop in self.rank_rows.val_ranges
                    for s in range(start, stop, b)]
        plan = self.plan(epoch)
        return list(plan.order()[plan.batch_positions(self.rank_rows.partitions, start_batch)])

    def rank_chunks(self) -> list[int]:
        """The chunks holding this rank's rows of this split."""
        ranges = self.rank_rows.train_ranges if self.split_name == "train" else self.rank_rows.val_ranges
        cr = self.info.chunk_rows
        return sorted({c for a, b in ranges for c in range(a // cr, -(-b // cr))})

    @property
    def complete(self) -> bool:
        """With keep: every chunk of the share is resident (later epochs read nothing)."""
        slab = self._holder.slab
        return self.keep and slab is not None and len(slab.resident) == len(self.rank_chunks())

    def memory(self) -> Footprint:
        """Host and device bytes the stream's buffers take: the slab (every chunk of the share with
        keep, else the most chunks an epoch needs resident at once, epoch 0's, plus the
        read-ahead); on a GPU slab a pinned staging buffer per reader thread; a host slab feeding a
        GPU pinned, with two pinned batch buffers; on the host the batch buffers kept for reuse
        (one gathered ahead per reader thread, the one being taken, the one the consumer holds)
        and a buffer per thread where batches are converted (the loop's too: it gathers a batch
        no reader thread has started); and a full-width chunk buffer per reader thread where
        `columns` selects some. Mapped buffers count whole pages."""
        cr, item, threads = self.info.chunk_rows, self.store_dtype.itemsize, max(1, self.workers)
        slots = self.slab_chunks()[0]
        chunk, batch = cr * self.width * item, self.rank_rows.local_batch * self.width
        full_rows = 0 if self.columns is None else threads * cr * N_FEATURES * item
        if self._staged():
            return Footprint(host=threads * mapped_bytes(chunk) + full_rows, device=slots * chunk)
        if self.device.type == "cuda":
            return Footprint(host=mapped_bytes(slots * chunk) + 2 * mapped_bytes(batch * item) + full_rows)
        converting = (self.workers + 1) * batch * item if self.dtype != self.store_dtype else 0  # gather_rows' buffers
        batches = self.batch_buffers * mapped_bytes(batch * self.dtype.itemsize)  # Slab.batches
        return Footprint(host=mapped_bytes(slots * chunk) + batches + converting + full_rows)

    # ---- reading ----

    @property
    def batch_buffers(self) -> int:
        """Host batch buffers the slab keeps for reuse: as many as are in use at once."""
        return self.workers + BATCHES_HELD

    @property
    def read_ahead(self) -> int:
        """Chunks decoded ahead of need. `workers` may change between iterations after close()."""
        return READ_AHEAD_PER_THREAD * self.workers if self._read_ahead is None else self._read_ahead

    def slab_chunks(self) -> tuple[int, int]:
        """(chunks the slab holds, chunks epoch 0's batches need resident at once): with keep,
        every chunk of the share (both); else the most chunks any batch needs resident, each from
        its first batch to its last, plus the read-ahead. A chunk two regions of the plan share (a
        lane or partition boundary falls inside it) is held from the one's first batch to the
        other's last, at a lane boundary nearly the whole epoch: hence about 2 x partitions x
        lanes, not one per region (131 slots at 16 x 4 on 221 training chunks: docs/memory.md)."""
        if self.keep:
            return len(self.rank_chunks()), len(self.rank_chunks())
        return self._slots_for(self.batch_rows(0))

    def _slots_for(self, batches: list[np.ndarray]) -> tuple[int, int]:
        """(slots, chunks needed at once): the latter plus the read-ahead, never more than the
        batches use."""
        live = slots_needed(batches, self.info.chunk_rows)
        used = len({c for rows in batches for c in np.unique(rows // self.info.chunk_rows).tolist()})
        return min(live + self.read_ahead, max(live, used)), live

    def _staged(self) -> bool:
        """Whether chunks reach the slab through staging and a copy engine (a GPU slab)."""
        return self.copy_engine is not None or self.storage.type == "cuda"

    def _make_slab(self, slots: int) -> Slab:
        engine = self.copy_engine
        if engine is None and self.storage.type == "cuda":
            engine = CopyEngine(self.storage)
        return Slab(max(1, slots), self.info.chunk_rows, self.width, self.store_dtype, self.storage,
                    pin=self.device.type == "cuda", batches=self.batch_buffers, engine=engine)

    def read_chunk(self, chunk: int, target: torch.Tensor) -> None:
        """Decode a whole chunk into `target` (a reader thread's job: rows x the stream's columns,
        in the store's dtype); DamagedChunk names a chunk that cannot be decoded. A column subset
        is decoded into a full-width buffer the thread reuses, then selected."""
        array = self.info.clr_array
        a, b = chunk_span(chunk, self.info.chunk_rows, self.info.rows)
        try:
            if self.columns is None:
                array.get_basic_selection(slice(a, b), out=NDBuffer.from_numpy_array(target.numpy()))
                return
            local = self._full_rows
            if not hasattr(local, "buffer"):
                local.buffer = torch.empty((self.info.chunk_rows, N_FEATURES), dtype=self.store_dtype)
            full = local.buffer[:b - a]
            array.get_basic_selection(slice(a, b), out=NDBuffer.from_numpy_array(full.numpy()))
            torch.index_select(full, 1, self._columns, out=target)
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
            self._hung = True
            raise ReaderFailed(f"rank {self.rank}: reading {self._chunk_name(chunk)} did not finish in "
                               f"{self.read_timeout:g} s (a stalled disk or object store?)") from None
        except MemoryError:
            raise ReaderFailed(f"rank {self.rank}: a reader thread ran out of memory decoding "
                               f"{self._chunk_name(chunk)}; try fewer --workers, --cache none "
                               "or a smaller --cache-fraction (docs/memory.md sizes a job)") from None
        except Exception as e:  # noqa: BLE001 - an unexpected error in a reader thread
            text = str(e).splitlines()[0] if str(e) else ""
            raise ReaderFailed(f"rank {self.rank}: a reader thread failed reading {self._chunk_name(chunk)}: "
                               f"{type(e).__name__}" + (f": {text}" if text else "")) from None

    def _chunk_name(self, chunk: int) -> str:
        return chunk_name(self.info.url, self.info.clr_array, chunk)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.batch_rows(self.epoch, self.start_batch)
        worker = torch.utils.data.get_worker_info()
        if worker is not None:  # a DataLoader worker: batches w, w + N, ... (the loader yields them in turn)
            if self.keep or self.device.type == "cuda":
                raise ValueError("a KmerStream in DataLoader workers streams to the CPU without keep (the row cache "
                                 "and GPU slabs are the in-rank feed's: iterate it in the rank, num_workers=0)")
            batches = batches[worker.id::worker.num_workers]
        return self._serve(batches)

    def _reader_here(self) -> ChunkReader:
        """The reader threads, started in this process (a forked DataLoader worker has none of its parent's)."""
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader, self._reader_pid = ChunkReader(self.workers, self.read_timeout), os.getpid()
            # a stream dropped without close() ends and joins its threads too: one still ending while the
            # interpreter shuts down aborts the process ("terminate called without an active exception")
            self._finalizer = weakref.finalize(self, self._reader.close)
        return self._reader

    def _serve(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a kept slab is made again only after a hung read abandoned it; a rolling one is reused by every
        # pass (its pages are not faulted in again each epoch: docs/benchmarks.md), also by the passes of the
        # stream it was handed to (the rank's other split: never at once), and grown where one needs more
        holder, need = self._holder, len(self.rank_chunks()) if self.keep else self._slots_for(batches)[0]
        if holder.slab is None or holder.slab.slots < need:
            holder.slab = None  # the old slab goes before the new one is allocated
            holder.slab = self._make_slab(need)
        slab, reader, cr = holder.slab, self._reader_here(), self.info.chunk_rows
        plan = plan_pass(batches, cr, self.info.n_chunks, slab.slots, slab.resident if self.keep else {}, self.keep)
        index = torch.from_numpy(plan.index)
        if slab.storage.type == "cuda":
            index = index.to(slab.storage)  # the pass's gather indices, uploaded once
        # on the host, reader threads gather batches too, one per thread ahead of need
        ahead = reader.threads if slab.engine is None and slab.storage.type == "cpu" and self.device.type == "cpu" else 0
        gather_after = _gather_after(plan, batches, cr) if ahead else []
        reads: dict[int, Job] = {}
        gathers: dict[int, Job] = {}
        self._hung, next_gather = False, 0
        try:
            for j, rows in enumerate(batches):
                for c in plan.reads[j]:
                    reads[c] = reader.submit(self._read_job(slab, c, int(plan.slot[c])))
                while ahead and next_gather < min(len(batches), j + ahead + 1) and gather_after[next_gather] <= j:
                    deps = [reads[c] for c in _chunks_of(batches[next_gather], cr) if c in reads]
                    gathers[next_gather] = reader.submit(self._gather_job(slab, index, plan, next_gather, deps))
                    next_gather += 1
                for c in plan.first_needed[j]:
                    self._wait(reads[c], c)
                    del reads[c]
                    slab.arrived(c, int(plan.slot[c]))
                    self.decoded += 1
                if j in gathers:
                    x = gathers.pop(j).wait(self.read_timeout)
                else:
                    x = slab.gather(index[plan.batch_index(j)], self.device, self.dtype)
                slab.release(plan.release[j])
                yield x, torch.from_numpy(rows)
        finally:  # ended early (a stop, an error, a consumer that broke off): no job left running
            # after a hung read nothing more is waited for: the one line comes within one read timeout
            deadline = time.monotonic() + (0 if self._hung else self.read_timeout)
            for job in [*reads.values(), *gathers.values()]:
                if not job.cancel():
                    try:
                        job.wait(max(0.0, deadline - time.monotonic()))
                    except ReadTimeout:  # a hung read may still write into its slot: never reuse this slab
                        holder.slab = None
                    except BaseException:  # noqa: BLE001 - abandoned: its error is not this run's
                        pass
            if self._hung:
                holder.slab = None
            if not self.keep:  # a pass ended early leaves chunks resident: the next starts from an empty slab,
                slab.release(list(slab.resident))  # copying into their slots only after the gathers so far
            slab.forget_copies()

    def _read_job(self, slab: Slab, chunk: int, slot: int):
        """The read of `chunk` into its slot: straight in on a host slab; on a staged slab into the
        thread's staging buffer, copied to the slot at once."""
        a, b = chunk_span(chunk, self.info.chunk_rows, self.info.rows)
        if slab.engine is None:
            return lambda: self.read_chunk(chunk, slab.rows_of(slot, b - a))

        def read_and_copy() -> None:
            staged = slab.staging(b - a)
            self.read_chunk(chunk, staged)
            slab.copy_in(chunk, slot, staged)
        return read_and_copy

    def _gather_job(self, slab: Slab, index: torch.Tensor, plan: PassPlan, j: int, reads: list[Job]):
        """Batch j gathered in a reader thread once its chunks' reads are done. Their errors and
        their timeout are the loop's to report (it waits for those reads, with the read timeout,
        before it takes the batch): a timeout here, started earlier than the loop's, would hand
        the loop no batch for a read that was slow but in time."""
        def gather() -> torch.Tensor | None:
            for job in reads:
                try:
                    job.wait(None)
                except BaseException:  # noqa: BLE001 - reported by the loop
                    return None
            return slab.gather(index[plan.batch_index(j)], self.device, self.dtype)
        return gather

    def close(self) -> list[str]:
        """End the reader threads; returns the names of any hung in a read (they end with the
        process). The stream can be iterated again (new threads start)."""
        reader, self._reader = self._reader, None
        if self._finalizer is not None:
            self._finalizer.detach()  # closed here: the finalizer would keep the closed reader to the end
            self._finalizer = None
        return [] if reader is None or self._reader_pid != os.getpid() else reader.close()

    def __getstate__(self) -> dict:
        """What a DataLoader worker started by spawn or forkserver gets: the stream without its
        threads, thread-local buffers or slab (the worker makes its own, as a forked one does)."""
        state = self.__dict__.copy()
        state.update(_reader=None, _reader_pid=0, _finalizer=None, _full_rows=None, _holder=SlabHolder())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _full_rows=threading.local())

    def __enter__(self) -> KmerStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunks_of(rows: np.ndarray, chunk_rows: int) -> list[int]:
    return np.unique(rows // chunk_rows).tolist()


def _gather_after(plan: PassPlan, batches: list[np.ndarray], chunk_rows: int) -> list[int]:
    """For each batch, the batch before which the last of its chunks' reads is submitted: from
    then on its gather can be submitted behind them."""
    submitted = {c: j for j, chunks in enumerate(plan.reads) for c in chunks}
    return [max((submitted.get(c, 0) for c in _chunks_of(rows, chunk_rows)), default=0) for rows in batches]
