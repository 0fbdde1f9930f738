"""The in-rank feed against its decode ceiling, side by side in one run, on any store.

- decode ceiling: the same reader threads decoding every whole chunk of the store, and nothing
  else (no slab, no gather): what the codecs allow on this machine with these threads;
- feed: one rank's KmerStream (world size 1) from the second epoch on (steady state: threads
  started, slab allocated), consuming batches and doing nothing else, cache off.

Rounds alternate ceiling and feed; figures are means over rounds. The last line is
`feed rows/s N`, to hold against a store of one's own.

    python benchmarks/feed.py --store kmers.zarr --batch-size 1024 [--workers N] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kmervae_core import KmerStream  # noqa: E402
from kmervae_core.feed.reader import ChunkReader  # noqa: E402
from kmervae_core.feed.stream import READ_AHEAD_PER_THREAD, READ_TIMEOUT_S  # noqa: E402
from kmervae_core.limits import usable_cpus  # noqa: E402
from kmervae_core.store.contract import chunk_span, open_array, open_store  # noqa: E402


def ceiling(url: str, workers: int) -> float:
    """Rows/s of `workers` reader threads decoding every chunk whole, as far ahead as the feed reads."""
    info, array = open_store(url), open_array(url)
    reader = ChunkReader(workers, READ_TIMEOUT_S)
    in_flight = deque()
    start = time.perf_counter()
    for chunk in range(info.n_chunks):
        a, b = chunk_span(chunk, info.chunk_rows, info.rows)
        in_flight.append(reader.submit(lambda a=a, b=b: array[a:b]))
        if len(in_flight) > max(1, READ_AHEAD_PER_THREAD * workers):
            in_flight.popleft().wait(READ_TIMEOUT_S)
    while in_flight:
        in_flight.popleft().wait(READ_TIMEOUT_S)
    seconds = time.perf_counter() - start
    reader.close()
    return info.rows / seconds


def feed(stream: KmerStream, epoch: int) -> float:
    """Rows/s of one epoch of `stream`, each batch taken and dropped (on a GPU: once it is there)."""
    stream.set_epoch(epoch)
    rows, start = 0, time.perf_counter()
    for x, _ in stream:
        rows += len(x)
    if stream.device.type == "cuda":
        torch.cuda.synchronize()
    return rows / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--batch-size", type=int, default=1024, help="global batch (one rank)")
    p.add_argument("--workers", type=int, default=usable_cpus(), help="reader threads (default: the usable CPUs)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of ceiling and feed")
    p.add_argument("--device", default="cpu", help="where batches go: cpu (gathered from a host slab) or cuda "
                   "(decoded chunks copied to a GPU slab, batches gathered there)")
    args = p.parse_args()
    info = open_store(args.store)
    print(f"{platform.node()}: {os.cpu_count()} CPUs ({usable_cpus()} usable), Python {platform.python_version()}; "
          f"{args.store}: {info.rows:,} rows in {info.n_chunks} chunks of {info.chunk_rows:,}, {info.dtype}; "
          f"batch {args.batch_size}, {args.workers} reader threads, batches to {args.device}")
    ceilings, feeds = [], []
    with KmerStream(args.store, batch_size=args.batch_size, workers=args.workers, info=info,
                    device=args.device) as stream:
        feed(stream, 0)  # warm: threads started, slab allocated
        for r in range(args.rounds):
            ceilings.append(ceiling(args.store, args.workers))
            feeds.append(feed(stream, r + 1))
            print(f"  round {r + 1}: decode ceiling {ceilings[-1]:,.0f} rows/s, feed {feeds[-1]:,.0f} rows/s "
                  f"({feeds[-1] / ceilings[-1]:.2f}x)")
    c, f = float(np.mean(ceilings)), float(np.mean(feeds))
    print(f"decode ceiling rows/s {c:,.0f}")
    print(f"feed / ceiling {f / c:.2f}x")
    print(f"feed rows/s {f:,.0f}")


if __name__ == "__main__":
    main()
