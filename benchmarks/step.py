"""The training step's own ceiling against a plain reference step, eager and captured, in one run.

  plain             the same layer sizes written with torch.nn (Linear, BatchNorm1d, LeakyReLU),
                    the plain loss (sum of squares + β KL, batch means), noise drawn inside the
                    step; the same Adam as ours. Written here for comparison only.
  ours              `Trainer.runner` (StepRunner), what `python -m train` runs: global-batch BatchNorm
                    (torch's fused kernel on one rank), per-k-mer sums for the metrics, noise
                    drawn per global batch from (seed, step), the non-finite check, metric sums.
  ours, sum-stats   ours with the BatchNorm path every DDP rank takes (per-feature sums,
                    all-reduced where there are several ranks), on one rank.
  ours, multinomial ours with `--likelihood multinomial` (model/likelihood.py: frequencies read back
                    from the CLR, counts from contig lengths, per-group log-softmax, the decoded
                    CLR for the per-k-mer MSE); a last line sets its ms/step beside ours (mse), the
                    median of the rounds' ratios: what the count likelihood costs in the step. On
                    a loaded machine whole steps drift by more than that cost, so each round also
                    times the two loss terms alone (forward and backward, median of 5), and the
                    line gives their difference as a share of the mse step.

Every variant steps on the same pre-made batches already on the device, so the figures are the
step alone. Variants alternate in rounds so that drift of the machine hits all alike; rows/s
are means. Each round builds (and captures) a variant afresh and frees it before the next: two
captured graphs alive in one process crashed a replay on an H200 (illegal memory access). Per variant, also the operators (CPU) or kernels (CUDA) one eager step launches,
counted with torch.profiler. `--profile` prints the profiler's table of the top kernels of one
eager step of `ours` and `plain`.

    python benchmarks/step.py                                   # CPU, small batches
    python benchmarks/step.py --device cuda --batches 1024 4096 --steps 200 --profile
    python benchmarks/step.py --batches 1024 --steps 5 --variants ours "ours, multinomial"  # its cost on CPU
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import ingested_store  # noqa: E402
from kmervae_core.config import TrainConfig  # noqa: E402
from kmervae_core.distributed import DistContext  # noqa: E402
from kmervae_core.model.likelihood import Multinomial  # noqa: E402
from kmervae_core.model.losses import vae_loss  # noqa: E402
from kmervae_core.model.vae import KERAS_BN, LOG_VAR_RANGE, GlobalBatchNorm1d  # noqa: E402
from kmervae_core.store.clr import ClrSpec  # noqa: E402
from kmervae_core.store.kmers import KMER_GROUPS, N_FEATURES  # noqa: E402
from kmervae_core.training.step_graph import WARMUP_STEPS, CudaGraphStep  # noqa: E402
from kmervae_core.training.trainer import Trainer  # noqa: E402

VARIANTS = ("plain", "ours", "ours, sum-stats", "ours, multinomial")
LENGTH = 5000.0  # the contig length of every row for the multinomial step
BETA = 0.1


def plain_step(trainer: Trainer, graphed: bool) -> Callable[[torch.Tensor], object]:
    """The plain reference step (module docstring), with the optimizer settings of `trainer`."""
    cfg, device = trainer.cfg, trainer.ctx.device
    torch.manual_seed(cfg.seed)

    def mlp(sizes: tuple[int, ...]) -> list[nn.Module]:
        return [m for a, b in zip(sizes, sizes[1:])
                for m in (nn.Linear(a, b), nn.BatchNorm1d(b, **KERAS_BN), nn.LeakyReLU(0.2))]

    hidden = tuple(cfg.hidden)
    encoder = nn.Sequential(*mlp((N_FEATURES, *hidden))).to(device)
    z_mean, z_log_var = nn.Linear(hidden[-1], cfg.latent).to(device), nn.Linear(hidden[-1], cfg.latent).to(device)
    decoder = nn.Sequential(*mlp((cfg.latent, *reversed(hidden))), nn.Linear(hidden[0], N_FEATURES)).to(device)
    params = [p for m in (encoder, z_mean, z_log_var, decoder) for p in m.parameters()]
    group = trainer.opt.param_groups[0]
    lr = torch.tensor(cfg.lr, device=device) if group["capturable"] else cfg.lr
    opt = torch.optim.Adam(params, lr=lr, capturable=group["capturable"], fused=group["fused"], foreach=group["foreach"])
    static_x = torch.zeros(cfg.batch_size, N_FEATURES, device=device)

    def body(x: torch.Tensor) -> torch.Tensor:
        with trainer.runner.autocast():
            h = encoder(x)
            mu, log_var = z_mean(h), z_log_var(h).clamp(*LOG_VAR_RANGE)
            z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
            recon = decoder(z)
        recon_loss = (recon.float() - x).square().sum(1).mean()
        kl = (-0.5 * (1 + log_var.float() - mu.float().square() - log_var.float().exp()).sum(1)).mean()
        loss = recon_loss + BETA * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if not graphed:
        return body
    side = torch.cuda.Stream(device)  # warm-up steps on a side stream, then capture (torch's notes)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            body(static_x)
    torch.cuda.current_stream(device).wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = CudaGraphStep()
    graph.capture(lambda: body(static_x))

    def replay(x: torch.Tensor) -> None:
        static_x.copy_(x)
        graph.replay()
    return replay


def ours_step(trainer: Trainer, sum_stats: bool) -> Callable[[torch.Tensor], None]:
    if sum_stats:
        for m in trainer.model.modules():
            if isinstance(m, GlobalBatchNorm1d):
                m.forward = m.global_stats_forward
    trainer.runner.beta_t.fill_(BETA)
    runner = trainer.runner

    def step(x: torch.Tensor) -> None:
        runner(x, None, torch.full((len(x),), LENGTH, device=x.device) if runner.counts is not None else None)
    return step


def term_ms(x: torch.Tensor, device: torch.device, reps: int = 5) -> dict[str, float]:
    """Milliseconds of each loss term alone, forward and backward (median of `reps`): the mse
    term and the multinomial one (per-k CLR store, every row LENGTH long), on batch x."""
    gen = torch.Generator(device=device).manual_seed(1)
    recon = torch.randn(x.shape, device=device, generator=gen).requires_grad_()
    mu, log_var = torch.zeros(len(x), 256, device=device), torch.zeros(len(x), 256, device=device)
    lengths = torch.full((len(x),), LENGTH, device=device)
    counts = Multinomial(KMER_GROUPS, ClrSpec("per_k"), device)
    times: dict[str, list[float]] = {"mse": [], "multinomial": []}
    for _ in range(reps):
        for name, term in times.items():
            sync(device)
            start = time.perf_counter()
            vae_loss(x, recon, mu, log_var, BETA, counts=counts if name == "multinomial" else None,
                     lengths=lengths)[0].backward()
            sync(device)
            term.append(1000 * (time.perf_counter() - start))
    return {name: float(np.median(t)) for name, t in times.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[torch.Tensor], None], batches: list[torch.Tensor], steps: int, device: torch.device) -> float:
    """Rows/s over `steps` steps."""
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    sync(device)
    return steps * len(batches[0]) / (time.perf_counter() - start)


def launches(step: Callable[[torch.Tensor], None], x: torch.Tensor, device: torch.device,
             table: str | None = None) -> int:
    """Kernels (CUDA) or operators (CPU) one step launches; prints the top of the profile if asked."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        step(x)
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        count = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        count = sum(1 for e in events if e.name.startswith("aten::")
                    and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    if table is not None:
        keys = ("self_cuda_time_total", "self_device_time_total") if device.type == "cuda" else ("self_cpu_time_total",)
        print(f"\ntop of one eager step, {table}:")
        for key in keys:  # torch renamed the CUDA key to "device" in later releases
            try:
                print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
                break
            except (AttributeError, KeyError, ValueError):
                continue
    return count


def build(variant: str, mode: str, cfg: TrainConfig, device: torch.device, batches: list[torch.Tensor],
          warmup: int) -> Callable[[torch.Tensor], object]:
    """A variant's step, warmed up (and captured, in graph mode)."""
    if variant == "ours, multinomial":
        cfg = dataclasses.replace(cfg, likelihood="multinomial")
    trainer = Trainer(cfg, DistContext(0, 1, 0, device), log=lambda line: None)
    step = plain_step(trainer, mode == "graph") if variant == "plain" else ours_step(trainer, variant == "ours, sum-stats")
    for i in range(warmup):
        step(batches[i % len(batches)])
    if mode == "graph" and variant != "plain" and trainer.runner.graph is None:
        raise SystemExit(f"{variant}: the step was not captured")
    return step


def release(device: torch.device) -> None:
    """Free a variant (its graph with it) before the next is built: one captured graph at a time."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[256])
    p.add_argument("--modes", nargs="+", default=["eager", "graph"], choices=("eager", "graph"),
                   help="graph needs CUDA (skipped elsewhere)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=6, help="steps before timing (a graph is captured after 3)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--profile", action="store_true", help="print the top kernels of one eager step")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                   help="the variants to time (ratios are to plain, or to the first given where plain is not)")
    args = p.parse_args()
    device = torch.device(args.device)
    modes = [m for m in args.modes if m == "eager" or device.type == "cuda"]
    variants = [v for v in VARIANTS if v in args.variants]
    work = Path(tempfile.mkdtemp(prefix="kmervae-step-"))
    try:
        store = ingested_store(work, max(args.batches), 1024)  # the Trainer needs one; its rows are not used
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        print(f"machine: {name}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}; "
              f"{args.precision}; rows/s of the step alone, {args.rounds} alternating rounds of {args.steps} steps")
        base = variants[0]
        print(f"{'batch':>6} {'mode':<6} {'variant':<17} {'launches':>9} {'rows/s':>12} {'ms/step':>8} {'vs ' + base:>8}")
        for batch in args.batches:
            gen = torch.Generator(device=device).manual_seed(0)
            batches = [torch.randn(batch, N_FEATURES, device=device, generator=gen) for _ in range(8)]
            for mode in modes:
                cfg = TrainConfig(data=store, out=str(work / "run"), batch_size=batch, workers=0, val_fraction=0.0,
                                  partitions=1, metrics_port=0, latent_sample=0, cache="none",
                                  precision=args.precision, cuda_graphs="on" if mode == "graph" else "off")
                rates: dict[str, list[float]] = {v: [] for v in variants}
                counts = {v: 1 for v in variants}  # a replay is one launch
                terms: list[dict[str, float]] = []
                for r in range(args.rounds):  # alternate, so that drift of the machine hits all alike
                    if {"ours", "ours, multinomial"} <= set(variants):
                        terms.append(term_ms(batches[0], device))
                    for variant in variants:
                        step = build(variant, mode, cfg, device, batches, args.warmup)
                        if mode == "eager" and r == 0:
                            counts[variant] = launches(step, batches[0], device)
                        rates[variant].append(timed(step, batches, args.steps, device))
                        if args.profile and mode == "eager" and batch == args.batches[0] and r == 0 \
                                and variant in ("plain", "ours"):
                            launches(step, batches[0], device, table=variant)
                        del step
                        release(device)
                first = float(np.mean(rates[base]))
                for variant in variants:
                    rate = float(np.mean(rates[variant]))
                    print(f"{batch:>6} {mode:<6} {variant:<17} {counts[variant]:>9} {rate:>12,.0f} "
                          f"{1000 * batch / rate:>8.3f} {rate / first:>8.2f}", flush=True)
                if {"ours", "ours, multinomial"} <= set(variants):
                    ms = {v: [1000 * batch / r for r in rates[v]] for v in ("ours", "ours, multinomial")}
                    ratios = [m / o for m, o in zip(ms["ours, multinomial"], ms["ours"])]
                    print(f"{batch:>6} {mode:<6} multinomial vs mse step, median of {args.rounds} rounds: "
                          f"{np.median(ms['ours, multinomial']):.1f} ms vs {np.median(ms['ours']):.1f} ms, ratio "
                          f"{np.median(ratios):.3f} (rounds: {', '.join(f'{q:.3f}' for q in ratios)})", flush=True)
                    extra = [(t["multinomial"] - t["mse"]) / o for t, o in zip(terms, ms["ours"])]
                    print(f"{batch:>6} {mode:<6} loss terms alone, median of {args.rounds} rounds: multinomial "
                          f"{np.median([t['multinomial'] for t in terms]):.1f} ms, mse "
                          f"{np.median([t['mse'] for t in terms]):.1f} ms; the difference is "
                          f"{100 * np.median(extra):.1f}% of the mse step (rounds: "
                          f"{', '.join(f'{100 * e:.1f}%' for e in extra)})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
