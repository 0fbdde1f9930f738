"""The measuring half of benchmarks/scale.sh (a run larger than memory, issue 33): the disk-space
check, the tiled input, one timed step and the closing table. Run from the repository root:

    python -m benchmarks.scale space DIR ROWS --sample-rows N    # exit 2, one line, if DIR's disk is too small
    python -m benchmarks.scale tile SAMPLE.npy OUT.npy ROWS       # OUT: SAMPLE's rows repeated, streamed
    python -m benchmarks.scale step [--drop-caches] FIGURES NAME INPUT LOG -- CMD ...
    python -m benchmarks.scale table FIGURES

A step's figures come from the kernel's accounting of the command's own process tree (os.wait4):
peak RSS (ru_maxrss) and the bytes it read from and wrote to the block device (ru_inblock and
ru_oublock, in 512-byte units), so other processes on a shared machine do not count, and page-cache
hits are not counted as disk reads: "disk read" below the step's input size is what the cache served.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.ingest import make_input
from kmervae_core.store.kmers import N_FEATURES, SOURCE_COLUMNS

ROW_BYTES = SOURCE_COLUMNS * 4  # a float32 all_kmers.npy row
STORE_ROW_BYTES = N_FEATURES * 4  # a float32 store row, uncompressed: an upper bound of the store
LATENT_ROW_BYTES = 2 * 64 * 4  # a latents row: z_mean and z_log_var of up to 64 float32 units
RUN_BYTES = 1 << 30  # the small model's checkpoints, exports and logs, with room to spare
DROP_CACHES = "/proc/sys/vm/drop_caches"


def required_bytes(rows: int, sample_rows: int) -> int:
    """Disk the run needs at its fullest: sample, tiled npy, store and latents (each bounded by its
    float32 size uncompressed) and the run folder."""
    return (min(rows, sample_rows) + rows) * ROW_BYTES + rows * (STORE_ROW_BYTES + LATENT_ROW_BYTES) + RUN_BYTES


def space(folder: str, rows: int, sample_rows: int) -> int:
    """0 if the disk holding `folder` (or its nearest existing parent) has room, else one line and 2."""
    if rows < 1 or sample_rows < 1:
        return fail("ROWS and SAMPLE_ROWS must be at least 1")
    probe = Path(folder).absolute()
    while not probe.exists():
        probe = probe.parent
    free, need = shutil.disk_usage(probe).free, required_bytes(rows, sample_rows)
    if free < need:
        return fail(f"{probe}: {free / 1e9:,.1f} GB free, {rows:,} rows need {need / 1e9:,.1f} GB "
                    f"(npy {rows * ROW_BYTES / 1e9:,.1f} GB + store + run); set SCALE_DIR to a larger disk or use fewer ROWS")
    return 0


def fail(message: str) -> int:
    """One line on stderr, as every refusal of the script reads; the exit status for bad input."""
    print(f"scale.sh: error: {message}", file=sys.stderr)
    return 2


def tile(sample: str, out: str, rows: int) -> None:
    """OUT.npy of `rows` rows, the sample's rows over and over, written block by block."""
    make_input(Path(out), rows, np.load(sample))


def drop_caches() -> str:
    """Drop the page cache (clean pages only) so a step reads from the disk; says whether it could."""
    os.sync()
    try:
        Path(DROP_CACHES).write_text("3\n")
        return "dropped"
    except OSError as e:
        return f"kept ({e.strerror.lower()})"


def step(figures: str, name: str, input_path: str, log: str, cmd: list[str], drop: bool) -> int:
    """Run `cmd` with its output in `log`, append its figures to `figures` (one JSON line)."""
    cache = drop_caches() if drop else "kept"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # its own rusage: Popen.wait() gives none
    wall = time.perf_counter() - start
    code = proc.returncode = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = Path(log).read_text(errors="replace").strip().splitlines()[-5:]
        print(f"scale.sh: error: {name} exited with status {code}; the end of {log}:", *tail, sep="\n  ", file=sys.stderr)
        return code if code > 0 else 1
    record = {"step": name, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
              "input_bytes": size_of(input_path), "read_bytes": usage.ru_inblock * 512,
              "written_bytes": usage.ru_oublock * 512, "cpu_s": usage.ru_utime + usage.ru_stime,
              "load_before": load_before, "load_after": os.getloadavg()[0], "page_cache": cache}
    with open(figures, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"{name}: {wall:,.1f} s, peak RSS {record['peak_rss_mib']:,.0f} MiB, "
          f"read {record['read_bytes'] / 1e9:,.2f} GB from disk", flush=True)
    return 0


def size_of(path: str) -> int:
    """Bytes of a file, or of every file under a folder (a Zarr store)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def mem_total() -> int:
    """This machine's RAM in bytes, from /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def cpu_model() -> str:
    """The CPU's name, for the table's machine line."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def table(figures: str) -> str:
    """The closing report: the machine, the sizes against RAM, one line per step."""
    records = [json.loads(line) for line in Path(figures).read_text().splitlines()]
    ram, npy = mem_total(), next(r["input_bytes"] for r in records if r["step"] == "ingest")
    lines = [f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {ram / 2**30:,.1f} GiB RAM; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average now {os.getloadavg()[0]:.2f}",
             f"input all_kmers.npy {npy / 1e9:,.2f} GB = {npy / ram:.2f} x RAM",
             "",
             "| step | wall s | CPU s | peak RSS MiB | input GB | read from disk GB | disk read MB/s | written GB "
             "| page cache before | load before/after |",
             "|---|--:|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in records:
        lines.append(f"| {r['step']} | {r['wall_s']:,.1f} | {r['cpu_s']:,.1f} | {r['peak_rss_mib']:,.0f} "
                     f"| {r['input_bytes'] / 1e9:,.2f} | {r['read_bytes'] / 1e9:,.2f} "
                     f"| {r['read_bytes'] / 1e6 / r['wall_s']:,.0f} | {r['written_bytes'] / 1e9:,.2f} "
                     f"| {r['page_cache']} | {r['load_before']:.1f} / {r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("space")
    s.add_argument("folder")
    s.add_argument("rows")
    s.add_argument("--sample-rows", default="5000")
    t = sub.add_parser("tile")
    t.add_argument("sample")
    t.add_argument("out")
    t.add_argument("rows", type=int)
    r = sub.add_parser("step")
    r.add_argument("figures")
    r.add_argument("name")
    r.add_argument("input")
    r.add_argument("log")
    r.add_argument("--drop-caches", action="store_true")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    b = sub.add_parser("table")
    b.add_argument("figures")
    args = p.parse_args(argv)
    if args.command == "space":
        if not (args.rows.isdigit() and args.sample_rows.isdigit()):
            return fail(f"ROWS and SAMPLE_ROWS must be whole numbers, not '{args.rows}' and '{args.sample_rows}'")
        return space(args.folder, int(args.rows), int(args.sample_rows))
    if args.command == "tile":
        tile(args.sample, args.out, args.rows)
        return 0
    if args.command == "step":
        return step(args.figures, args.name, args.input, args.log, args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd,
                    args.drop_caches)
    print(table(args.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
