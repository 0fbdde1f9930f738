"""A host batch's gather, alone: 4 KiB or huge pages under the slab, fresh or reused batch buffers.

What the in-rank feed does for every batch on the CPU (`slab.gather_rows`): the batch's rows,
from all over the slab, gathered into a batch and converted to its dtype. Side by side, one
process, the same random batches:

- slab: a mapping advised out of huge pages (`MADV_NOHUGEPAGE`: 4 KiB pages whatever the
  system's setting) against `slab.host_empty` (advised into huge pages; the line says how much of
  it the kernel gave in huge pages: none where transparent huge pages are `never`);
- batch: a fresh mapping per batch, faulted in and zeroed page by page as it is written (what a
  batch allocated in a reader thread and freed in the loop's came to whenever glibc handed out
  fresh memory, before issue 32's third round) against `slab.BatchBuffers` (one buffer reused
  once the batch is dropped).

    python benchmarks/gather.py [--chunks 13] [--batches 52] [--rounds 7]

Figures are medians over rounds of the mean ms a batch, and the minor page faults a batch, one thread.
"""
from __future__ import annotations

import argparse
import mmap
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import CHUNK_ROWS  # noqa: E402
from kmervae_core.feed.slab import BatchBuffers, gather_rows, host_empty, on_bytes  # noqa: E402
from kmervae_core.store.kmers import N_FEATURES  # noqa: E402


def anon_huge_kib() -> int:
    """This process's anonymous memory in transparent huge pages, KiB."""
    for line in Path(f"/proc/{os.getpid()}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def small_pages(nbytes: int) -> np.ndarray:
    """Anonymous memory in 4 KiB pages, whatever transparent huge pages are set to."""
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        mapping.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mapping, dtype=np.uint8)


class FreshBatches(BatchBuffers):
    """Batches each in a fresh mapping of 4 KiB pages, kept by nobody."""

    def __init__(self) -> None:
        super().__init__(keep=0)

    def take(self, rows: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        return on_bytes(small_pages(rows * width * dtype.itemsize), dtype, (rows, width))


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
    slabs = {"4 KiB pages": on_bytes(small_pages(values.nbytes), torch.float16, shape).copy_(values),
             "huge pages": host_empty(shape, torch.float16, pin=False).copy_(values)}
    huge = anon_huge_kib() - before
    print(f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}; slab {shape[0]:,} x {shape[1]:,} float16 "
          f"({values.nbytes / 2**20:,.0f} MiB); huge pages under the huge-page slab: {huge / 1024:,.0f} MiB; "
          f"{args.batches} batches of 1,024 rows, {args.rounds} rounds")
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.choice(shape[0], 1024, replace=False)) for _ in range(args.batches)]
    cases = [(slab, dtype, name, buffers) for slab in slabs for dtype in (torch.float16, torch.float32)
             for name, buffers in (("fresh", FreshBatches()), ("reused", BatchBuffers(keep=1)))]
    times: dict[tuple, list[float]] = {case[:3]: [] for case in cases}
    faults: dict[tuple, list[float]] = {case[:3]: [] for case in cases}
    for _ in range(args.rounds):
        for slab, dtype, name, buffers in cases:
            start, minflt = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for index in batches:
                gather_rows(slabs[slab], index, dtype, buffers)
            times[(slab, dtype, name)].append((time.perf_counter() - start) / len(batches) * 1e3)
            faults[(slab, dtype, name)].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt) / len(batches))
    print("| slab | batch dtype | batch buffers | ms a batch | page faults a batch |")
    print("|---|---|---|---|---|")
    for case, ms in times.items():
        slab, dtype, name = case
        print(f"| {slab} | {str(dtype).removeprefix('torch.')} | {name} | {statistics.median(ms):.2f} | "
              f"{statistics.median(faults[case]):,.0f} |")


if __name__ == "__main__":
    main()
