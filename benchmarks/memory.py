"""How much memory one training process (with its reader threads) takes, to size a job's --mem.

Runs `python -m train` on a store of --rows rows (made like benchmarks/ingest.py's) in a new,
unlimited child of this process's memory cgroup where one can be made (root, a writable v1 or
v2 memory controller), and reports each process's peak RSS and USS (sampled every 0.25 s) and
the cgroup's peak anonymous + shared memory: what a memory limit must hold, page cache aside;
then the rank's RSS and anonymous memory (/proc/PID/smaps_rollup) over time, and the figure
`python -m train` predicted for its feed at start (its `memory:` line), to set beside them.

    python benchmarks/memory.py [--rows 60800 | --store S.zarr] [--dir /tmp] [--limit-mib 1434] -- --epochs 2 --cache none

--limit-mib puts a memory limit on that cgroup (memory.max, v2; memory.limit_in_bytes, v1): whether
the run finishes within it. --latent-read trains nothing: it reads the store's latent sample as
the trainer does at start (up to 64 chunks through zarr, --at-once of them decoded at once: the
trainer's 2 unless set, 0 for zarr's default 10) and reports this process's RSS before, at its
peak during the read and after.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import ingested_store  # noqa: E402
from kmervae_core.config import TrainConfig  # noqa: E402
from kmervae_core.evaluation.embedding import LATENT_READ_AT_ONCE, sample_rows  # noqa: E402
from kmervae_core.limits import find_cgroup, return_large_blocks  # noqa: E402
from kmervae_core.store.contract import open_store, read_rows  # noqa: E402


def child_cgroup() -> Path | None:
    group = find_cgroup("memory")
    if group is None:
        return None
    path = group.path / f"kmervae-memory-{os.getpid()}"
    try:
        path.mkdir()
    except OSError:
        return None
    return path


def role(p: psutil.Process, rank: int) -> str:
    return "rank" if p.pid == rank else " ".join(p.cmdline())[:40]


def cgroup_anon_shmem(path: Path) -> int:
    stat = dict(line.split() for line in (path / "memory.stat").read_text().splitlines())
    if "total_rss" in stat:  # v1
        return int(stat["total_rss"]) + int(stat["total_shmem"])
    return int(stat["anon"]) + int(stat["shmem"])


def rollup(pid: int) -> tuple[int, int] | None:
    """(RSS, anonymous) bytes of a process, from /proc/PID/smaps_rollup; None once it has gone."""
    try:
        fields = dict(line.split()[:2] for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except (OSError, ValueError):
        return None
    return int(fields["Rss:"]) * 1024, int(fields["Anonymous:"]) * 1024


def latent_read(url: str, at_once: int) -> None:
    """RSS of this process before, at the peak of (sampled every 10 ms) and after reading the
    latent sample of `url` as the trainer does (glibc's threshold set as `python -m train` sets it)."""
    return_large_blocks()
    info, me = open_store(url), os.getpid()
    defaults = TrainConfig()
    rows = sample_rows(info.rows, info.chunk_rows, defaults.latent_sample, defaults.seed)
    before, peak, done = rollup(me)[0], [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rollup(me)[0])
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    x = np.asarray(read_rows(url, info.clr_array, rows, at_once=at_once), dtype=np.float32)
    seconds = time.monotonic() - start
    done.set()
    sampler.join()
    print(f"latent sample: {len(rows):,} rows from {len(np.unique(rows // info.chunk_rows))} chunks ({x.nbytes / 2**20:,.0f} "
          f"MiB), {at_once or 'zarr default'} at once, {seconds:.1f} s; RSS {before / 2**20:,.0f} MiB before, {peak[0] / 2**20:,.0f} at the peak, {rollup(me)[0] / 2**20:,.0f} after")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60800)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--store", help="an existing store to train on (instead of one of --rows rows made here)")
    p.add_argument("--limit-mib", type=int, default=0, help="memory limit of the run's cgroup (0: none)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between the timeline's lines")
    p.add_argument("train_args", nargs="*", help="after --: arguments for python -m train (not --data, --out)")
    p.add_argument("--latent-read", action="store_true", help="only read the latent sample of --store")
    p.add_argument("--at-once", type=int, default=LATENT_READ_AT_ONCE, help="chunks the latent read decodes at once")
    args = p.parse_args()
    if args.latent_read:
        latent_read(args.store, args.at_once)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        store = args.store or ingested_store(Path(work), args.rows, 4096)
        cgroup = child_cgroup()
        if cgroup and args.limit_mib:
            limit = cgroup / ("memory.max" if (cgroup / "memory.max").exists() else "memory.limit_in_bytes")
            limit.write_text(str(args.limit_mib * 2**20))
        enter = (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None
        cmd = [sys.executable, "-m", "train", "--data", store, "--out", f"{work}/run", "--metrics-port", "0",
               *args.train_args]
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=enter)
        peaks: dict[int, tuple[str, int, int]] = {}
        group_peak, start = 0, time.monotonic()
        rank = psutil.Process(proc.pid)
        timeline: list[tuple[float, int, int]] = []  # (seconds, rank RSS, rank anonymous)
        while proc.poll() is None:
            try:
                family = [rank, *rank.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for child in family:
                try:
                    mem = child.memory_full_info()
                    name, rss, uss = peaks.get(child.pid, (role(child, rank.pid), 0, 0))
                    peaks[child.pid] = (name, max(rss, mem.rss), max(uss, mem.uss))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            if cgroup:
                group_peak = max(group_peak, cgroup_anon_shmem(cgroup))
            now = time.monotonic() - start
            if not timeline or now - timeline[-1][0] >= args.every:
                if sample := rollup(proc.pid):
                    timeline.append((now, *sample))
            time.sleep(0.25)
        output = proc.stdout.read()
        if cgroup:
            for _ in range(100):  # the last processes leave it a moment after the rank exits
                try:
                    cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{args.store or format(args.rows, ',') + ' rows'}; train {' '.join(args.train_args)} -> exit {proc.returncode}; "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\n".join(line[:400] for line in output.splitlines() if line.startswith(("cache:", "memory:", "Epoch", "train:"))))
    for t, rss, anon in timeline:
        print(f"  {t:6.0f} s  rank RSS {rss / 2**20:7,.0f} MiB  anonymous {anon / 2**20:7,.0f} MiB")
    for pid, (name, rss, uss) in sorted(peaks.items()):
        print(f"  {name:16s} peak RSS {rss / 2**20:7,.0f} MiB  USS {uss / 2**20:7,.0f} MiB")
    if cgroup:
        print(f"  cgroup peak anonymous + shared memory: {group_peak / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
