"""A host batch's gather, alone: 4 KiB or huge pages under the slab, fresh or reused batch buffers.

What the in-rank feed does for every batch on the CPU (`slab.gather_rows`): the batch's rows,
from all over the slab, gathered into a batch and converted to its dtype. Side by side, one
process, the same random batches:

- slab: `torch.empty` (4 KiB pages) against `slab.host_empty` (advised into huge pages; the
  line says how much of it the kernel gave in huge pages: none where transparent huge pages are
  `never`);
- batch: a fresh `torch.empty` per batch (what the feed did before issue 32's third round)
  against `slab.BatchBuffers` (one buffer reused once the batch is dropped).

    python benchmarks/gather.py [--chunks 13] [--batches 52] [--rounds 7]

Figures are medians over rounds of the mean ms a batch, one thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import CHUNK_ROWS  # noqa: E402
from kmervae_core.feed.slab import BatchBuffers, gather_rows, host_empty  # noqa: E402
from kmervae_core.store.kmers import N_FEATURES  # noqa: E402


def anon_huge_kib() -> int:
    """This process's anonymous memory in transparent huge pages, KiB."""
    for line in Path(f"/proc/{os.getpid()}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


class FreshBatches:
    """What gather_rows took its batches from before BatchBuffers: a fresh tensor each."""

    def take(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty((rows, width), dtype=dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=13, help="slab slots of 4,096 rows (13: the sample store's rank share)")
    p.add_argument("--batches", type=int, default=52, help="batches of 1,024 random slab rows a round")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    shape = (args.chunks * CHUNK_ROWS, N_FEATURES)
    values = torch.randn(shape).to(torch.float16)
    before = anon_huge_kib()
    slabs = {"4 KiB pages": values, "huge pages": host_empty(shape, torch.float16, pin=False).copy_(values)}
    huge = anon_huge_kib() - before
    print(f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}; slab {shape[0]:,} x {shape[1]:,} float16 "
          f"({values.nbytes / 2**20:,.0f} MiB); huge pages under the huge-page slab: {huge / 1024:,.0f} MiB; "
          f"{args.batches} batches of 1,024 rows, {args.rounds} rounds")
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.choice(shape[0], 1024, replace=False)) for _ in range(args.batches)]
    cases = [(slab, dtype, name, buffers) for slab in slabs for dtype in (torch.float16, torch.float32)
             for name, buffers in (("fresh", FreshBatches()), ("reused", BatchBuffers(keep=1)))]
    times: dict[tuple, list[float]] = {case[:3]: [] for case in cases}
    for _ in range(args.rounds):
        for slab, dtype, name, buffers in cases:
            start = time.perf_counter()
            for index in batches:
                gather_rows(slabs[slab], index, dtype, buffers)
            times[(slab, dtype, name)].append((time.perf_counter() - start) / len(batches) * 1e3)
    print("| slab | batch dtype | batch buffers | ms a batch |")
    print("|---|---|---|---|")
    for (slab, dtype, name), ms in times.items():
        print(f"| {slab} | {str(dtype).removeprefix('torch.')} | {name} | {statistics.median(ms):.2f} |")


if __name__ == "__main__":
    main()
