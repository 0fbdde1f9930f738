"""How many chunks a rank's rolling slab holds, from the epoch plan alone (no store needed): the
most chunks any batch of epoch 1 needs resident at once, each from its first batch to its last
(what KmerStream sizes its slab by, before the read-ahead), for stores of ROWS rows, against the
count if a chunk two regions share were released between its uses and decoded again (not built).

    python benchmarks/slab_plan.py [--rows 1000000 2000000] [--chunk-rows 4096] [--batch-size 256] [--lanes 4 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmervae_core.config import TrainConfig  # noqa: E402
from kmervae_core.feed.epoch_plan import EpochPlan, make_split, rank_rows  # noqa: E402
from kmervae_core.feed.slab import slots_needed  # noqa: E402

DEFAULTS = {name: field.default for name, field in TrainConfig.__dataclass_fields__.items()}


def split_at_gaps(batches: list[np.ndarray], chunk_rows: int) -> tuple[int, int]:
    """(chunks resident at once, reads) where each chunk is held only over its runs of batches
    no more than 64 apart (a region reads its chunk every `lanes` batches): a chunk two regions
    share is released between their uses and read again."""
    uses: dict[int, list[int]] = {}
    for j, rows in enumerate(batches):
        for c in np.unique(rows // chunk_rows).tolist():
            uses.setdefault(c, []).append(j)
    delta, reads = np.zeros(len(batches) + 1, dtype=np.int64), 0
    for js in uses.values():
        start = js[0]
        for prev, j in zip(js, [*js[1:], None]):
            if j is None or j - prev > 64:
                delta[start] += 1
                delta[prev + 1] -= 1
                reads, start = reads + 1, j
    return int(np.cumsum(delta).max()), reads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[330_000, 1_000_000, 2_000_000, 4_000_000])
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lanes", type=int, nargs="+", default=[DEFAULTS["lanes"], 1])
    args = p.parse_args()
    seed = DEFAULTS["seed"]
    for rows in args.rows:
        split = make_split(rows, args.chunk_rows, DEFAULTS["val_fraction"], DEFAULTS["val_split"], seed)
        for lanes in args.lanes:
            plan = EpochPlan(split, seed, 0, args.batch_size, window_chunks=DEFAULTS["window_chunks"], lanes=lanes)
            batches = list(plan.order()[plan.batch_positions(rank_rows(plan, 0, 1).partitions)])
            live, (again, reads) = slots_needed(batches, args.chunk_rows), split_at_gaps(batches, args.chunk_rows)
            print(f"{rows:>10,} rows, {len(split.length):,} chunks ({int((split.train_counts > 0).sum()):,} training), "
                  f"{plan.partitions} partitions x {lanes} lanes: {live} chunks at once; released between uses "
                  f"{again} at once for {reads} reads")


if __name__ == "__main__":
    main()
