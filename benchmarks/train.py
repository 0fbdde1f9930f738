"""Training throughput streaming from the store against the same step code on resident rows.

Both loops call `Trainer.train_step` on the same model, batch and device; only where the batch
comes from differs: (a) KmerStream through make_loader (workers, pinned memory on CUDA), or
(b) a random gather from all rows already on the device (the ceiling for this step code).
Prints samples/s of each, the ratio, and the share of time the stream loop waited for data.

    python benchmarks/train.py                              # CPU: this machine, 2 cores
    python benchmarks/train.py --device cuda --batches 1024 4096 --rows 1000000 --workers 8
"""
from __future__ import annotations

import argparse
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
from kmervae_core.store import ATTRS_KEY, CLR, COLUMN0  # noqa: E402
from kmervae_core.training import NO_STEP, Trainer  # noqa: E402


def build_store(work: Path, rows: int, chunk_rows: int) -> str:
    """A store of `rows` rows: one ingested template chunk set, its chunks written again."""
    base_rows = min(rows, 8 * chunk_rows)
    base = ingested_store(work, base_rows, chunk_rows)
    if rows == base_rows:
        return base
    src = zarr.open_group(base, mode="r")
    url = str(work / "bench.zarr")
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
    """(samples/s over `steps` steps after `warmup`, share of the time spent waiting for data)."""
    device = trainer.ctx.device
    trainer.first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=device)
    it = iter(batches)
    for _ in range(warmup):
        trainer.train_step(next(it).to(device, non_blocking=True), 0.1)
    sync(device)
    wait, rows, start = 0.0, 0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        x = next(it).to(device, non_blocking=True)
        wait += time.perf_counter() - t
        trainer.train_step(x, 0.1)
        rows += len(x)
    sync(device)
    seconds = time.perf_counter() - start
    return rows / seconds, wait / seconds


def streamed(trainer: Trainer):
    epoch = 0
    while True:
        trainer.train_stream.set_epoch(epoch)
        for x, _ in trainer.train_loader:
            yield x
        epoch += 1


def resident(trainer: Trainer, batch: int):
    data = torch.from_numpy(zarr.open_array(trainer.cfg.data, path=CLR, mode="r")[:]).to(trainer.ctx.device)
    gen = torch.Generator(device=trainer.ctx.device).manual_seed(0)
    while True:
        for idx in torch.randperm(len(data), device=trainer.ctx.device, generator=gen).split(batch):
            if len(idx) == batch:
                yield data[idx]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1024])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each; figures are their means")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="kmervae-train-"))
    try:
        url = build_store(work, args.rows, args.chunk_rows)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        print(f"machine: {name}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}; "
              f"store {args.rows:,} rows; {args.workers} loader workers; {args.precision}")
        print(f"{'batch':>6} {'resident samples/s':>19} {'streamed samples/s':>19} {'ratio':>6} {'data wait':>9}")
        for batch in args.batches:
            cfg = TrainConfig(data=url, out=str(work / f"run-{batch}"), batch_size=batch, workers=args.workers,
                              val_fraction=0.0, precision=args.precision, partitions=1, lanes=max(1, args.workers),
                              metrics_port=0)
            trainer = Trainer(cfg, DistContext(0, 1, 0, device), log=lambda line: None)
            sources = {"resident": resident(trainer, batch), "streamed": streamed(trainer)}
            results = {name: [] for name in sources}
            for _ in range(args.rounds):  # alternate, so that drift of the machine hits both alike
                for name, source in sources.items():
                    results[name].append(measure(trainer, source, args.steps, args.warmup))
            ceiling = float(np.mean([r for r, _ in results["resident"]]))
            rate = float(np.mean([r for r, _ in results["streamed"]]))
            wait = float(np.mean([w for _, w in results["streamed"]]))
            print(f"{batch:>6} {ceiling:>19,.0f} {rate:>19,.0f} {rate / ceiling:>6.2f} {wait:>9.1%}")
            del trainer
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
