"""Training throughput of each way of feeding the step, against the on-device ceiling of the
same step code, measured side by side in one run.

Each row of the table is one Trainer (reference model) and one way of feeding it, with its own
ceiling: the same `Trainer.runner` (StepRunner) (eager, or the captured CUDA graph) fed random batches
gathered from all rows already on the device. Rows/s are averaged over alternating rounds of
ceiling and feed; data wait is the share of the feed loop's time spent getting the next batch.

  eager           eager step, streamed from a float32 zstd-1 store (--cache none)
  graph           captured step, same stream
  graph+cache     captured step, batches gathered from the row cache (device tier on CUDA,
                  host tier on a CPU); timed from the second epoch on, after the first filled it
  graph f16-lz4   captured step, streamed from a float16 lz4 store

Without CUDA the "graph" rows run the eager step (the table says so).

    python benchmarks/train.py                              # CPU: this machine
    python benchmarks/train.py --device cuda --batches 1024 4096 --rows 600000 --workers 12
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import ingested_store  # noqa: E402
from kmervae_core.config import TrainConfig  # noqa: E402
from kmervae_core.distributed import DistContext  # noqa: E402
from kmervae_core.store.contract import ATTRS_KEY, CLR, COLUMN0  # noqa: E402
from kmervae_core.training.trainer import Trainer  # noqa: E402

# mode: (cuda_graphs, cache, store codec, store dtype)
MODES = {"eager": ("off", "none", "zstd:1", "float32"),
         "graph": ("on", "none", "zstd:1", "float32"),
         "graph+cache": ("on", "device", "zstd:1", "float32"),
         "graph f16-lz4": ("on", "none", "lz4", "float16")}


def build_store(work: Path, rows: int, chunk_rows: int, codec: str = "zstd:1", dtype: str = "float32") -> str:
    """A store of `rows` rows: one ingested template chunk set, its chunks written again."""
    base_rows = min(rows, 8 * chunk_rows)
    base = ingested_store(work, base_rows, chunk_rows, codec, dtype)
    if rows == base_rows:
        return base
    src = zarr.open_group(base, mode="r")
    url = base.replace("ingested-", "bench-")
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
    dst.attrs[ATTRS_KEY] = {**src.attrs[ATTRS_KEY], "rows": rows}
    return url


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer: Trainer, batches, steps: int, warmup: int) -> tuple[float, float]:
    """(rows/s over `steps` steps after `warmup`, share of the time spent waiting for data)."""
    device = trainer.ctx.device
    for _ in range(warmup):
        trainer.runner(next(batches))
    sync(device)
    wait, rows, start = 0.0, 0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        x = next(batches)
        wait += time.perf_counter() - t
        trainer.runner(x)
        rows += len(x)
    sync(device)
    seconds = time.perf_counter() - start
    return rows / seconds, wait / seconds


def fed(trainer: Trainer):
    """The trainer's own batches (stream, or cache once filled), epoch after epoch."""
    while True:
        for x, _ in trainer.feed.train(trainer.epoch):
            yield x
        trainer.epoch += 1


def resident(trainer: Trainer, batch: int):
    """Random batches gathered from every row, already on the device: the ceiling."""
    data = torch.from_numpy(zarr.open_array(trainer.cfg.data, path=CLR, mode="r")[:]).to(trainer.ctx.device)
    gen = torch.Generator(device=trainer.ctx.device).manual_seed(0)
    while True:
        for idx in torch.randperm(len(data), device=trainer.ctx.device, generator=gen).split(batch):
            if len(idx) == batch:
                yield data[idx].float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1024])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=6, help="steps before timing (a graph is captured after 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of ceiling and feed; figures are means")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="kmervae-train-"))
    try:
        kinds = {MODES[mode][2:] for mode in args.modes}
        stores = {kind: build_store(work, args.rows, args.chunk_rows, *kind) for kind in kinds}
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        print(f"machine: {name}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}; "
              f"store {args.rows:,} rows in {args.chunk_rows:,}-row chunks; {args.workers} reader threads; {args.precision}")
        print(f"{'batch':>6} {'mode':<32} {'ceiling rows/s':>15} {'rows/s':>12} {'ratio':>6} {'data wait':>9}")
        for batch in args.batches:
            for mode in args.modes:
                graphs, cache, codec, dtype = MODES[mode]
                lines: list[str] = []
                cfg = TrainConfig(data=stores[(codec, dtype)], out=str(work / f"run-{batch}"), batch_size=batch,
                                  workers=args.workers, val_fraction=0.0, precision=args.precision, partitions=1,
                                  lanes=max(1, args.workers), metrics_port=0, cuda_graphs=graphs,
                                  cache=cache if device.type == "cuda" or cache == "none" else "host")
                trainer = Trainer(cfg, DistContext(0, 1, 0, device), log=lines.append)
                trainer.runner.beta_t.fill_(0.1)
                if trainer.feed.cache is not None:  # the first epoch fills the cache; time the later ones
                    for _ in trainer.feed.train(0):
                        pass
                    trainer.epoch = 1
                sources = {"ceiling": resident(trainer, batch), "fed": fed(trainer)}
                results = {name: [] for name in sources}
                for _ in range(args.rounds):  # alternate, so that drift of the machine hits both alike
                    for name, source in sources.items():
                        results[name].append(measure(trainer, source, args.steps, args.warmup))
                ceiling = float(np.mean([r for r, _ in results["ceiling"]]))
                rate = float(np.mean([r for r, _ in results["fed"]]))
                wait = float(np.mean([w for _, w in results["fed"]]))
                label = mode if trainer.runner.graph is not None or graphs == "off" else f"{mode} (eager: no graph)"
                print(f"{batch:>6} {label:<32} {ceiling:>15,.0f} {rate:>12,.0f} {rate / ceiling:>6.2f} {wait:>9.1%}", flush=True)
                notes = [line for line in lines if line.startswith("CUDA graph: not used")]
                if trainer.feed.cache is None and cache != "none":
                    notes.append(trainer.feed.message)
                for note in notes:
                    print(f"{'':>6}   {note}")
                del trainer, sources
                gc.collect()  # the captured graph goes with its trainer, before the next one captures
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
