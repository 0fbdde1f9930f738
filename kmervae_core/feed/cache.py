"""Tiered residency of a rank's training rows (`--cache auto|device|host|none`).

The epoch plan gives a rank the same rows in every epoch (fixed partitions), so after its first
epoch has streamed them from the store a rank can keep them: on the GPU (the `device` tier),
in pinned host memory (`host`), or not at all (`none`: every epoch streams and decodes again).
Later epochs gather their batches from the cache in exactly the order the stream would give
them (the plan's `order`), so a run's batches, and hence its losses, do not depend on the tier.
A rank's validation rows (fixed chunks) are kept the same way after the first validation pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..config import CACHE_TIERS
from .epoch_plan import EpochPlan
from ..limits import gib, host_memory


@dataclass(frozen=True)
class Residency:
    """The tier a rank uses and the line that says why."""

    tier: str
    message: str


def choose_tier(requested: str, need: int, device: torch.device, fraction: float, ranks_per_host: int = 1,
                device_free: int | None = None, host_free: tuple[int, str] | None = None,
                loader_bytes: int = 0) -> Residency:
    """Pick the highest tier allowed by `requested` whose budget holds `need` bytes: the device
    tier within `fraction` of the GPU's free memory; the host tier within `fraction` of what
    this host can still give (host_free: bytes and where the figure comes from; by default the
    smaller of MemAvailable and the job's cgroup allowance) shared by this host's ranks, less
    `loader_bytes` that this rank's loader workers will take once started. Where the request
    cannot be met, the result is the next tier down and its message says why."""
    if requested not in CACHE_TIERS:
        raise ValueError(f"cache must be one of {', '.join(CACHE_TIERS)}, got {requested!r}")
    if requested == "none":
        return Residency("none", "cache: off (--cache none); every epoch streams from the store")
    reasons = []
    if requested in ("auto", "device"):
        if device.type != "cuda":
            if requested == "device":
                reasons.append("no CUDA device for the device tier")
        else:
            free = torch.cuda.mem_get_info(device)[0] if device_free is None else device_free
            if need <= fraction * free:
                return Residency("device", f"cache: device tier, {gib(need)} on {device} "
                                                 f"(budget {fraction:g} x {gib(free)} free)")
            reasons.append(f"{gib(need)} does not fit {fraction:g} x {gib(free)} free on {device}")
    host, source = host_memory() if host_free is None else host_free
    share = host / max(1, ranks_per_host) - loader_bytes
    where = (f"{fraction:g} x ({source}" + (f" / {ranks_per_host} ranks" if ranks_per_host > 1 else "")
             + (f" - {gib(loader_bytes)} for loader workers" if loader_bytes else "") + ")")
    why = "; ".join(reasons)
    if need <= fraction * share:
        pinned = " pinned" if device.type == "cuda" else ""
        return Residency("host", f"cache: host tier,{pinned} {gib(need)} (budget {where})"
                                       + (f" [{why}]" if why else ""))
    reasons.append(f"{gib(need)} does not fit {where}")
    if share <= 0:
        reasons.append("the loader workers alone may not fit: fewer --workers (0 decodes in this process)")
    return Residency("none", f"cache: none, every epoch streams from the store [{'; '.join(reasons)}]")


class RowCache:
    """A rank's training rows (its partitions' row ranges), `n_columns` columns (the store's,
    or `columns` of them), held in `dtype` on `storage` (a CUDA device, or host memory, pinned
    when the model is on a GPU). Filled by `put` as the first epoch streams and completed by
    `fill`; then `batches` serves the later epochs."""

    def __init__(self, ranges: Sequence[tuple[int, int]], n_columns: int, columns: np.ndarray | None,
                 dtype: torch.dtype, storage: torch.device, pin: bool = False) -> None:
        ranges = sorted(ranges)
        self.starts = np.array([a for a, _ in ranges], dtype=np.int64)
        self.lengths = np.array([b - a for a, b in ranges], dtype=np.int64)
        self.bases = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.columns = columns
        self.data = torch.empty((int(self.bases[-1]), n_columns if columns is None else len(columns)),
                                dtype=dtype, device=storage, pin_memory=pin and storage.type == "cpu")
        self.filled = np.zeros(len(self.data), dtype=bool)

    @staticmethod
    def bytes_needed(rows: int, columns: int, dtype: torch.dtype, local_batch: int) -> int:
        """Rows, plus one epoch's gather index (int64 per row) and two staging batches."""
        item = dtype.itemsize
        return rows * (columns * item + 8) + 2 * local_batch * columns * item

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    def slots(self, rows: np.ndarray) -> np.ndarray:
        """Cache slot of each store row (rows must belong to this rank)."""
        i = np.searchsorted(self.starts, rows, side="right") - 1
        return self.bases[i] + rows - self.starts[i]

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.columns is None else x.index_select(1, torch.as_tensor(self.columns, device=x.device))

    def put(self, rows: torch.Tensor, x: torch.Tensor) -> None:
        """Keep a streamed batch (store columns, on the cache's storage device)."""
        slots = self.slots(rows.numpy())
        # index_put_ (not index_copy_): deterministic on CUDA under --deterministic; slots are distinct
        self.data.index_put_((torch.from_numpy(slots).to(self.data.device),), self._select(x).to(self.data.dtype))
        self.filled[slots] = True

    def fill(self, read: Callable[[int, int], np.ndarray]) -> int:
        """Read the ranges still holding unfilled rows (read(a, b) gives store rows a..b-1);
        returns the rows read."""
        read_rows = 0
        for start, length, base in zip(self.starts, self.lengths, self.bases):
            if self.filled[base:base + length].all():
                continue
            x = torch.from_numpy(np.ascontiguousarray(read(int(start), int(start + length))))
            self.data[base:base + length] = self._select(x).to(self.data.device, self.data.dtype)
            self.filled[base:base + length] = True
            read_rows += int(length)
        return read_rows

    def batches(self, plan: EpochPlan, partitions: range, start_batch: int, device: torch.device,
                dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x on `device` as `dtype`, store rows) for batches start_batch.. of the plan's epoch:
        the rows KmerStream would yield, in the same order."""
        rows = plan.order()[plan.batch_positions(partitions, start_batch)]
        index = torch.from_numpy(self.slots(rows.ravel()).reshape(rows.shape)).to(self.data.device)
        staged = self.data.device.type == "cpu" and device.type == "cuda"
        if staged:  # host tier feeding a GPU: gather into pinned buffers, copy asynchronously
            stage = [torch.empty((rows.shape[1], self.data.shape[1]), dtype=self.data.dtype, pin_memory=True)
                     for _ in range(2)]
            copied: list[torch.cuda.Event | None] = [None, None]
        for j in range(len(rows)):
            if staged:
                s = j % 2
                if copied[s] is not None:
                    copied[s].synchronize()  # the copy from this buffer two batches ago is done
                torch.index_select(self.data, 0, index[j], out=stage[s])
                x = stage[s].to(device, non_blocking=True)
                copied[s] = torch.cuda.Event()
                copied[s].record()
            else:
                x = self.data.index_select(0, index[j]).to(device, non_blocking=True)
            yield x.to(dtype), torch.from_numpy(rows[j])

    def in_store_order(self, batch: int, device: torch.device,
                       dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each range in store order cut into batches of at most `batch` rows: validation's
        order (KmerStream's, read by one worker). Slices, so nothing is gathered."""
        for start, length, base in zip(self.starts.tolist(), self.lengths.tolist(), self.bases.tolist()):
            for s in range(0, length, batch):
                n = min(batch, length - s)
                x = self.data[base + s: base + s + n].to(device, non_blocking=True)
                yield x.to(dtype), torch.arange(start + s, start + s + n)


def ranks_per_host() -> int:
    """Ranks sharing this host's memory (torchrun's LOCAL_WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
