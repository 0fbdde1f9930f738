"""KmerStream: a torch IterableDataset that streams whole chunks of a kmervae store.

Batches are assembled in the DataLoader workers following the epoch plan (epoch_plan.py):
each worker reads only the windows of its lanes, whole chunks at a time, and keeps at most
one window per lane it serves. The plan does not depend on the worker count, so the batch
sequence is the same with 0, 1 or 8 workers; `set_epoch(e, start_batch=k)` resumes exactly.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
from collections import OrderedDict
from typing import Iterator

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .epoch_plan import EpochPlan, default_partitions, make_split, rank_share, worker_batches
from ..store.kmers import N_FEATURES
from ..store.contract import StoreInfo, open_array, open_store, read_rows
from .workers import worker_init

SPLITS = ("train", "val")
TRANSPORT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# A started loader worker before it holds any rows (python, torch, numpy, zarr): 150-240 MiB
# RSS measured here (docs/memory.md), rounded up.
WORKER_BASE_BYTES = 256 * 2**20


def _distributed_rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class KmerStream(IterableDataset):
    """Yields (x float [b, 2772], rows int64 [b]) with b = batch_size / world_size.

    Args:
        path: a complete kmervae store (checked here, with one clear line if it is not).
        split: "train" (shuffled, equal batch counts on every rank) or "val" (store order,
            disjoint across ranks, every row once, the last batch of a chunk may be short).
        batch_size: the global batch, over all ranks.
        seed: seeds the epoch plan and the random validation split.
        rank, world_size: default to torch.distributed's when it is initialised.
        val_fraction, val_split: the held-out share, "random" (seeded whole chunks) or "tail".
        window_chunks: chunks whose rows are shuffled together (the shuffle buffer per region).
        lanes: interleaved streams in time; worker counts dividing it read each chunk once.
        partitions: the fixed split of every global batch; world sizes dividing it see the
            same global batches (so 1 GPU and 8 GPUs train on the same sequence). None:
            epoch_plan.default_partitions(batch_size, world_size).
        dtype: what batches hold: torch.float32; torch.float16, which halves what workers hand
            over and what crosses to a GPU, exact for a float16 store (a float32 store's values
            would be rounded); or torch.bfloat16.
        info: the store as open_store gave it, where the caller has opened it already (opening
            lists every chunk, once is enough).
    """

    def __init__(self, path: str, split: str = "train", batch_size: int = 1024, seed: int = 42,
                 rank: int | None = None, world_size: int | None = None, val_fraction: float = 0.1,
                 val_split: str = "random", window_chunks: int = 1, lanes: int = 4,
                 partitions: int | None = None, dtype: torch.dtype = torch.float32, info: StoreInfo | None = None) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if dtype not in TRANSPORT_DTYPES:
            raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
        self.info = open_store(path) if info is None else info
        default_rank, default_world = _distributed_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if batch_size < 1 or batch_size % self.world_size:
            raise ValueError(f"global batch {batch_size} does not divide evenly over {self.world_size} ranks")
        self.split_name, self.batch_size, self.seed = split, batch_size, seed
        if partitions is None:
            partitions = default_partitions(batch_size, self.world_size)
        self.window_chunks, self.lanes, self.partitions, self.dtype = window_chunks, lanes, partitions, dtype
        self.split = make_split(self.info.rows, self.info.chunk_rows, val_fraction, val_split, seed)
        self.share = rank_share(self.plan(0), self.rank, self.world_size)  # checks the shapes
        train_rows = int(self.split.train_counts.sum())
        if split == "train" and train_rows < batch_size:
            raise ValueError(f"{path}: {train_rows} training rows, fewer than one global batch of {batch_size}")
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, start batch: seen by workers
        self._array = None
        self.ring_slots = 0  # set by make_loader(reuse_buffers=True)
        self._ring: list[torch.Tensor] | None = None
        self._ring_next = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next, from batch start_batch on (exact resume)."""
        if start_batch < 0 or (self.split_name == "train" and start_batch > self.plan(epoch).batches):
            raise ValueError(f"start_batch {start_batch} is outside epoch {epoch}")
        self._state[0], self._state[1] = epoch, start_batch

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return EpochPlan(self.split, self.seed, int(self._state[0]) if epoch is None else epoch,
                         self.batch_size, self.window_chunks, self.lanes, self.partitions)

    def __len__(self) -> int:
        """Batches this rank yields in the selected epoch (from its start batch)."""
        if self.split_name == "train":
            return self.plan().batches - int(self._state[1])
        return sum(-(-(b - a) // self.share.local_batch) for a, b in self.share.val_ranges)

    def worker_memory(self, num_workers: int) -> int:
        """The most bytes one of `num_workers` loader workers holds for this stream (with 0, what
        the process itself holds for it): its base, the decoded rows it keeps (training: one window
        per region it reads and one more, never more than this rank's rows; validation: one
        chunk), one chunk being decoded, and its ring of batches."""
        if self.split_name == "val":
            rows = 0
        else:
            plan = self.plan(0)
            window = max(sum(b - a for a, b in w) for w in plan.windows)
            regions = len(self.share.partitions) * -(-self.lanes // max(1, num_workers))
            rows = min((regions + 1) * window, self.share.train_row_count)
        held = (rows + self.info.chunk_rows) * N_FEATURES * self.info.dtype.itemsize
        ring = self.ring_slots * self.share.local_batch * N_FEATURES * self.dtype.itemsize
        return (WORKER_BASE_BYTES if num_workers else 0) + held + ring

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None, "_ring": None}  # opened/allocated in each worker

    def _clr(self) -> zarr.Array:
        if self._array is None:
            self._array = open_array(self.info.url)
        return self._array

    def _gather(self, pieces: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
        """One batch from (chunk data, row indices) pieces. In a DataLoader worker it is
        gathered straight into shared memory (as torch's default_collate does), so the batch
        reaches the main process without another copy."""
        n, columns = sum(len(idx) for _, idx in pieces), pieces[0][0].shape[1]
        if get_worker_info() is None:
            x = torch.empty((n, columns), dtype=self.dtype)
        elif self.ring_slots:
            x = self._ring_slot(columns)[:n]
        else:
            x = _shared_empty((n, columns), self.dtype)
        pos = 0
        for data, idx in pieces:  # torch's row gather runs 3-4x np.take's speed on one thread
            rows, source, picks = x[pos:pos + len(idx)], torch.from_numpy(data), torch.from_numpy(idx)
            if source.dtype == x.dtype:
                torch.index_select(source, 0, picks, out=rows)
            else:
                rows.copy_(source.index_select(0, picks))
            pos += len(idx)
        return x

    def _ring_slot(self, columns: int) -> torch.Tensor:
        """The next of `ring_slots` shared buffers, allocated once per worker: refilling mapped
        pages costs a fifth of what a fresh shared segment per batch does."""
        if self._ring is None:
            self._ring = [_shared_empty((self.share.local_batch, columns), self.dtype) for _ in range(self.ring_slots)]
        slot = self._ring[self._ring_next % self.ring_slots]
        self._ring_next += 1
        return slot

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.batches_for(worker, workers)

    def batches_for(self, worker: int, num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """What DataLoader worker `worker` of `num_workers` yields (all of it for 0 of 1)."""
        epoch, start = (int(v) for v in self._state)
        if self.split_name == "val":
            yield from self._validation(worker, num_workers)
            return
        plan = self.plan(epoch)
        mine = worker_batches(plan.batches, start, worker, num_workers)
        regions = len({plan.region(s, k) for k in mine[: plan.lanes] for s in self.share.partitions})
        windows: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        for k in mine:
            pieces, rows = [], []
            for s in self.share.partitions:
                p0, p1 = plan.positions(s, k)
                for w in plan.windows_of(p0, p1):
                    if w not in windows:
                        windows[w] = self._read_window(plan, w)
                        while len(windows) > regions + 1:
                            windows.popitem(last=False)
                    windows.move_to_end(w)
                    data, wrows, shuffle = windows[w]
                    s0 = int(plan.window_starts[w])
                    pick = shuffle[max(p0, s0) - s0: min(p1, int(plan.window_starts[w + 1])) - s0]
                    pieces.append((data, pick))  # in position order: plan.order()[p0:p1]
                    rows.append(wrows[pick])
            yield self._gather(pieces), torch.from_numpy(np.concatenate(rows))

    def _read_window(self, plan: EpochPlan, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window w: its rows' values (whole-chunk reads), store rows, and the shuffle."""
        rows, shuffle = plan.window_rows(w)
        array = self._clr()
        parts = [read_rows(self.info.url, array, slice(a, b)) for a, b in plan.windows[w]]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), rows, shuffle

    def _validation(self, worker: int, num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        array, b = self._clr(), self.share.local_batch
        for start, stop in self.share.val_ranges[worker::num_workers]:
            rows = np.arange(start, stop)
            data = read_rows(self.info.url, array, slice(start, stop))
            for s in range(0, len(rows), b):
                pick = np.arange(s, min(s + b, len(rows)))
                yield self._gather([(data, pick)]), torch.from_numpy(rows[pick])


def _shared_empty(shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A tensor in shared memory, made there (as torch's default_collate does) so the
    DataLoader passes it to the main process without another copy."""
    storage = torch.UntypedStorage._new_shared(shape[0] * shape[1] * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def worker_death(loader: DataLoader) -> str | None:
    """How a worker of `loader` ended, where one has (torch reports only "exited unexpectedly"
    once it notices; the kernel's OOM killer sends SIGKILL); None where all still run."""
    for w in getattr(getattr(loader, "_iterator", None), "_workers", []):  # torch keeps its Process objects there
        code = w.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            why = " (what the kernel's OOM killer sends when the job runs out of memory)" if name == "SIGKILL" else ""
            return f"a data loader worker (pid {w.pid}) was killed by {name}{why}"
        if code is not None:
            return f"a data loader worker (pid {w.pid}) exited with status {code}"
    return None


def make_loader(stream: KmerStream, num_workers: int = 4, pin_memory: bool | None = None,
                prefetch_factor: int = 4, reuse_buffers: bool = False) -> DataLoader:
    """A DataLoader configured for KmerStream: batches come ready-made (batch_size=None),
    persistent workers started with forkserver (spawn off Linux), since forking a process that
    runs zarr's asyncio thread is fragile (zarr #2812, #2729); pinned memory on CUDA. Forkserver
    workers end when this process does and leave stop signals to it (workers.py).

    reuse_buffers: each worker fills a ring of prefetch_factor + 2 shared buffers instead of a
    fresh one per batch (5x cheaper hand-over). Only for consumers done with each batch before
    drawing the next prefetch_factor + 1 (a training loop is; `list(loader)` is not)."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    stream.ring_slots = prefetch_factor + 2 if reuse_buffers and num_workers > 0 else 0
    kwargs = {}
    if num_workers > 0:
        linux = sys.platform.startswith("linux")
        context = multiprocessing.get_context("forkserver" if linux else "spawn")
        if linux:  # takes effect when this process starts its forkserver
            context.set_forkserver_preload(["kmervae_core.feed.forkserver_init"])
        kwargs = dict(prefetch_factor=prefetch_factor, persistent_workers=True, multiprocessing_context=context,
                      worker_init_fn=functools.partial(worker_init, os.getpid()) if linux else None)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
