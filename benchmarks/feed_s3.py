"""The in-rank feed from a store on object storage, beside the same store on local disk.

Starts moto's S3 server on 127.0.0.1 (the dev extra installs it), uploads --store to it and runs
benchmarks/feed.py's measurement (decode ceiling and feed, alternating rounds) on each copy at
each reader-thread count. moto is a Python server on this machine's own cores: the figures say
whether the feed keeps pace with its ceiling when every chunk is a request, not what a real
object store gives.

    python benchmarks/feed_s3.py --store kmers.zarr [--batch-size 1024] [--workers 2,8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.feed import measure, summarize  # noqa: E402


def serve(store: str) -> tuple[object, str]:
    """(the running server, the store's s3:// URL on it); the environment names the server."""
    import s3fs
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    fs = s3fs.S3FileSystem()
    fs.mkdir("kmervae")
    fs.put(store.rstrip("/") + "/", "kmervae/store.zarr", recursive=True)
    return server, "s3://kmervae/store.zarr"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="a complete store on local disk")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--workers", default="2,8", help="reader-thread counts, comma-separated")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    server, url = serve(args.store)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; {args.store} and its copy "
          f"{url} on moto at {os.environ['AWS_ENDPOINT_URL']}; batch {args.batch_size}")
    try:
        rows = []
        for workers in map(int, args.workers.split(",")):
            figures = []
            for where in (args.store, url):
                print(f"{where}, {workers} reader threads:")
                figures.append(summarize(*measure(where, args.batch_size, workers, args.rounds))[:3])
            rows.append((workers, *figures))
    finally:
        server.stop()
    print("| reader threads | local disk: ceiling / feed rows/s | S3 (moto, loopback): ceiling / feed rows/s |")
    print("|---|---|---|")
    for workers, (lc, lf, lr), (sc, sf, sr) in rows:
        print(f"| {workers} | {lc:,.0f} / {lf:,.0f} ({lr:.2f}x) | {sc:,.0f} / {sf:,.0f} ({sr:.2f}x) |")


if __name__ == "__main__":
    main()
