"""Slabs: preallocated chunk slots that reader threads decode into and batches are gathered from.

A slab is `slots` slots of one chunk's rows each (the trained columns, in the store's dtype) on
its storage device. Which chunk takes which slot in a pass is worked out before the pass
(`plan_pass`): a chunk takes a slot when its read is submitted and frees it after its last
batch (a rolling window of resident rows), or never (`keep`: the row cache, every chunk of the
rank's share resident after the first epoch). So the gather index of every batch of the pass is
known at its start, computed once (and on a GPU slab uploaded once), and every batch is one
`index_select` from the slab.

On a GPU slab reader threads decode into a pinned staging buffer of their own and copy the chunk
to its slot at once, on a copy stream of its own (`CopyEngine`): the copy overlaps the step. The
compute stream waits on a chunk's copy event before the first gather from it, and a slot is
copied into again only after the event recorded behind the last gather from its previous chunk.

Pinned host memory (host-tier slabs, staging, batch staging) is allocated outside torch's caching
host allocator, which rounds every block up to a power of two (a 33 GiB slab would pin 64 GiB):
an anonymous mapping of the bytes asked, rounded to a page, registered with CUDA
(`host_empty`). `Footprint` says what a slab takes on the host and on the device, apart.
"""
from __future__ import annotations

import contextlib
import math
import mmap
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PAGE = mmap.PAGESIZE


def mapped_bytes(nbytes: int) -> int:
    """Host bytes a buffer of `nbytes` from `mapped` takes (whole pages)."""
    return max(1, -(-nbytes // PAGE)) * PAGE


HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every CUDA context, not only the caller's


def register_host(ptr: int, size: int) -> None:
    """Page-lock host memory for CUDA copies (cudaHostRegister), for every context: a reader
    thread registers its staging buffer, and its current device is not the rank's."""
    status = int(torch.cuda.cudart().cudaHostRegister(ptr, size, HOST_REGISTER_PORTABLE))
    if status != 0:
        raise RuntimeError(f"cudaHostRegister of {size / 2**30:.2f} GiB failed (CUDA error {status})")


def unregister_host(ptr: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(ptr)


def mapped(nbytes: int, shared: bool = False) -> np.ndarray:
    """mapped_bytes(nbytes) of anonymous memory, as bytes, in huge pages where the kernel allows.
    Private unless `shared`: a forked DataLoader worker inherits the stream's host slab and batch
    buffers and must write into copies of its own. Pinned buffers stay shared, as they were: a
    fork copies private pinned pages at once (Linux 5.9+), and no worker uses them."""
    flags = mmap.MAP_ANONYMOUS | (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE)
    mapping = mmap.mmap(-1, mapped_bytes(nbytes), flags=flags)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
        with contextlib.suppress(OSError):  # a kernel without transparent huge pages refuses the advice
            mapping.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(mapping, dtype=np.uint8)


def on_bytes(view: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A `shape` tensor of `dtype` on `view`, exactly its bytes; the tensor holds `view` itself (no
    view of it), which is what BatchBuffers watches."""
    return torch.from_numpy(view).view(dtype).view(shape)


def host_empty(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """A host tensor in an anonymous mapping of exactly mapped_bytes(its bytes), in huge pages
    where the kernel allows them (MADV_HUGEPAGE: a batch gathers rows from all over a slab, about
    15% faster from 2 MiB pages, likely for fewer TLB misses; docs/benchmarks.md); pinned:
    registered with CUDA, and unregistered when the last tensor on it goes."""
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = mapped(nbytes, shared=pin)
    if pin:
        ptr = buffer.ctypes.data
        register_host(ptr, buffer.nbytes)
        weakref.finalize(buffer, unregister_host, ptr)  # the tensor below keeps `buffer` alive
    return on_bytes(buffer[:nbytes], dtype, shape)


@dataclass(frozen=True)
class Footprint:
    """Bytes a stream's buffers take on the host and on the device, budgeted apart."""

    host: int = 0
    device: int = 0


class CopyEngine:
    """Host-to-device copies on a CUDA stream of their own, ordered by events (the tests inject
    one that records the same calls on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, after: Any) -> Any:
        """Copy pinned `src` to `dst` on the copy stream once `after` (an event, or None) has
        happened; returns the copy's event."""
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            dst.copy_(src, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return done

    def wait(self, event: Any) -> None:
        """The compute stream (the calling thread's) waits for `event` before what follows."""
        torch.cuda.current_stream(self.device).wait_event(event)

    def record(self) -> Any:
        """An event behind the work queued so far on the compute stream."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def synchronize(self, event: Any) -> None:
        """The calling host thread waits for `event`."""
        event.synchronize()


@dataclass(frozen=True)
class PassPlan:
    """A pass over `batches` on a slab: `reads[j]`, the chunks whose reads are submitted before
    batch j is gathered (in the order first needed); `first_needed[j]`, the chunks batch j is the
    first to need (not resident before the pass); `slot`, each chunk's slot (the store's chunks,
    -1: none); `index`, every batch's slab rows one after the other, batch j at
    offsets[j]:offsets[j + 1]; `release[j]`, chunks whose slots come free after batch j."""

    reads: list[list[int]]
    first_needed: list[list[int]]
    release: list[list[int]]
    slot: np.ndarray
    index: np.ndarray
    offsets: np.ndarray

    def batch_index(self, j: int) -> slice:
        return slice(int(self.offsets[j]), int(self.offsets[j + 1]))


def plan_pass(batches: list[np.ndarray], chunk_rows: int, n_chunks: int, slots: int,
              resident: dict[int, int], keep: bool) -> PassPlan:
    """Which chunk takes which slot in a pass, and when its read is submitted: each in the order
    first needed, as soon as a slot is free, slots coming free after a chunk's last batch (never
    with keep; `resident` chunks keep theirs). A pure function of the batches, so the gather
    index of the whole pass is known before it starts."""
    first, last = first_and_last(batches, chunk_rows)
    n = len(batches)
    release: list[list[int]] = [[] for _ in range(n)]
    first_needed: list[list[int]] = [[] for _ in range(n)]
    for c, j in first.items():
        if c not in resident:
            first_needed[j].append(c)
    if not keep:
        for c, j in last.items():
            release[j].append(c)
    used = set(resident.values())
    free = [s for s in range(slots - 1, -1, -1) if s not in used]
    pending = deque(c for c in first if c not in resident)
    slot = np.full(n_chunks, -1, dtype=np.int64)
    for c, s in resident.items():
        slot[c] = s
    reads: list[list[int]] = [[] for _ in range(n + 1)]
    for j in range(n + 1):
        if j > 0:
            free += [int(slot[c]) for c in release[j - 1]]
        while pending and free:
            c = pending.popleft()
            slot[c] = free.pop()
            reads[j].append(c)
    rows = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    chunks = rows // chunk_rows
    index = slot[chunks] * chunk_rows + rows - chunks * chunk_rows
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in batches])]).astype(np.int64)
    return PassPlan(reads[:n], first_needed, release, slot, index, offsets)


def first_and_last(batches: list[np.ndarray], chunk_rows: int) -> tuple[dict[int, int], dict[int, int]]:
    """The batch that first and the batch that last needs each chunk; `first` in the order first
    needed (then by chunk)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for j, rows in enumerate(batches):
        for c in np.unique(rows // chunk_rows).tolist():
            first.setdefault(c, j)
            last[c] = j
    return first, last


def slots_needed(batches: list[np.ndarray], chunk_rows: int) -> int:
    """The most chunks any batch needs resident at once (first to last batch each)."""
    first, last = first_and_last(batches, chunk_rows)
    delta = np.zeros(len(batches) + 1, dtype=np.int64)
    np.add.at(delta, list(first.values()), 1)
    np.add.at(delta, [last[c] + 1 for c in first], -1)
    return int(np.cumsum(delta).max(initial=0))


class Slab:
    """`slots` chunk slots on `storage`; `engine` (a GPU slab's CopyEngine): reader threads
    decode into staging buffers of their own and copy from there. Batches gathered on the host
    for the host come in `batches` reused buffers (BatchBuffers)."""

    def __init__(self, slots: int, chunk_rows: int, width: int, dtype: torch.dtype, storage: torch.device,
                 pin: bool, batches: int, engine: CopyEngine | None = None) -> None:
        self.chunk_rows, self.width, self.dtype, self.storage, self.engine = chunk_rows, width, dtype, storage, engine
        shape = (slots * chunk_rows, width)
        self.data = (torch.empty(shape, dtype=dtype, device=storage) if storage.type == "cuda"
                     else host_empty(shape, dtype, pin and storage.type == "cpu"))
        self.resident: dict[int, int] = {}  # chunk -> slot: rows in place (kept from pass to pass with keep)
        self.copied: dict[int, Any] = {}  # chunk -> its copy's event, until the compute stream waits on it
        self.released: list[Any] = [None] * slots  # slot -> event behind the last gather from its last chunk
        self._staging = threading.local()  # a reader thread's staging buffer and its last copy's event
        self._batch_stage: list[torch.Tensor] = []  # host slab feeding a GPU: two pinned batch buffers
        self._batch_copied: list[torch.cuda.Event | None] = [None, None]
        self._next_stage = 0
        self.batches = BatchBuffers(batches)

    @property
    def slots(self) -> int:
        return len(self.data) // self.chunk_rows

    def rows_of(self, slot: int, rows: int) -> torch.Tensor:
        return self.data[slot * self.chunk_rows: slot * self.chunk_rows + rows]

    def staging(self, rows: int) -> torch.Tensor:
        """This reader thread's pinned staging buffer, once its last copy out of it is done."""
        local = self._staging
        if not hasattr(local, "buffer"):
            pin = self.storage.type == "cuda"
            # a new thread's current device is 0: register under the slab's, or rank k's readers open
            # a context on GPU 0
            with torch.cuda.device(self.storage) if pin else contextlib.nullcontext():
                local.buffer, local.copied = host_empty((self.chunk_rows, self.width), self.dtype, pin), None
        if local.copied is not None:
            self.engine.synchronize(local.copied)
        return local.buffer[:rows]

    def copy_in(self, chunk: int, slot: int, staged: torch.Tensor) -> None:
        """A decoded chunk (in this thread's staging) goes to its slot at once, on the copy
        stream, after the last gather from the slot's previous chunk."""
        event = self.engine.copy(self.rows_of(slot, len(staged)), staged, after=self.released[slot])
        self._staging.copied = self.copied[chunk] = event

    def arrived(self, chunk: int, slot: int) -> None:
        """A chunk's read (and copy) is done: the compute stream waits on its copy before the
        next gather."""
        self.resident[chunk] = slot
        if self.engine is not None:
            self.engine.wait(self.copied.pop(chunk))

    def forget_copies(self) -> None:
        """A pass broken off: the compute stream waits for the copies still in flight (into slots
        a later pass, or a grown slab reusing this memory, may hand out) before they are dropped."""
        for event in self.copied.values():
            self.engine.wait(event)
        self.copied.clear()

    def release(self, chunks: list[int]) -> None:
        """Chunks whose last batch is gathered: their slots may be copied into once that gather is done."""
        if not chunks:
            return
        event = self.engine.record() if self.engine is not None else None
        for c in chunks:
            self.released[self.resident.pop(c)] = event

    def gather(self, index: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The slab rows at `index` (on the slab's storage) on `device` as `dtype`: one index_select
        where the slab is."""
        if self.storage.type == "cuda":
            return self.data.index_select(0, index).to(dtype)
        if device.type != "cuda":
            return gather_rows(self.data, index, dtype, self.batches)
        # host slab feeding a GPU: gather into one of two pinned buffers, copy asynchronously
        if not self._batch_stage:
            self._batch_stage = [host_empty((len(index), self.width), self.dtype, pin=True) for _ in range(2)]
        s = self._next_stage % 2
        self._next_stage += 1
        if self._batch_copied[s] is not None:
            self._batch_copied[s].synchronize()  # the copy from this buffer two batches ago is done
        if len(self._batch_stage[s]) < len(index):
            self._batch_stage[s] = host_empty((len(index), self.width), self.dtype, pin=True)
        stage = self._batch_stage[s][:len(index)]
        torch.index_select(self.data, 0, index, out=stage)
        x = stage.to(device, non_blocking=True)
        self._batch_copied[s] = torch.cuda.Event()
        self._batch_copied[s].record()
        return x.to(dtype)


class BatchBuffers:
    """Host batches in buffers reused once the batch handed out in one is gone. A fresh batch
    (11 MiB at 1,024 x 2,772 float32) is a fresh mapping, faulted in and zeroed page by page
    by the kernel: on the CPU that cost the size of the gather itself (docs/benchmarks.md). A
    buffer is free again only when nothing refers to its batch any more (the tensor, its views,
    a numpy array on it, a tensor made with from_numpy): each batch is a tensor on a numpy view
    made for it alone, watched through a weak reference, so a batch the consumer keeps is never
    written into. At most `keep` buffers are kept; a consumer holding more gets fresh ones."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._buffers: list[list[Any]] = []  # [bytes (numpy uint8), weak reference to the view handed out]

    def take(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised [rows, width] `dtype` batch, in a free kept buffer where one is large enough."""
        nbytes = rows * width * dtype.itemsize
        with self._lock:
            entry = next((e for e in self._buffers if e[1]() is None and len(e[0]) >= nbytes), None)
            if entry is None:
                entry = [mapped(nbytes), None]
                if len(self._buffers) < self.keep:
                    self._buffers.append(entry)
            view = entry[0][:nbytes]
            entry[1] = weakref.ref(view)
        return on_bytes(view, dtype, (rows, width))


_GATHERED = threading.local()  # a thread's buffer for rows gathered before conversion


def gather_rows(data: torch.Tensor, index: torch.Tensor, dtype: torch.dtype, batches: BatchBuffers) -> torch.Tensor:
    """data[index] as `dtype`, on the host, into a batch from `batches`; a conversion gathers
    into a buffer the thread reuses, then converts into the batch."""
    out = batches.take(len(index), data.shape[1], dtype)
    if dtype == data.dtype:
        return torch.index_select(data, 0, index, out=out)
    buffer = getattr(_GATHERED, "buffer", None)
    if buffer is None or buffer.dtype != data.dtype or buffer.shape[1] != data.shape[1] or len(buffer) < len(index):
        buffer = _GATHERED.buffer = torch.empty((len(index), data.shape[1]), dtype=data.dtype)
    gathered = buffer[:len(index)]
    torch.index_select(data, 0, index, out=gathered)
    return out.copy_(gathered)
