"""Ingest throughput and memory against its ceiling, measured side by side in one run.

For each input size: (a) the ceiling: read the 2,772 used columns of every row and compute the
CLR on the same number of threads, writing nothing; (b) `python -m ingest` as users run it, in
a child process whose peak RSS is read from outside, once per codec (`none` shows the pipeline's
own overhead; the gap between it and zstd is the compressor's CPU time). Prints input MB/s, useful MB/s, peak RSS,
compression ratio and the ratio (b)/(a). Also float16 against float32: size and max CLR error.

    python benchmarks/ingest.py [--rows 20000 60000] [--workers 2] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 4096  # the benchmarks' stores: one size, so that a store built by one script is reused by the others
sys.path.insert(0, str(ROOT))

from kmervae_core.atomic import atomic_file  # noqa: E402
from kmervae_core.errors import StoreError  # noqa: E402
from kmervae_core.store.contract import ATTRS_KEY, CLR, COLUMN0, open_store  # noqa: E402
from kmervae_core.store.convert import IngestPlan, ingest, transform_chunk  # noqa: E402
from kmervae_core.store.kmers import N_FEATURES, SOURCE_COLUMNS  # noqa: E402
from kmervae_core.store.npy_source import open_npy  # noqa: E402
from kmervae_core.store.synth import write_sample  # noqa: E402


def make_input(path: Path, rows: int, template: np.ndarray) -> None:
    """A large input made of copies of a realistic synthetic sample (so it compresses like one),
    written block by block (never whole in memory) and in place only once complete."""
    with atomic_file(path) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (rows, SOURCE_COLUMNS)})
        for s in range(0, rows, len(template)):
            f.write(template[: min(len(template), rows - s)].tobytes())


def ingested_store(work: Path, rows: int, chunk_rows: int, codec: str = "zstd:1", dtype: str = "float32") -> str:
    """A store of `rows` rows ingested from copies of a 2,000-contig synthetic sample."""
    template = work / "template.npy"
    write_sample(str(template), 2000, seed=0)
    npy = work / "input.npy"
    make_input(npy, rows, np.load(template))
    url = str(work / f"ingested-{codec.replace(':', '')}-{dtype}.zarr")
    shutil.rmtree(url, ignore_errors=True)  # a build cut off earlier may have left it incomplete
    ingest(IngestPlan(source=open_npy(str(npy)), url=url, chunk_rows=chunk_rows, codec=codec, dtype=dtype),
           workers=os.cpu_count() or 2)
    npy.unlink()
    return url


def build_store(work: Path, rows: int, chunk_rows: int, codec: str = "zstd:1", dtype: str = "float32") -> str:
    """A store of `rows` rows in `work`: a template of up to 8 chunks ingested, its chunks
    written again as often as needed (fast for large stores). A complete one made earlier in
    `work` with the same rows, chunks, codec and dtype is reused, so that several benchmarks of
    one session (benchmarks/gpu_check.sh) build each store once."""
    url = str(work / f"bench-{codec.replace(':', '')}-{dtype}-{rows}x{chunk_rows}.zarr")
    try:
        if open_store(url).rows == rows:
            return url
    except StoreError:
        pass
    base_rows = min(rows, 8 * chunk_rows)
    base = ingested_store(work, base_rows, chunk_rows, codec, dtype)
    if rows == base_rows:
        shutil.rmtree(url, ignore_errors=True)
        shutil.move(base, url)
        return url
    src = zarr.open_group(base, mode="r")
    dst = zarr.open_group(url, mode="w")
    for name, shape in ((CLR, (rows, src[CLR].shape[1])), (COLUMN0, (rows,))):
        dst.create_array(name, shape=shape, chunks=(chunk_rows, *shape[1:]), dtype=src[name].dtype,
                         compressors=src[name].compressors, fill_value=0)
    blocks = [(src[CLR][s:s + chunk_rows], src[COLUMN0][s:s + chunk_rows]) for s in range(0, base_rows, chunk_rows)]

    def write(c: int) -> None:
        clr, col0 = blocks[c % len(blocks)]
        n = min(chunk_rows, rows - c * chunk_rows)
        dst[CLR][c * chunk_rows: c * chunk_rows + n] = clr[:n]
        dst[COLUMN0][c * chunk_rows: c * chunk_rows + n] = col0[:n]

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, range(-(-rows // chunk_rows))))
    dst.attrs[ATTRS_KEY] = {**src.attrs[ATTRS_KEY], "rows": rows}  # last: the store is complete from here on
    shutil.rmtree(base, ignore_errors=True)
    return url


def ceiling(npy: Path, workers: int) -> float:
    """Seconds to read the used columns of every row and compute CLR, writing nothing."""
    plan = IngestPlan(source=open_npy(str(npy)), url="unused")
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda c: transform_chunk(plan, c), range(plan.n_chunks)):
            pass
    return time.perf_counter() - start


def run_ingest(npy: Path, out: Path, workers: int, *extra: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of `python -m ingest` in a child process."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter();"
             "subprocess.run(sys.argv[1:], check=True); print(time.perf_counter() - t,"
             " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "ingest", str(npy), str(out),
                           "--workers", str(workers), "--quiet", "--overwrite", *extra],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    secs, rss = proc.stdout.split()[-2:]
    return float(secs), int(rss) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[20000, 60000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--codecs", nargs="+", default=["zstd:1", "none"],
                   help="codecs to ingest with; `none` isolates the pipeline's own overhead")
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="kmervae-bench-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"zarr {zarr.__version__}, workers {args.workers}")
    try:
        template_path = work / "template.npy"
        write_sample(str(template_path), 2000, seed=0)
        template = np.load(template_path)
        print(f"{'rows':>8} {'input MB':>9} {'codec':>7} {'ceiling s':>9} {'ingest s':>9} {'in MB/s':>8}"
              f" {'useful MB/s':>11} {'peak RSS MiB':>12} {'compr':>6} {'ratio':>6}")
        for rows in args.rows:
            npy, out = work / f"in-{rows}.npy", work / f"out-{rows}.zarr"
            make_input(npy, rows, template)
            size = npy.stat().st_size
            useful = rows * (N_FEATURES + 1) * 4
            for codec in args.codecs:
                ceil_s = ceiling(npy, args.workers)
                secs, rss = run_ingest(npy, out, args.workers, "--codec", codec)
                stored = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
                print(f"{rows:>8,} {size / 1e6:>9,.0f} {codec:>7} {ceil_s:>9.2f} {secs:>9.2f}"
                      f" {size / 1e6 / secs:>8,.0f} {useful / 1e6 / secs:>11,.0f} {rss:>12,.0f}"
                      f" {rows * N_FEATURES * 4 / stored:>6.2f} {ceil_s / secs:>6.2f}")
            if rows == args.rows[-1]:
                run_ingest(npy, out, args.workers, "--codec", args.codecs[0])
                stored = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
                h_out = work / "half.zarr"
                secs16, _ = run_ingest(npy, h_out, args.workers, "--dtype", "float16", "--codec", args.codecs[0])
                h16 = zarr.open_group(str(h_out), mode="r")["clr"][: len(template)].astype(np.float64)
                f32 = zarr.open_group(str(out), mode="r")["clr"][: len(template)].astype(np.float64)
                h_stored = sum(f.stat().st_size for f in h_out.rglob("*") if f.is_file())
                print(f"float16 store ({args.codecs[0]}): {h_stored / 1e6:,.1f} MB vs float32 {stored / 1e6:,.1f} MB "
                      f"(ratio {h_stored / stored:.2f}), {secs16:.2f} s, max |CLR error| {np.abs(h16 - f32).max():.4f}")
            shutil.rmtree(out, ignore_errors=True)
            npy.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"(this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB)")


if __name__ == "__main__":
    main()
