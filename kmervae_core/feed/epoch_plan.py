"""The epoch plan: which store rows form each batch, as pure functions.

Everything here is a function of (seed, epoch, store rows and chunking, the split, global
batch, and the plan's shape: window, lane and partition counts): never of the world size or
the DataLoader's worker count. So a global batch holds the same rows on 1 GPU or 8, every rank
computes the plan without talking to the others, every rank gets the same number of batches (no
DDP hang), every training row is used once per epoch but for a tail shorter than one global
batch, and a resumed run can jump straight to batch k.

Partitions are fixed for the whole run: the training rows, in a seeded chunk order that does
not depend on the epoch, are cut into `partitions` contiguous parts of equal row counts (+-1; a
chunk may straddle two). A rank serves a block of partitions (world size must divide
`partitions`; `default_partitions` picks a count that every world size dividing
gcd(global batch, 48) divides, so those world sizes form one family training on the same
batches, and a run can resume on any of them), so ranks read disjoint data, and a rank's rows are the same in every epoch (which
is what lets it keep them resident: cache.py). Each epoch, a partition's pieces (its chunks, or
parts of chunks) are put in a seeded random order and grouped into windows of `window_chunks`
pieces whose rows are shuffled; the epoch's global order is the partitions' orders one after the
other. Each partition's order is cut into `lanes` contiguous regions of equal batch counts (+-1).
Global batch k is `partitions` sub-batches of global_batch / partitions rows, sub-batch s taken
from region (partition s, lane k mod lanes); a DataLoader gives batch k to worker k mod W, so
with W dividing `lanes` every region is read by one worker only.

Which rows are a rank's (its partitions' row ranges, its validation chunks, its part of each
global batch) is answered in one place, `rank_rows`: the stream, the row cache, the feed and
the trainer's noise slice all ask it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

SPLIT_MODES = ("random", "tail")
DEFAULT_WINDOW_CHUNKS, DEFAULT_LANES = 1, 4  # the plan's shape unless set (config.TrainConfig's defaults)
PARTITION_FAMILY = 48  # 2^4 x 3: world sizes 1, 2, 3, 4, 6, 8, 12, 16, 24 and 48 share one plan


def default_partitions(global_batch: int, world_size: int) -> int:
    """The partition count used unless one is set: gcd(global batch, 48), so every world size
    dividing it (1, 2, 4, 8, 16 at a power-of-two batch such as 1024 or 4096) trains on the same
    batches and can resume from another's checkpoint; a larger world size W dividing the batch
    gets lcm(that, W). More partitions cost each rank one open window per partition it serves
    (decoded chunks are shared, so none is read twice), hence a bounded count."""
    return math.lcm(math.gcd(global_batch, PARTITION_FAMILY), world_size)


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

    @property
    def val_chunks(self) -> np.ndarray:
        """Chunks holding validation rows, in store order."""
        return np.flatnonzero(self.val_counts > 0)

    def val_range(self, chunk: int) -> tuple[int, int]:
        """A chunk's validation rows [start, stop): its rows after the training ones."""
        c0 = chunk * self.chunk_rows
        return c0 + int(self.train_stop[chunk]), c0 + int(self.length[chunk])

    def val_rows_of(self, chunk: int) -> np.ndarray:
        return np.arange(*self.val_range(chunk))

    def val_rows(self) -> np.ndarray:
        """Every validation row, in store order."""
        return np.concatenate([self.val_rows_of(int(c)) for c in self.val_chunks] or [np.zeros(0, np.int64)])


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
    window_chunks: int = DEFAULT_WINDOW_CHUNKS
    lanes: int = DEFAULT_LANES
    partitions: int | None = None  # None or 0: default_partitions(global_batch, 1)

    def __post_init__(self) -> None:
        if not self.partitions:
            object.__setattr__(self, "partitions", default_partitions(self.global_batch, 1))
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
    def bounds(self) -> np.ndarray:
        """Where each partition starts in the global order (and where the last one ends)."""
        total = int(self.split.train_counts.sum())
        return np.array([p * total // self.partitions for p in range(self.partitions + 1)], dtype=np.int64)

    @cached_property
    def pieces(self) -> list[list[tuple[int, int]]]:
        """Per partition, its store row ranges [start, stop): fixed across epochs."""
        chunks = np.flatnonzero(self.split.train_counts > 0)
        out: list[list[tuple[int, int]]] = [[] for _ in range(self.partitions)]
        pos = 0  # position in the fixed order, cut at the partition bounds
        for c in np.random.default_rng([self.seed, 0xFA27]).permutation(chunks):
            first, end = int(c) * self.split.chunk_rows - pos, pos + int(self.split.train_counts[c])
            while pos < end:
                p = int(np.searchsorted(self.bounds, pos, side="right")) - 1
                stop = min(end, int(self.bounds[p + 1]))
                out[p].append((first + pos, first + stop))
                pos = stop
        return out

    @cached_property
    def windows(self) -> list[list[tuple[int, int]]]:
        """Row ranges of each window, in epoch order; windows never cross partitions."""
        out = []
        for p, part in enumerate(self.pieces):
            order = np.random.default_rng([self.seed, self.epoch, 0, p]).permutation(len(part))
            out += [[part[i] for i in order[j:j + self.window_chunks]] for j in range(0, len(order), self.window_chunks)]
        return out

    @cached_property
    def window_starts(self) -> np.ndarray:
        """Position of each window's first row in the global order, then the total."""
        sizes = [sum(b - a for a, b in w) for w in self.windows]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def window_rows(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(store rows of window w range by range, the shuffle): position j of the window is
        store row rows[shuffle[j]]."""
        rows = np.concatenate([np.arange(a, b) for a, b in self.windows[w]])
        return rows, np.random.default_rng([self.seed, self.epoch, 1, w]).permutation(len(rows))

    def order(self) -> np.ndarray:
        """Store row at every position of the epoch's global order (what the stream yields)."""
        parts = []
        for w in range(len(self.windows)):
            rows, shuffle = self.window_rows(w)
            parts.append(rows[shuffle])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _first_sub_batch(self, k: np.ndarray | int) -> np.ndarray | int:
        """Index, within its partition, of the sub-batch that batch k takes (works on arrays)."""
        nb, lanes = self.batches, self.lanes
        lane, i = k % lanes, k // lanes
        return lane * (nb // lanes) + np.minimum(lane, nb % lanes) + i  # the first nb % lanes lanes hold one more

    def positions(self, partition: int, k: int) -> tuple[int, int]:
        """Positions [p, p + sub_batch) in the global order of partition's part of batch k."""
        if not (0 <= partition < self.partitions and 0 <= k < self.batches):
            raise IndexError(f"batch {k} of partition {partition} is outside the plan")
        p = int(self.bounds[partition]) + int(self._first_sub_batch(k)) * self.sub_batch
        return p, p + self.sub_batch

    def batch_positions(self, partitions: range, start_batch: int = 0) -> np.ndarray:
        """[batches - start_batch, len(partitions) * sub_batch] positions of the given
        partitions' parts of every batch from start_batch on, in the order a rank yields them."""
        k = np.arange(start_batch, self.batches)
        first = self.bounds[list(partitions)][None, :, None] + (self._first_sub_batch(k) * self.sub_batch)[:, None, None]
        return (first + np.arange(self.sub_batch)).reshape(len(k), len(partitions) * self.sub_batch)

    def region(self, partition: int, k: int) -> tuple[int, int]:
        return partition, k % self.lanes


@dataclass(frozen=True)
class RankRows:
    """Which rows are one rank's, the same in every epoch: the one answer the stream, the row
    cache, the feed and the step's noise slice all read, so they cannot disagree."""

    rank: int
    partitions: range  # the plan's partitions this rank serves
    train_ranges: tuple[tuple[int, int], ...]  # their store rows [start, stop), partition by partition
    val_chunks: tuple[int, ...]  # validation chunks, dealt round-robin over the ranks
    val_ranges: tuple[tuple[int, int], ...]  # the validation rows of each of those chunks
    local_batch: int  # this rank's rows of every global batch

    @property
    def batch_slice(self) -> slice:
        """Where this rank's rows stand in a global batch (ranks' parts in rank order)."""
        return slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    @property
    def train_row_count(self) -> int:
        return sum(b - a for a, b in self.train_ranges)

    @property
    def val_row_count(self) -> int:
        return sum(b - a for a, b in self.val_ranges)


def rank_rows(plan: EpochPlan, rank: int, world_size: int) -> RankRows:
    """Rank `rank` of `world_size`'s share of the plan's rows (any epoch of the plan: partitions
    and the split do not change with it). Ranks' shares are disjoint and together hold every
    training and validation row; rank r of W serves what ranks 2r and 2r + 1 of 2W serve
    together (training rows and batch slice), which is what lets a run resume on another world
    size. Raises ValueError where the world size does not divide the plan's partitions."""
    partitions = plan.partitions_of(rank, world_size)
    val_chunks = tuple(int(c) for c in plan.split.val_chunks[rank::world_size])
    return RankRows(rank, partitions,
                     train_ranges=tuple(r for p in partitions for r in plan.pieces[p]),
                     val_chunks=val_chunks, val_ranges=tuple(plan.split.val_range(c) for c in val_chunks),
                     local_batch=plan.global_batch // world_size)
