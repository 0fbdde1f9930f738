"""python -m ingest all_kmers.npy out.zarr: convert an N x 10,965 k-mer matrix, out of core,
into a chunked, compressed Zarr v3 store of the 2,772 CLR-transformed 6..1-mer columns.
python -m ingest --verify out.zarr: read every chunk of a store (after copying it) and check it."""
from __future__ import annotations

import argparse
import dataclasses
import resource
import sys

from kmervae_core.cli_help import DefaultsHelp
from kmervae_core.store.clr import SCOPE_FLAGS, SCOPES, ClrSpec
from kmervae_core.store.convert import CODEC_LEVELS, DEFAULT_CHUNK_ROWS, IngestPlan, find_bad_rows, ingest
from kmervae_core.errors import KmervaeError
from kmervae_core.limits import usable_cpus
from kmervae_core.outputs import writing
from kmervae_core.store.npy_source import open_npy
from kmervae_core.progress import Progress
from kmervae_core.store.contract import STORE_DTYPES, open_store
from kmervae_core.store.verify import verify_store
from kmervae_core.words import counted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ingest", description=__doc__,
        formatter_class=DefaultsHelp,
        epilog="Exit status: 0 done (with --verify: the store is sound), 2 bad input or store, or an OUTPUT that "
               "cannot be written (one line on stderr, no store marked complete).")
    p.add_argument("input", nargs="?", help="all_kmers.npy: float32/float64, N x 10,965 (column 0, then 7..1-mers)")
    p.add_argument("output", nargs="?", help="the Zarr store to write: a local path or an fsspec URL")
    p.add_argument("--verify", metavar="STORE", default=None,
                   help="instead of ingesting: read every chunk of STORE, check its checksums and row count, "
                        "print a summary; run it after copying a store")
    p.add_argument("--clr", choices=SCOPE_FLAGS, default="global",
                   help="CLR over all 2,772 columns (the reference, pseudocount 1e-6) or per k group (0.5/|group|)")
    p.add_argument("--pseudocount", type=float, default=None, help="override the scope's pseudocount")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per Zarr chunk and per task")
    p.add_argument("--codec", default="zstd:1",
                   help="compression, NAME[:LEVEL]: " + ", ".join(
                       f"{n} (levels {r.start}-{r.stop - 1})" if r else n for n, (_, r) in CODEC_LEVELS.items()))
    p.add_argument("--dtype", choices=STORE_DTYPES, default="float32", help="dtype of the stored CLR values")
    p.add_argument("--workers", type=int, default=usable_cpus(),
                   help="threads of the local scheduler, at least 1 (memory is about 100 MB per worker at 4,096 rows a "
                        "chunk); the default is the CPUs this job may use (CPU affinity and cgroup CPU quota). Not "
                        "train's --workers, whose 0 reads in the training loop: ingest has no such mode")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on a dask.distributed cluster (e.g. tcp://host:8786); input and output must be reachable from its workers")
    p.add_argument("--labels", default=None,
                   help="an int .npy with one label per input row (e.g. genome or bin), stored as `labels` "
                        "for label-aware evaluation during training")
    p.add_argument("--on-bad-rows", choices=("fail", "drop"), default="fail",
                   help="rows with NaN, infinite or negative frequencies: stop naming the first, or leave them out (reads the input twice)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="finish an interrupted ingest into OUTPUT, keeping its written chunks")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    args = p.parse_args(argv)
    if (args.verify is None) != (args.input is not None and args.output is not None):
        p.error("give INPUT and OUTPUT to ingest, or --verify STORE alone")
    return args


def verify(url: str, quiet: bool) -> int:
    try:
        info = open_store(url)
        bar = Progress(info.rows, "verify", quiet=quiet)
        verified = verify_store(info, bar.update)
        bar.close()
    except KmervaeError as e:
        print(f"ingest: error: {e}", file=sys.stderr)
        return 2
    if not quiet:
        print(verified.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verify is not None:
        return verify(args.verify, args.quiet)
    if args.workers < 1:
        print("ingest: error: --workers must be at least 1 (the scheduler's threads; train's --workers 0 has no "
              "counterpart here)", file=sys.stderr)
        return 2
    try:
        spec = ClrSpec(SCOPES[SCOPE_FLAGS.index(args.clr)], args.pseudocount)
    except ValueError as e:
        print(f"ingest: error: {e}", file=sys.stderr)
        return 2
    quiet = args.quiet
    try:
        source = open_npy(args.input)
        plan = IngestPlan(source=source, url=args.output, clr=spec, chunk_rows=args.chunk_rows,
                          codec=args.codec, dtype=args.dtype, on_bad_rows=args.on_bad_rows, labels=args.labels)
        if plan.on_bad_rows == "drop":
            bar = Progress(source.rows, "scan  ", quiet=quiet)
            dropped = find_bad_rows(source, plan.chunk_rows, args.scheduler, args.workers, bar.update)
            bar.close()
            plan = dataclasses.replace(plan, dropped=dropped)
            if dropped and not quiet:
                print(f"dropping {counted(len(dropped), 'row')} with NaN, infinite or negative frequencies (first: {dropped[0]})")
            if plan.rows == 0:
                raise KmervaeError(f"{args.input}: every row is bad; nothing to ingest")
        bar = Progress(plan.rows, "ingest", quiet=quiet)
        with writing(args.output):  # a full disk: one line, the store left incomplete for --resume
            summary = ingest(plan, resume=args.resume, overwrite=args.overwrite, scheduler=args.scheduler,
                             workers=args.workers, progress=bar.update)
        bar.close()
    except KmervaeError as e:
        print(f"ingest: error: {e}", file=sys.stderr)
        return 2
    if summary.chunks_written == 0 and summary.chunks_kept:
        if not quiet:
            print(f"{args.output}: already complete, with these options; nothing to do")
        return 0
    if not quiet:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        secs = max(summary.seconds, 1e-9)
        kept = f" ({counted(summary.chunks_kept, 'chunk')} kept from the interrupted run)" if summary.chunks_kept else ""
        print(f"wrote {args.output}: {counted(summary.rows, 'row')} x 2,772 ({plan.dtype}, {plan.codec}), "
              f"{summary.dropped:,} dropped{kept}\n"
              f"  in  {summary.bytes_in / 1e6:,.1f} MB read  ({summary.bytes_in / 1e6 / secs:,.0f} MB/s, "
              f"{summary.rows / secs:,.0f} rows/s)\n"
              f"  out {summary.bytes_out / 1e6:,.1f} MB stored (compression {summary.ratio:.2f}x of float32)\n"
              f"  {summary.seconds:.1f} s, peak RSS {peak:,.0f} MiB (this process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
