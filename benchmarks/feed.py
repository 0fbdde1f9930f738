"""The in-rank feed against its decode ceiling, side by side in one run, on any store.

- decode ceiling: the same reader threads decoding every whole chunk of the store with the
  feed's own decode call (`KmerStream.read_chunk`, into reused buffers allocated as the slab's
  are, `slab.host_empty`), and nothing else (no
  plan, no slab bookkeeping, no gather): what the codecs allow on this machine with these threads;
- feed: one rank's KmerStream (world size 1) from the second epoch on (steady state: threads
  started), consuming batches and doing nothing else, cache off.

Rounds alternate ceiling and feed; figures are medians over rounds (a round's ratio swings by
+-0.1 on a 2-core VM even when idle), with the rounds' range. Beside the rows/s each round prints
the process's CPU microseconds a row for the ceiling's pass (every chunk) and the feed's epoch
(the training rows): their ratio says how much work the feed adds to the decoding (plan,
gathers, conversion), which on cores the decoding keeps busy bounds the wall-clock ratio. `--scaling` first prints the ceiling at 1,
2, 4, 8 and 16 threads and at --workers (do the codecs decode in parallel here?), each up to the
usable CPUs, on the first 64 chunks; `--rounds 0` stops there. The last line is `feed rows/s N`, to hold against a store
of one's own.

    python benchmarks/feed.py --store kmers.zarr --batch-size 1024 [--workers N|auto] [--rounds 3]
        [--dtype float32|store] [--scaling]
    python benchmarks/feed.py --codec lz4 --store-dtype float16 --batch-size 1024   # the sample store

Without --store it makes the sample store docs/benchmarks.md reports (61,440 rows, copies of a
2,000-contig synthetic sample, 4,096-row chunks) with --codec and --store-dtype, in a temporary
folder it removes afterwards; with --stores-dir DIR it uses benchmarks/ingest.py's build_store of --rows
rows there (made if missing, kept).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import CHUNK_ROWS, build_store, ingested_store  # noqa: E402
from kmervae_core import KmerStream  # noqa: E402
from kmervae_core.feed.reader import ChunkReader  # noqa: E402
from kmervae_core.feed.slab import host_empty  # noqa: E402
from kmervae_core.feed.stream import READ_AHEAD_PER_THREAD, READ_TIMEOUT_S  # noqa: E402
from kmervae_core.limits import auto_workers, usable_cpus  # noqa: E402
from kmervae_core.store.contract import chunk_span  # noqa: E402


BUFFERS: dict[tuple, list[torch.Tensor]] = {}  # the ceiling's chunk buffers, made and touched once
SCALING_THREADS = (1, 2, 4, 8, 16)  # --scaling's thread counts (issue 32), besides --workers
SCALING_CHUNKS = 64  # --scaling decodes at most this many chunks per thread count (one thread is slow)


def reader_threads(value: str) -> int:
    """A --workers value: a count, or auto (kmervae_core.limits.auto_workers, as python -m train)."""
    return auto_workers() if value == "auto" else int(value)


def ceiling(stream: KmerStream, workers: int, chunks: int | None = None) -> float:
    """Rows/s of `workers` reader threads decoding every chunk (or the first `chunks`) whole with
    the feed's decode call, as far ahead as the feed reads, each into a buffer reused once its
    read is waited for (made before the clock starts, as the feed's slab is from its second epoch
    on)."""
    info, ahead = stream.info, max(1, READ_AHEAD_PER_THREAD * workers)
    n_chunks = info.n_chunks if chunks is None else min(chunks, info.n_chunks)
    shape = (info.chunk_rows, stream.width)
    buffers = BUFFERS.setdefault((shape, stream.store_dtype, ahead),
                                 [host_empty(shape, stream.store_dtype, pin=False).zero_() for _ in range(ahead + 1)])
    reader = ChunkReader(workers, READ_TIMEOUT_S)
    in_flight: deque = deque()
    start = time.perf_counter()
    rows = 0
    for chunk in range(n_chunks):
        a, b = chunk_span(chunk, info.chunk_rows, info.rows)
        rows += b - a
        target = buffers[chunk % len(buffers)][:b - a]
        in_flight.append(reader.submit(lambda c=chunk, t=target: stream.read_chunk(c, t)))
        if len(in_flight) > ahead:
            in_flight.popleft().wait(READ_TIMEOUT_S)
    while in_flight:
        in_flight.popleft().wait(READ_TIMEOUT_S)
    seconds = time.perf_counter() - start
    reader.close()
    return rows / seconds


def feed(stream: KmerStream, epoch: int) -> float:
    """Rows/s of one epoch of `stream`, each batch taken and dropped (on a GPU: once it is there)."""
    stream.set_epoch(epoch)
    rows, start = 0, time.perf_counter()
    for x, _ in stream:
        rows += len(x)
    if stream.device.type == "cuda":
        torch.cuda.synchronize()
    return rows / (time.perf_counter() - start)


def measure(store: str, batch_size: int, workers: int, rounds: int, device: str = "cpu",
            dtype: torch.dtype = torch.float32, log=print) -> tuple[list[float], list[float]]:
    """(decode ceiling, feed) in rows/s, a figure per round, the rounds alternating."""
    ceilings, feeds = [], []
    with KmerStream(store, batch_size=batch_size, workers=workers, device=device, dtype=dtype) as stream:
        feed(stream, 0)  # warm: threads started, page cache and allocator warm
        rows_ceiling, rows_feed = stream.info.rows, len(stream) * stream.rank_rows.local_batch
        for r in range(rounds):
            cpu = time.process_time()
            ceilings.append(ceiling(stream, workers))
            cpu_ceiling, cpu = (time.process_time() - cpu) / rows_ceiling * 1e6, time.process_time()
            feeds.append(feed(stream, r + 1))
            cpu_feed = (time.process_time() - cpu) / rows_feed * 1e6
            log(f"  round {r + 1}: decode ceiling {ceilings[-1]:,.0f} rows/s, feed {feeds[-1]:,.0f} rows/s "
                f"({feeds[-1] / ceilings[-1]:.2f}x); CPU us a row: ceiling {cpu_ceiling:.2f}, feed {cpu_feed:.2f} "
                f"({cpu_ceiling / cpu_feed:.2f}x)")
    return ceilings, feeds


def summarize(ceilings: list[float], feeds: list[float]) -> tuple[float, float, float, float, float]:
    """(ceiling, feed, feed / ceiling, the lowest and highest round's ratio): medians over rounds,
    the ratio the median of the rounds' ratios; one rule for every report of these figures."""
    ratios = [f / c for c, f in zip(ceilings, feeds)]
    return float(np.median(ceilings)), float(np.median(feeds)), float(np.median(ratios)), min(ratios), max(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="a complete store (a path or an fsspec URL); none: the sample store")
    p.add_argument("--codec", default="zstd:1", help="the sample store's codec (as python -m ingest --codec)")
    p.add_argument("--store-dtype", default="float32", choices=("float32", "float16"), help="the sample store's dtype")
    p.add_argument("--rows", type=int, default=61440, help="the sample store's rows")
    p.add_argument("--batch-size", type=int, default=1024, help="global batch (one rank)")
    p.add_argument("--workers", type=reader_threads, default=usable_cpus(),
                   help="reader threads, or auto (as python -m train; default: the usable CPUs)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of ceiling and feed (0: none)")
    p.add_argument("--device", default="cpu", help="where batches go: cpu (gathered from a host slab) or cuda "
                   "(decoded chunks copied to a GPU slab, batches gathered there)")
    p.add_argument("--dtype", choices=("float32", "store"), default="float32",
                   help="what batches hold: float32 (what the trainer's step takes) or the store's dtype "
                        "(float16 for a float16 store: what a step converting on the GPU could take)")
    p.add_argument("--scaling", action="store_true", help="first print the decode ceiling at 1, 2, 4, 8, 16 threads")
    p.add_argument("--stores-dir", help="without --store: benchmarks/ingest.py's build_store of --rows rows here (made if missing)")
    args = p.parse_args()
    if args.store is None and args.stores_dir:
        args.store = build_store(Path(args.stores_dir), args.rows, CHUNK_ROWS, args.codec, args.store_dtype)
    if args.store is None:
        with tempfile.TemporaryDirectory(prefix="kmervae-feed-") as work:
            args.store = ingested_store(Path(work), args.rows, CHUNK_ROWS, args.codec, args.store_dtype)
            report(args)
    else:
        report(args)


def report(args: argparse.Namespace) -> None:
    with KmerStream(args.store, batch_size=args.batch_size, workers=args.workers) as probe:
        info = probe.info
        dtype = probe.store_dtype if args.dtype == "store" else torch.float32
        print(f"{platform.node()}: {os.cpu_count()} CPUs ({usable_cpus()} usable, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}), Python "
              f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} intra-op threads); "
              f"{args.store}: {info.rows:,} rows in {info.n_chunks} chunks of {info.chunk_rows:,}, {info.dtype}; "
              f"batch {args.batch_size}, {args.workers} reader threads, {str(dtype).removeprefix('torch.')} "
              f"batches to {args.device}")
        if args.scaling:
            usable, chunks = usable_cpus(), min(SCALING_CHUNKS, info.n_chunks)
            ceiling(probe, min(max(1, args.workers), usable), chunks)  # warm: page cache, allocator
            print(f"  (the first {chunks} chunks each)")
            for n in sorted(set(SCALING_THREADS) | {max(1, args.workers)}):
                label = f"  decode ceiling, {n} thread{'s' if n > 1 else ''}:"
                print(f"{label} {ceiling(probe, n, chunks):,.0f} rows/s" if n <= usable else
                      f"{label} not measured ({usable} usable CPUs)", flush=True)
    if not args.rounds:
        return
    c, f, ratio, low, high = summarize(*measure(args.store, args.batch_size, args.workers, args.rounds, args.device, dtype))
    print(f"decode ceiling rows/s {c:,.0f}")
    print(f"feed / ceiling {ratio:.2f}x (rounds {low:.2f}-{high:.2f}x)")
    print(f"feed rows/s {f:,.0f}")


if __name__ == "__main__":
    main()
