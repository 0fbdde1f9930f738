"""One second of training from a streamed store under torch.profiler, and how much of the
feed's host-to-device copying overlaps the step's kernels (issue 32 part 7).

The trainer (the captured step where CUDA allows it unless --cuda-graphs off, the trainer's epoch
plan, --cache none)
streams a store: on a GPU its reader threads decode chunks into pinned staging and copy each to
the GPU slab on a copy stream of its own (kmervae_core/feed/slab.py, CopyEngine), while the
compute stream runs the step and the gathers. After --warmup steps (the capture among them) the
profiler records every step taken in the next --seconds. From the trace's GPU events (each
kernel and memcpy with its stream, start and duration):

  compute stream   the stream with the most kernel time
  copies           host-to-device memcpys on every other stream (the copy stream)
  overlap          the share of the copies' time (the union of their intervals) during which a
                   compute-stream kernel runs. Copies issued on the compute stream (the review's
                   finding a) give none: a stream runs one thing at a time.

Target (issue 32: "a profile in which the copies' overlap shows"): the copies run on a stream
of their own and at least 1% of their time overlaps compute kernels (PASS, else MISS). A CPU
has no CUDA streams: its profile holds CPU operators only, and the summary says so.

The trace (chrome trace JSON: GPU events and CPU operators, names cut to 100 characters; fewer
events where it would exceed 15 MiB gzipped) goes to --trace, gzipped: ui.perfetto.dev or
chrome://tracing opens it.

    python benchmarks/copy_overlap.py --device cuda --trace /tmp/profile_trace.json.gz
        [--store STORE | --stores-dir DIR --rows N --codec lz4 --store-dtype float16]
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.feed import reader_threads  # noqa: E402
from benchmarks.ingest import CHUNK_ROWS, build_store  # noqa: E402
from benchmarks.train import fed, make_trainer, sync  # noqa: E402

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
KEPT_CATEGORIES = (*GPU_CATEGORIES, "cpu_op")  # what the written trace holds
MIN_SHARE = 0.01  # the target: at least this share of the copies' time overlaps compute kernels
TARGET = "target (issue 32 part 7, the copies' overlap shows)"
TRACE_LIMIT = 15 * 2**20  # gzipped bytes (the device tool brings back files of up to 16 MiB)


def merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of [start, end) intervals as sorted disjoint intervals."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def length(intervals: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def common(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> float:
    """The length of the intersection of two unions given as sorted disjoint intervals."""
    total, i, j = 0.0, 0, 0
    while i < len(x) and j < len(y):
        total += max(0.0, min(x[i][1], y[j][1]) - max(x[i][0], y[j][0]))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total


@dataclass
class StreamUse:
    """One CUDA stream's kernels and host-to-device copies in the trace (times in µs)."""

    kernels: list[tuple[float, float]] = field(default_factory=list)
    copies: list[tuple[float, float]] = field(default_factory=list)
    copy_bytes: int = 0


@dataclass
class Overlap:
    """The copies' overlap with the compute stream's kernels (µs). compute: None without kernels."""

    streams: dict[int | str, StreamUse]
    compute: int | str | None
    copy_us: float  # the union of the H2D copies on streams other than the compute stream
    overlap_us: float  # of that, while a compute-stream kernel runs

    @property
    def share(self) -> float:
        return self.overlap_us / self.copy_us if self.copy_us else 0.0

    @property
    def verdict(self) -> str:
        return "PASS" if self.copy_us and self.share >= MIN_SHARE else "MISS"


def stream_of(event: dict) -> int | str:
    """A GPU event's stream: kineto writes it in args (and as the thread, in some versions "stream N")."""
    return event.get("args", {}).get("stream", event.get("tid", -1))


def copy_overlap(events: list[dict]) -> Overlap:
    """Per stream, kernels and host-to-device copies of a chrome trace's events; the compute
    stream (most kernel time) and the share of the other streams' copy time overlapping it."""
    streams: dict[int | str, StreamUse] = {}
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in ("kernel", "gpu_memcpy"):
            continue
        span = (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)))
        use = streams.setdefault(stream_of(e), StreamUse())
        if e["cat"] == "kernel":
            use.kernels.append(span)
        elif "HtoD" in e.get("name", ""):
            use.copies.append(span)
            use.copy_bytes += int(e.get("args", {}).get("bytes", 0))
    busy = {s: merged(u.kernels) for s, u in streams.items()}
    compute = max((s for s in busy if busy[s]), key=lambda s: length(busy[s]), default=None)
    copies = merged([c for s, u in streams.items() if s != compute for c in u.copies])
    overlap = common(copies, busy[compute]) if compute is not None else 0.0
    return Overlap(streams, compute, length(copies), overlap)


def summary(result: Overlap, window_us: float, device: torch.device) -> list[str]:
    """The lines the profile prints: each stream, the overlap, the target."""
    lines = []
    for s, use in sorted(result.streams.items(), key=lambda item: str(item[0])):
        role = " (compute)" if s == result.compute else " (copies)" if use.copies else ""
        busy, copied = length(merged(use.kernels)), length(merged(use.copies))
        lines.append(f"  stream {s}{role}: {len(use.kernels):,} kernels, busy {busy / 1e3:,.1f} ms "
                     f"({busy / window_us:.0%} of the window); {len(use.copies):,} host-to-device copies, "
                     f"{copied / 1e3:,.1f} ms, {use.copy_bytes / 2**20:,.1f} MiB")
    if not result.streams:
        cpu = device.type != "cuda"
        lines.append("copy overlap: not measured: " + (
            "this profile has no CUDA streams (a CPU run holds CPU operators only; the overlap shows on a GPU)"
            if cpu else "the profiler recorded no GPU kernels or copies (CUPTI missing?)"))
        lines.append(f"{TARGET}: " + ("n/a without CUDA" if cpu else "MISS (nothing recorded)"))
        return lines
    lines.append(f"copy overlap: {result.share:.1%} of the copies' host-to-device time off the compute stream "
                 f"({result.copy_us / 1e3:,.1f} ms) overlaps compute-stream kernels ({result.overlap_us / 1e3:,.1f} ms)")
    lines.append(f"{TARGET}: copies on a stream of their own, >= {MIN_SHARE:.0%} of their time overlapping the "
                 f"step's kernels: {result.verdict}")
    return lines


def trimmed(trace: dict) -> list[dict]:
    """The events the written trace keeps: metadata, GPU events, CPU operators; names cut, args
    reduced to stream and bytes."""
    out = []
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "M":
            out.append(e)
        elif e.get("cat") in KEPT_CATEGORIES:
            kept = {k: e[k] for k in ("ph", "cat", "pid", "tid", "ts", "dur") if k in e}
            kept["name"] = str(e.get("name", ""))[:100]
            args = {k: e["args"][k] for k in ("stream", "bytes") if k in e.get("args", {})}
            if args:
                kept["args"] = args
            out.append(kept)
    return out


def write_trace(events: list[dict], path: Path) -> str:
    """Write `events` gzipped to `path`, halving the span kept while it exceeds TRACE_LIMIT; says what was kept."""
    timed = [e for e in events if "ts" in e]
    start = min((float(e["ts"]) for e in timed), default=0.0)
    span = max((float(e["ts"]) - start for e in timed), default=0.0) + 1.0
    while True:
        kept = [e for e in events if "ts" not in e or float(e["ts"]) - start < span]
        path.write_bytes(gzip.compress(json.dumps({"traceEvents": kept}).encode(), compresslevel=6))
        if path.stat().st_size <= TRACE_LIMIT or span < 1e3:
            note = "" if len(kept) == len(events) else f", the first {span / 1e6:.3f} s only (size)"
            return f"{path} ({path.stat().st_size / 2**20:.1f} MiB gzipped, {len(kept):,} events{note})"
        span /= 2


def profile(trainer, batches, seconds: float) -> tuple[dict, int, int, float]:
    """(chrome trace, steps, rows, wall seconds) of the steps taken in `seconds` under the profiler."""
    device = trainer.ctx.device
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    steps = rows = 0
    with tempfile.TemporaryDirectory(prefix="kmervae-profile-") as tmp:
        sync(device)
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                x = next(batches)
                trainer.runner(x)
                steps, rows = steps + 1, rows + len(x)
            sync(device)
            wall = time.perf_counter() - start
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    return trace, steps, rows, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--store", help="a complete store; none: benchmarks/ingest.py's build_store of --rows rows")
    p.add_argument("--stores-dir", help="where that store is made, or found made (default: a temporary folder)")
    p.add_argument("--rows", type=int, default=61440)
    p.add_argument("--codec", default="lz4", help="the made store's codec (as python -m ingest --codec)")
    p.add_argument("--store-dtype", default="float16", choices=("float32", "float16"))
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--workers", type=reader_threads, default="auto", help="reader threads, or auto")
    p.add_argument("--cuda-graphs", default="on", choices=("on", "off"), help="the step captured (on) or eager")
    p.add_argument("--warmup", type=int, default=20, help="steps before the profile (a graph is captured after 3)")
    p.add_argument("--seconds", type=float, default=1.0, help="how long the profiler records")
    p.add_argument("--trace", default="profile_trace.json.gz", help="where the gzipped chrome trace goes")
    args = p.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="kmervae-overlap-"))
    trainer = None
    try:
        store = args.store or build_store(Path(args.stores_dir or work), args.rows, CHUNK_ROWS, args.codec, args.store_dtype)
        trainer = make_trainer(store, work / "run", args.batch_size, args.workers, device, args.cuda_graphs)
        batches = fed(trainer)
        for _ in range(args.warmup):
            trainer.runner(next(batches))
        mode = "captured step" if trainer.runner.graph is not None else "eager step"
        trace, steps, rows, wall = profile(trainer, batches, args.seconds)
        print(f"profile: {Path(store).name}, batch {args.batch_size}, {args.workers} reader threads, {mode} on {device}: "
              f"{steps:,} steps in {wall:.2f} s ({rows / wall:,.0f} rows/s)")
        for line in summary(copy_overlap(trace.get("traceEvents", [])), wall * 1e6, device):
            print(line, flush=True)
        print(f"trace: {write_trace(trimmed(trace), Path(args.trace))}")
        batches.close()
    finally:
        if trainer is not None:
            trainer.close()  # the reader threads end here
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
