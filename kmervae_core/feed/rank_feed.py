"""Where a rank's batches come from: the store, streamed through KmerStream and its loader
workers, or the row cache (cache.py) once the first epoch has filled it. Either way the step
gets the same batches, on the device, as float32, holding the trained columns only."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .cache import RowCache, choose_tier, gib, ranks_per_host
from ..config import TrainConfig
from ..training.distributed import DistContext
from ..errors import KmervaeError, LoaderWorkerDied
from ..store.kmers import N_FEATURES
from ..store.contract import open_array, open_store, read_rows
from .stream import KmerStream, make_loader, worker_death

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (x on the device, store rows)


class Feed:
    """A rank's training and validation batches. `columns`: the store columns trained on
    (None: all). `message` says which cache tier is used and what it needs."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, columns: np.ndarray | None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.device, self.log, self.rank = cfg, ctx.device, log, ctx.rank
        # a float16 store crosses to the GPU as it is: exact, half the bytes; converted there
        info = open_store(cfg.data)
        half = ctx.device.type == "cuda" and info.dtype == np.float16
        stream_args = dict(batch_size=cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size,
                           val_fraction=cfg.val_fraction, val_split=cfg.val_split, window_chunks=cfg.window_chunks,
                           lanes=cfg.lanes, partitions=cfg.partitions or None, dtype=torch.float16 if half else torch.float32,
                           info=info)
        try:
            self.train_stream = KmerStream(cfg.data, "train", **stream_args)
            self.val_stream = KmerStream(cfg.data, "val", **stream_args)
        except ValueError as e:
            raise KmervaeError(str(e)) from None
        self.train_loader = make_loader(self.train_stream, cfg.workers, reuse_buffers=True)
        self.val_loader = make_loader(self.val_stream, cfg.workers, reuse_buffers=True)
        self.columns = None if columns is None else torch.as_tensor(columns, device=ctx.device)
        self.cache, self.val_cache, self.message = self._make_caches(ctx, columns)
        self.tier = "none" if self.cache is None else ("device" if self.cache.data.is_cuda else "host")

    def _make_caches(self, ctx: DistContext, columns: np.ndarray | None) -> tuple[RowCache | None, RowCache | None, str]:
        """Row caches for this rank's training and validation rows, in the highest tier
        `--cache` allows that holds both; (None, None, why) where none is used. Allocated now,
        so that they cannot run out later."""
        cfg, stream, share = self.cfg, self.train_stream, self.train_stream.share
        rows = [share.train_row_count, share.val_row_count]
        n_columns = N_FEATURES if columns is None else len(columns)
        dtype = torch.float16 if stream.info.dtype == np.float16 else torch.float32
        need = RowCache.bytes_needed(sum(rows), n_columns, dtype, share.local_batch)
        sizes = (f"{rows[0]:,} training + {rows[1]:,} validation rows x {n_columns:,} columns "
                 f"{str(dtype).removeprefix('torch.')}")
        if cfg.cache == "auto" and cfg.epochs == 1:
            return None, None, "cache: none (a single epoch reads every row once)"
        loaders = max(1, cfg.workers) * sum(s.worker_memory(cfg.workers) for s in (stream, self.val_stream))
        residency = choose_tier(cfg.cache, need, ctx.device, cfg.cache_fraction, ranks_per_host(), loader_bytes=loaders)
        if residency.tier == "none":
            return None, None, f"{residency.message}; this rank: {sizes}"
        storage = ctx.device if residency.tier == "device" else torch.device("cpu")
        try:
            train_cache, val_cache = (RowCache(ranges, N_FEATURES, columns, dtype, storage, pin=ctx.device.type == "cuda")
                                      if ranges else None for ranges in (share.train_ranges, share.val_ranges))
        except (torch.OutOfMemoryError, RuntimeError) as e:
            return None, None, f"cache: none, allocating {gib(need)} ({residency.tier} tier) failed: {str(e).splitlines()[0]}"
        return train_cache, val_cache, (f"{residency.message}; this rank: {sizes}; the first epoch streams and "
                                        "fills it, later epochs gather from it")

    @property
    def batches(self) -> int:
        """Training batches per epoch (the same on every rank)."""
        return self.train_stream.plan(0).batches

    def _streamed(self, loader, cache: RowCache | None) -> Batches:
        """A loader's batches on the device, trained columns as float32, kept in `cache`."""
        try:
            for x, rows in loader:
                on_device = x.to(self.device, non_blocking=True)
                if cache is not None:
                    cache.put(rows, on_device if cache.data.device == on_device.device else x)
                if self.columns is not None:
                    on_device = on_device.index_select(1, self.columns)
                yield on_device.float(), rows
        except RuntimeError:
            death = worker_death(loader)
            if death is None:
                raise
            raise LoaderWorkerDied(f"rank {self.rank}: {death}; try fewer --workers, --cache none or a smaller "
                                   "--cache-fraction (and see docs/memory.md to size the job's memory)") from None

    def train(self, epoch: int, start_batch: int = 0) -> Batches:
        """Batches start_batch.. of an epoch: gathered from the row cache once it holds all of
        this rank's rows, else streamed (filling the cache, and completing it at the end)."""
        cache = self.cache
        self.train_stream.set_epoch(epoch, start_batch=start_batch)
        if cache is not None and cache.complete:
            yield from cache.batches(self.train_stream.plan(epoch), self.train_stream.share.partitions, start_batch,
                                     self.device)
            return
        yield from self._streamed(self.train_loader, cache)
        if cache is not None:
            array = open_array(self.cfg.data)
            read = cache.fill(lambda a, b: read_rows(self.cfg.data, array, slice(a, b)))
            self.log(f"cache: holds this rank's {len(cache.data):,} training rows ({read:,} re-read from the "
                     "store to complete it); the next epochs gather from it")

    def close(self) -> None:
        """End the loader workers now: persistent workers otherwise live until their loader is
        collected, which at interpreter exit may be after the process group is gone."""
        for loader in (self.train_loader, self.val_loader):
            if loader._iterator is not None:
                loader._iterator._shutdown_workers()

    def val(self) -> Batches:
        """This rank's validation batches: from the cache once a validation pass has filled it
        (in the order one loader worker streams them), else streamed."""
        if self.val_cache is not None and self.val_cache.complete:
            yield from self.val_cache.in_store_order(self.val_stream.share.local_batch, self.device)
        else:
            yield from self._streamed(self.val_loader, self.val_cache)
