"""Slabs: preallocated chunk slots that reader threads decode into and batches are gathered from.

A slab is `slots` slots of one chunk's rows each (the trained columns, in the store's dtype) on
its storage device. The stream gives a chunk a slot when it submits the chunk's read and frees
it after the chunk's last batch (a rolling window of resident rows), or never (`keep`: the row
cache, every chunk of the rank's share resident after the first epoch). Every batch is one
`index_select` from the slab: on a GPU slab where the step runs, on a host slab into the batch
(then copied to the GPU, if there is one, from a pinned staging pair).

On a GPU slab reader threads decode into pinned host staging slots instead, and the stream
copies each decoded chunk to its GPU slot in one asynchronous copy (`land`).
"""
from __future__ import annotations

import numpy as np
import torch


class Slab:
    def __init__(self, slots: int, n_chunks: int, chunk_rows: int, width: int, dtype: torch.dtype,
                 storage: torch.device, pin: bool, staging: int = 0) -> None:
        self.chunk_rows, self.storage = chunk_rows, storage
        self.table = np.full(n_chunks, -1, dtype=np.int64)  # slot of each chunk of the store, -1: none
        self.data = torch.empty((slots * chunk_rows, width), dtype=dtype, device=storage,
                                pin_memory=pin and storage.type == "cpu")
        self.free = list(range(slots - 1, -1, -1))
        self.slot_of: dict[int, int] = {}  # chunk -> slot, from submission on
        self.ready: set[int] = set()  # chunks whose rows are in their slot
        # GPU slab: pinned host slots reader threads decode into, and the copy event of each
        self._staging = [torch.empty((chunk_rows, width), dtype=dtype, pin_memory=True)
                         for _ in range(staging if storage.type == "cuda" else 0)]
        self._staged_free = list(range(len(self._staging)))
        self._copies: list[tuple[int, torch.cuda.Event]] = []
        self._batch_stage: list[torch.Tensor] | None = None
        self._batch_copied: list[torch.cuda.Event | None] = [None, None]
        self._next_stage = 0

    @property
    def slots(self) -> int:
        return len(self.data) // self.chunk_rows

    @staticmethod
    def bytes_for(slots: int, chunk_rows: int, width: int, dtype: torch.dtype, staging: int = 0) -> int:
        return (slots + staging) * chunk_rows * width * dtype.itemsize

    def can_take(self) -> bool:
        """A slot is free (and, on a GPU slab, a staging slot can be had)."""
        if not self.free:
            return False
        if self.storage.type != "cuda":
            return True
        if not self._staged_free and self._copies:
            staged, event = self._copies.pop(0)
            event.synchronize()  # the oldest copy out of staging is done: its slot is free again
            self._staged_free.append(staged)
        return bool(self._staged_free)

    def take(self, chunk: int, rows: int) -> tuple[torch.Tensor, int]:
        """A slot for `chunk` (`rows` rows): (the host tensor to decode into, staging slot or -1)."""
        slot = self.free.pop()
        self.slot_of[chunk] = self.table[chunk] = slot
        if self.storage.type != "cuda":
            return self.data[slot * self.chunk_rows: slot * self.chunk_rows + rows], -1
        staged = self._staged_free.pop()
        return self._staging[staged][:rows], staged

    def land(self, chunk: int, rows: int, staged: int) -> None:
        """A chunk's read is done: on a GPU slab, copy it from staging to its slot (asynchronously)."""
        if staged >= 0:
            slot = self.slot_of[chunk]
            self.data[slot * self.chunk_rows: slot * self.chunk_rows + rows].copy_(self._staging[staged][:rows],
                                                                                  non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._copies.append((staged, event))
        self.ready.add(chunk)

    def drop(self, chunk: int, staged: int = -1) -> None:
        """Free a chunk's slot (its last batch is gathered, or its read was abandoned)."""
        self.free.append(self.slot_of.pop(chunk))
        self.table[chunk] = -1
        self.ready.discard(chunk)
        if staged >= 0:
            self._staged_free.append(staged)

    def index(self, rows: np.ndarray) -> np.ndarray:
        """Slab row of each store row (every row's chunk resident)."""
        chunks = rows // self.chunk_rows
        return self.table[chunks] * self.chunk_rows + rows - chunks * self.chunk_rows

    def gather(self, index: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The rows at `index` on `device` as `dtype`: one index_select where the slab is."""
        idx = torch.from_numpy(index)
        if self.storage.type == "cuda":
            return self.data.index_select(0, idx.to(self.storage, non_blocking=True)).to(dtype)
        if device.type != "cuda":
            if dtype == self.data.dtype:
                return torch.index_select(self.data, 0, idx)
            return self.data.index_select(0, idx).to(dtype)
        # host slab feeding a GPU: gather into one of two pinned buffers, copy asynchronously
        if self._batch_stage is None:
            self._batch_stage = [torch.empty((0, self.data.shape[1]), dtype=self.data.dtype, pin_memory=True)] * 2
        s = self._next_stage % 2
        self._next_stage += 1
        if self._batch_copied[s] is not None:
            self._batch_copied[s].synchronize()  # the copy from this buffer two batches ago is done
        if len(self._batch_stage[s]) < len(index):
            self._batch_stage[s] = torch.empty((len(index), self.data.shape[1]), dtype=self.data.dtype,
                                               pin_memory=True)
        stage = self._batch_stage[s][:len(index)]
        torch.index_select(self.data, 0, idx, out=stage)
        x = stage.to(device, non_blocking=True)
        self._batch_copied[s] = torch.cuda.Event()
        self._batch_copied[s].record()
        return x.to(dtype)
