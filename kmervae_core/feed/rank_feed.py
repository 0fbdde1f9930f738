"""Where a rank's batches come from: its training and validation KmerStreams, which read and
decode whole chunks in this process, and whether they keep what they read (the row cache:
`--cache`, cache.py). Either way the step gets the same batches, on the device, as float32,
holding the trained columns only."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .cache import choose_tier, gib, rolling_storage
from ..config import MSE, TrainConfig
from ..distributed import DistContext
from ..errors import KmervaeError
from ..limits import ranks_per_host
from ..model.losses import length_weights
from ..store.contract import StoreInfo, open_store, read_rows
from .stream import KmerStream
from ..words import counted

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (x on the device, store rows)


class Feed:
    """A rank's training and validation batches. `columns`: the store columns trained on
    (None: all). `message` says which cache tier is used and what it needs; `cache` is the
    training stream where it keeps its rows (None where nothing is kept)."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, columns: np.ndarray | None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.device, self.log, self.rank = cfg, ctx.device, log, ctx.rank
        info = open_store(cfg.data)
        self.clr = info.clr  # what the run trains on; recorded for train.encode's check
        info.require_clr(cfg.store_clr, "this configuration is tuned on")
        args = dict(batch_size=cfg.batch_size, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size,
                    val_fraction=cfg.val_fraction, val_split=cfg.val_split, window_chunks=cfg.window_chunks,
                    lanes=cfg.lanes, partitions=cfg.partitions, workers=cfg.workers,
                    device=ctx.device, columns=columns)

        def make_streams(**settings: object) -> dict[str, KmerStream]:
            """Both splits' streams: without keep they share one rolling slab (their passes never
            overlap); kept slabs are each their own."""
            train = KmerStream(info, "train", **args, **settings)
            return {"train": train, "val": KmerStream(info, "val", **args, **settings, reuse_slab_of=train)}

        try:
            streams = make_streams()
        except ValueError as e:
            raise KmervaeError(str(e)) from None
        self.tier, self.message = self._residency(cfg, ctx, streams, columns)
        if self.tier != "none":
            storage = ctx.device if self.tier == "device" else torch.device("cpu")
            try:
                streams = make_streams(keep=True, storage=storage)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                self.tier, self.message = "none", (f"cache: none, allocating it ({self.tier} tier) failed: "
                                                   f"{str(e).splitlines()[0]}")
                # the streams made without keep are used
        if self.tier == "none":
            storage, why = rolling_storage(ctx.device, max(s.memory().device for s in streams.values()),
                                           cfg.cache_fraction)
            if why:
                streams = make_streams(storage=storage)
                self.message = f"{self.message}; {why}"
        self.train_stream, self.val_stream = streams["train"], streams["val"]
        self.cache = self.train_stream if self.tier != "none" else None
        needs = "--length-weight" if cfg.length_weight else "--likelihood multinomial" if cfg.likelihood != MSE else ""
        lengths = self._lengths(cfg, info, needs) if needs else None
        self.weight_of_row = length_weights(lengths, cfg.length_weight) if cfg.length_weight else None
        self.length_of_row = lengths if cfg.likelihood != MSE else None  # the step's counts need them
        self._batch: dict[str, torch.Tensor] = {}  # the batch just fed: its slice of the pass's per-row values

    @staticmethod
    def _lengths(cfg: TrainConfig, info: StoreInfo, needs: str) -> np.ndarray:
        """The contig length of every store row (column 0), which the setting `needs` reads."""
        lengths = read_rows(cfg.data, info.column0_array, slice(None))
        if missing := int((~(lengths > 0)).sum()):
            raise KmervaeError(f"{needs} needs each row's contig length in column 0; {counted(missing, 'row')} of "
                               f"{cfg.data} {'has' if missing == 1 else 'have'} none (0 or less)")
        return np.asarray(lengths, np.float32)

    def row_weights(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The reconstruction weights of the batch of store rows `rows` just fed, on the device
        (None: unweighted): a slice of the pass's weights, uploaded once at its start."""
        return self._of_batch("weights", rows)

    def row_lengths(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The contig lengths of the batch of store rows `rows` just fed, on the device (None: not
        read), uploaded like the weights."""
        return self._of_batch("lengths", rows)

    def _of_batch(self, name: str, rows: torch.Tensor) -> torch.Tensor | None:
        if name not in self._batch:
            return None
        if len(rows) != len(self._batch[name]):
            raise RuntimeError(f"the {name} of a batch of {len(rows)} rows asked for after one of {len(self._batch[name])}: "
                               "per-row values are the batch just fed's")
        return self._batch[name]

    def _with_row_values(self, stream: KmerStream, epoch: int, start_batch: int = 0) -> Batches:
        """The stream's batches, each with its slice of the pass's per-row values (weights,
        lengths) ready: the pass's values cross to the device once, at its start."""
        per_row = {name: values for name, values in (("weights", self.weight_of_row), ("lengths", self.length_of_row))
                   if values is not None}
        if not per_row:
            yield from stream
            return
        rows = np.concatenate(stream.batch_rows(epoch, start_batch) or [np.zeros(0, np.int64)])
        on_device = {name: torch.from_numpy(values[rows]).to(self.device) for name, values in per_row.items()}
        offset = 0
        for x, batch in stream:
            self._batch = {name: values[offset:offset + len(batch)] for name, values in on_device.items()}
            offset += len(batch)
            yield x, batch

    @staticmethod
    def _residency(cfg: TrainConfig, ctx: DistContext, streams: dict[str, KmerStream],
                   columns: np.ndarray | None) -> tuple[str, str]:
        """The highest tier `--cache` allows that holds both streams' chunks, and why."""
        share = streams["train"].rank_rows
        n_columns = streams["train"].width
        dtype = streams["train"].store_dtype  # what a kept slab holds
        sizes = (f"{share.train_row_count:,} training + {share.val_row_count:,} validation rows x {n_columns:,} "
                 f"columns {str(dtype).removeprefix('torch.')}")
        if cfg.cache == "auto" and cfg.epochs == 1:
            return "none", "cache: none (a single epoch reads every row once)"
        cr, item = streams["train"].info.chunk_rows, dtype.itemsize
        need = sum(len(s.rank_chunks()) for s in streams.values()) * cr * n_columns * item
        rolling = max(s.memory().host for s in streams.values())  # one pass at a time
        residency = choose_tier(cfg.cache, need, ctx.device, cfg.cache_fraction, ranks_per_host(),
                                stream_bytes=rolling)
        if residency.tier == "none":
            return "none", f"{residency.message}; this rank: {sizes}"
        return residency.tier, (f"{residency.message}; this rank: {sizes} in {gib(need)} of whole chunks; the "
                                "first epoch decodes each chunk once and keeps it, later epochs gather from it")

    def memory_line(self, besides: dict[str, int] | None = None) -> str:
        """The rank's expected host bytes, said at start so that a job can be sized by them: the
        streams' (KmerStream.memory: one rolling slab serves both splits, the larger pass's; kept
        slabs add up) and `besides` (what else the rank holds, by name), and what the slab is for."""
        train, val = self.train_stream, self.val_stream
        prints = [s.memory() for s in (train, val)]
        combine = sum if self.cache is not None else max
        host, device = combine(p.host for p in prints), combine(p.device for p in prints)
        slots, live = train.slab_chunks()
        chunk = train.info.chunk_rows * train.width * train.store_dtype.itemsize
        what = ("every chunk of its share, kept" if self.cache is not None else
                f"{live:,} that a batch of epoch 1 needs at once + {slots - live} read ahead")
        parts = [f"the feed {gib(host)}: a {'GPU' if train.storage.type == 'cuda' else 'host'} slab of {slots:,} chunks "
                 f"x {chunk / 2**20:,.1f} MiB ({what}; the rank's {len(train.rank_chunks()):,} training chunks)"
                 + (f" and {gib(device)} on the GPU" if device else ""),
                 *(f"{name} {gib(n)}" for name, n in (besides or {}).items())]
        total = host + sum((besides or {}).values())
        return (f"memory: this rank expects {gib(total)} of host memory besides its interpreter and libraries (about "
                f"0.4-0.6 GiB on a CPU: docs/memory.md): {'; '.join(parts)}")

    @property
    def batches(self) -> int:
        """Training batches per epoch (the same on every rank)."""
        return self.train_stream.plan(0).batches

    def train(self, epoch: int, start_batch: int = 0) -> Batches:
        """Batches start_batch.. of an epoch, read by the training stream's reader threads (or
        gathered from its kept chunks); says so when the cache first holds every chunk."""
        stream = self.train_stream
        stream.set_epoch(epoch, start_batch=start_batch)
        filling = self.cache is not None and not stream.complete
        yield from self._with_row_values(stream, epoch, start_batch)
        if filling and stream.complete:
            self.log(f"cache: holds this rank's {stream.rank_rows.train_row_count:,} training rows ({stream.decoded:,} "
                     "chunks, each decoded once); the next epochs gather from it")

    def val(self) -> Batches:
        """This rank's validation batches, in store order."""
        return self._with_row_values(self.val_stream, 0)

    def close(self) -> None:
        """End both streams' reader threads (before the process group goes)."""
        for stream in (self.train_stream, self.val_stream):
            stream.close()
