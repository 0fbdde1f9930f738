"""KmerStream throughput against its ceiling and against what users do today, in one run.

- ceiling: sequential whole-chunk reads of the same store in one process (decode only);
- KmerStream through make_loader at 1 and 2 workers (the second epoch, workers warm),
  reported per worker as a ratio to the ceiling, with each worker's peak RSS;
- today: DataLoader(TensorDataset(all rows in RAM), batch_size, shuffle=True).

    python benchmarks/stream.py [--rows 60000] [--batch 1024] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
import zarr
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import ingested_store  # noqa: E402
from kmervae_core import KmerStream  # noqa: E402
from kmervae_core.feed.cache import RowCache  # noqa: E402
from kmervae_core.feed.stream import make_loader  # noqa: E402


def ceiling(url: str) -> float:
    arr = zarr.open_array(store=url, path="clr", mode="r")
    c = arr.chunks[0]
    start = time.perf_counter()
    for s in range(0, arr.shape[0], c):
        arr[s:s + c]
    return arr.shape[0] / (time.perf_counter() - start)


class PeakChildRSS:
    """Samples the RSS of this process's children (the DataLoader workers) while it runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.05):
            for child in me.children(recursive=True):
                try:
                    self.peak = max(self.peak, child.memory_info().rss)
                except psutil.Error:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stream_rate(url: str, batch: int, workers: int, lanes: int, reuse: bool,
                dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(samples/s over the second epoch, peak worker RSS MiB)."""
    s = KmerStream(url, batch_size=batch, val_fraction=0.0, lanes=lanes, partitions=1, dtype=dtype)
    loader = make_loader(s, num_workers=workers, prefetch_factor=4, reuse_buffers=reuse)
    with PeakChildRSS() as rss:
        for _ in loader:  # epoch 0 starts the workers
            pass
        s.set_epoch(1)
        n, start = 0, time.perf_counter()
        for x, _ in loader:
            n += len(x)
        rate = n / (time.perf_counter() - start)
    return rate, rss.peak / 2**20


def in_ram_rate(url: str, batch: int) -> float:
    data = torch.from_numpy(zarr.open_array(store=url, path="clr", mode="r")[:])
    loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True)
    n, start = 0, time.perf_counter()
    for (x,) in loader:
        n += len(x)
    return n / (time.perf_counter() - start)


def cache_rate(url: str, batch: int) -> float:
    """Samples/s of an epoch gathered from the host-tier row cache (what later epochs get)."""
    s = KmerStream(url, batch_size=batch, val_fraction=0.0, lanes=2, partitions=1)
    plan, array = s.plan(1), zarr.open_array(store=url, path="clr", mode="r")
    cache = RowCache(s.share.train_ranges, array.shape[1], None, torch.float32, torch.device("cpu"))
    cache.fill(lambda a, b: array[a:b])
    n, start = 0, time.perf_counter()
    for x, _ in cache.batches(plan, s.share.partitions, 0, torch.device("cpu")):
        n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--codec", default="zstd:1")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lanes", type=int, default=2,
                   help="KmerStream lanes (partitions = 1, one rank); each region boundary re-reads about "
                        "one window, so a small store wants few regions (the defaults, 4 lanes x 8 partitions, "
                        "are sized for stores of thousands of chunks)")
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="kmervae-stream-"))
    try:
        url = ingested_store(work, args.rows, args.chunk_rows, args.codec)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"torch {torch.__version__}, zarr {zarr.__version__}; store {args.rows:,} rows, "
              f"{args.chunk_rows}-row chunks, {args.codec}; global batch {args.batch}, {args.lanes} lanes")
        chunk_mib = args.chunk_rows * 2772 * 4 / 2**20
        ceil = ceiling(url)
        print(f"ceiling (sequential whole-chunk reads, 1 process): {ceil:,.0f} samples/s")
        for w in args.workers:
            for reuse in (False, True):
                rate, rss = stream_rate(url, args.batch, w, args.lanes, reuse)
                buffer = (-(-args.lanes // w) + 1) * chunk_mib  # windows (of one chunk) kept per worker
                how = "ring of reused buffers (the trainer's setting)" if reuse else "a fresh buffer per batch"
                print(f"KmerStream, {w} worker(s), {how}: {rate:,.0f} samples/s = {rate / w / ceil:.2f}x ceiling "
                      f"per worker; peak worker RSS {rss:,.0f} MiB (shuffle buffer <= {buffer:,.0f} MiB)")
        half = ingested_store(work, args.rows, args.chunk_rows, "lz4", "float16")
        half_ceil, w = ceiling(half), args.workers[0]
        for dtype in (torch.float32, torch.float16):
            rate, _ = stream_rate(half, args.batch, w, args.lanes, True, dtype)
            print(f"float16 lz4 store (ceiling {half_ceil:,.0f} samples/s), KmerStream, {w} worker(s), ring, "
                  f"{str(dtype).removeprefix('torch.')} batches: {rate:,.0f} samples/s = {rate / w / half_ceil:.2f}x "
                  "ceiling per worker")
        cached = cache_rate(url, args.batch)
        print(f"row cache, host tier (--cache host, epochs after the first): {cached:,.0f} samples/s")
        today = in_ram_rate(url, args.batch)
        print(f"today (shuffled DataLoader over an in-RAM TensorDataset): {today:,.0f} samples/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
