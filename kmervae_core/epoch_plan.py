"""The epoch plan: which store rows form each batch, as pure functions.

Everything here is a function of (seed, epoch, store rows and chunking, the split, global
batch, and the plan's shape: window, lane and partition counts): never of the world size or
the DataLoader's worker count. So a global batch holds the same rows on 1 GPU or 8, every rank
computes the plan without talking to the others, every rank gets the same number of batches (no
DDP hang), every training row is used once per epoch but for a tail shorter than one global
batch, and a resumed run can jump straight to batch k.

The global order of an epoch: training chunks in a seeded random order, grouped into windows
of `window_chunks` chunks; the rows of each window are shuffled. That order is cut into
`partitions` x `lanes` contiguous regions of equal batch counts (+-1 across lanes). Global
batch k is `partitions` sub-batches of global_batch / partitions rows, sub-batch s taken from
region (partition s, lane k mod lanes). A rank serves a block of partitions (world size must
divide `partitions`), so ranks read disjoint data; a DataLoader gives batch k to worker
k mod W, so with W dividing `lanes` every region is read by one worker only.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

SPLIT_MODES = ("random", "tail")


@dataclass(frozen=True)
class Split:
    """Per chunk, how many leading rows train; the chunk's remaining rows are validation."""

    chunk_rows: int
    train_stop: np.ndarray  # (n_chunks,)
    length: np.ndarray  # (n_chunks,)

    @property
    def train_counts(self) -> np.ndarray:
        return self.train_stop

    @property
    def val_counts(self) -> np.ndarray:
        return self.length - self.train_stop

    def train_rows_of(self, chunk: int) -> np.ndarray:
        return np.arange(chunk * self.chunk_rows, chunk * self.chunk_rows + int(self.train_stop[chunk]))

    def val_rows_of(self, chunk: int) -> np.ndarray:
        c0 = chunk * self.chunk_rows
        return np.arange(c0 + int(self.train_stop[chunk]), c0 + int(self.length[chunk]))


def make_split(rows: int, chunk_rows: int, fraction: float = 0.1, mode: str = "random", seed: int = 0) -> Split:
    """`random` holds out a seeded `fraction` of whole chunks (so validation reads only its own
    chunks, and the held-out rows are the same for any world size or worker count); `tail`
    holds out the last rows, as the reference did."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"unknown validation split {mode!r}; choose from {', '.join(SPLIT_MODES)}")
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    n_chunks = -(-rows // chunk_rows)
    starts = np.arange(n_chunks, dtype=np.int64) * chunk_rows
    length = np.minimum(chunk_rows, rows - starts)
    train_stop = length.copy()
    if mode == "tail":
        cut = rows - int(round(fraction * rows))
        train_stop = np.clip(cut - starts, 0, length)
    elif fraction > 0 and n_chunks > 1:
        n_val = min(n_chunks - 1, max(1, int(round(fraction * n_chunks))))
        train_stop[np.random.default_rng([seed, 0x5EED]).permutation(n_chunks)[:n_val]] = 0
    return Split(chunk_rows, train_stop, length)


@dataclass(frozen=True)
class EpochPlan:
    """The training batches of one epoch; `positions` maps (partition, k) to positions in the
    epoch's global order, `window_rows` maps a window's positions back to store rows."""

    split: Split
    seed: int
    epoch: int
    global_batch: int
    window_chunks: int = 1
    lanes: int = 4
    partitions: int = 8

    def __post_init__(self) -> None:
        if min(self.window_chunks, self.lanes, self.partitions) < 1:
            raise ValueError("window_chunks, lanes and partitions must be at least 1")
        if self.global_batch < 1 or self.global_batch % self.partitions:
            raise ValueError(f"global batch {self.global_batch} is not a multiple of the plan's "
                             f"{self.partitions} partitions")

    @property
    def sub_batch(self) -> int:
        """Rows each partition gives to a global batch."""
        return self.global_batch // self.partitions

    @property
    def batches(self) -> int:
        """Global batches in the epoch: every rank takes part in each."""
        return int(self.split.train_counts.sum()) // self.global_batch

    def partitions_of(self, rank: int, world_size: int) -> range:
        if self.partitions % world_size:
            raise ValueError(f"world size {world_size} does not divide the plan's {self.partitions} "
                             "partitions (choose partitions as a multiple of the world size)")
        per = self.partitions // world_size
        return range(rank * per, (rank + 1) * per)

    @cached_property
    def windows(self) -> list[np.ndarray]:
        """Chunk ids of each window, in epoch order."""
        chunks = np.flatnonzero(self.split.train_counts > 0)
        order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(chunks)
        return [order[i:i + self.window_chunks] for i in range(0, len(order), self.window_chunks)]

    @cached_property
    def window_starts(self) -> np.ndarray:
        """Position of each window's first row in the global order, then the total."""
        sizes = [int(self.split.train_counts[w].sum()) for w in self.windows]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def window_rows(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(store rows of window w chunk by chunk, the shuffle): position j of the window is
        store row rows[shuffle[j]]."""
        rows = np.concatenate([self.split.train_rows_of(int(c)) for c in self.windows[w]])
        return rows, np.random.default_rng([self.seed, self.epoch, 1, w]).permutation(len(rows))

    def positions(self, partition: int, k: int) -> tuple[int, int]:
        """Positions [p, p + sub_batch) in the global order of partition's part of batch k."""
        if not (0 <= partition < self.partitions and 0 <= k < self.batches):
            raise IndexError(f"batch {k} of partition {partition} is outside the plan")
        m, nb, lanes = self.sub_batch, self.batches, self.lanes
        lane, i = k % lanes, k // lanes
        lane_start = lane * (nb // lanes) + min(lane, nb % lanes)  # the first nb % lanes lanes hold one more
        p = (partition * nb + lane_start + i) * m
        return p, p + m

    def region(self, partition: int, k: int) -> tuple[int, int]:
        return partition, k % self.lanes

    def windows_of(self, p0: int, p1: int) -> range:
        """Windows holding positions [p0, p1)."""
        first = int(np.searchsorted(self.window_starts, p0, side="right")) - 1
        last = int(np.searchsorted(self.window_starts, p1 - 1, side="right")) - 1
        return range(first, last + 1)


def worker_batches(batches: int, start_batch: int, worker: int, num_workers: int) -> range:
    """The batches a DataLoader worker yields: the loader collects round-robin, so worker w's
    j-th batch is output j * W + w, and the loader emits start, start + 1, ... in order."""
    return range(start_batch + worker, batches, num_workers)


def validation_chunks(split: Split, rank: int, world_size: int) -> np.ndarray:
    """Chunks holding validation rows, dealt round-robin to ranks: disjoint, together complete."""
    return np.flatnonzero(split.val_counts > 0)[rank::world_size]
