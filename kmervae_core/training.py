"""The training loop: the reference VAE, one process or DDP, with exact mid-epoch resume; fed
by feed.py (the stream, or the row cache after the first epoch), its step captured as a CUDA
graph where possible (step_graph.py). Read it top to bottom: `Trainer.run` is the whole story."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from . import __version__
from . import checkpoint as ckpt
from .atomic import atomic_file
from .config import TrainConfig, beta_at, resume_mismatch, warmup_end_epoch
from .distributed import DistContext, StopVote, all_reduce, ddp_group, gather
from .epoch_plan import default_partitions
from .errors import KmervaeError
from .evaluate import active_units, distance_spearman, knn_accuracy, sample_pairs
from .feed import Feed
from .kmers import KMER_GROUPS, N_FEATURES, block_columns, selected_groups
from .losses import N_SUMS, summarise, vae_loss
from .metrics import TrainMetrics
from .model import VAE
from .progress import Progress
from .store import LABELS, open_array, read_rows
from .step_graph import WARMUP_STEPS, CudaGraphStep, check_capture, graph_decision

NO_STEP = 2**62
# what fixes the epoch plan (the batches): a resumed run must keep them all
PLAN_SETTINGS = ("batch_size", "seed", "val_fraction", "val_split", "window_chunks", "lanes", "partitions")


def memory_in_use(device: torch.device) -> float:
    """Device memory allocated (CUDA), or this process's resident memory (CPU); no sync."""
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0.0


class NonFiniteLoss(KmervaeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Stopped(Exception):
    """The run was asked to stop (a signal reached some rank): every rank finished the same
    step and a checkpoint of it was written; `--resume auto` continues exactly."""


def settle_plan(cfg: TrainConfig, world_size: int, saved: dict | None, path: Path | None) -> TrainConfig:
    """`cfg` with its partition count fixed. A new run takes default_partitions; a resumed run
    must have the checkpoint's model (resume_mismatch) and keeps its epoch plan, which any world size dividing its partitions follows
    batch for batch, and refuses in one line a setting or world size that would change it."""
    if saved is None:
        return dataclasses.replace(cfg, partitions=cfg.partitions or default_partitions(cfg.batch_size, world_size))
    mismatch = resume_mismatch(saved["config"], cfg)
    if mismatch:
        raise KmervaeError(f"{path}: {mismatch}")
    was = saved["config"]
    cfg = dataclasses.replace(cfg, partitions=cfg.partitions or was["partitions"])
    changed = [k for k in PLAN_SETTINGS if getattr(cfg, k) != was[k]]
    if changed:
        raise KmervaeError(f"{path}: written with {', '.join(f'{k}={was[k]}' for k in changed)}; this run has "
                           f"{', '.join(f'{k}={getattr(cfg, k)}' for k in changed)}, which would change its batches: "
                           "keep those settings, or choose another --out")
    if cfg.partitions % world_size:
        fits = [w for w in range(1, cfg.partitions + 1) if cfg.partitions % w == 0 and cfg.batch_size % w == 0]
        raise KmervaeError(f"{path}: its epoch plan has {cfg.partitions} partitions, which world size {world_size} "
                           f"does not divide; resume it on {', '.join(map(str, fits))} processes")
    return cfg


def export_paths(run_dir: Path, tag: str) -> dict[str, Path]:
    return {part: run_dir / f"vae_multi{'' if part == 'model' else '_' + part}_{tag}.pt"
            for part in ("model", "encoder", "decoder")}


def epoch_line(epoch: int, epochs: int, beta: float, train: dict, val: dict | None, rate: float,
               latent: dict | None = None, latent_size: int = 0) -> str:
    """The reference's log line, then throughput, then the latent metrics where computed."""
    shown = val if val is not None else train
    per_k = ", ".join(f"{g.k}mer={shown[f'mse_{g.k}mer']:.2f}" for g in KMER_GROUPS if f"mse_{g.k}mer" in shown)
    val_text = f"{val['loss']:.2f}" if val is not None else "n/a"
    line = (f"Epoch {epoch + 1}/{epochs}: Recon: {train['recon']:.2f}, KL: {train['kl']:.2f} (w={beta:.4f}), "
            f"Val: {val_text}, MSE: {shown['mse']:.2f} [{per_k}] {rate:,.0f} samples/s")
    if latent:
        line += f" | active {latent['active_units']}/{latent_size}, rho {latent['spearman']:.3f}"
        if latent.get("knn") is not None:
            line += f", kNN {latent['knn']:.3f}"
    return line


def better(select_by: str, value: float, best: float) -> bool:
    """Lower validation loss, or higher distance correlation / kNN accuracy."""
    return value < best if select_by == "val_loss" else value > best


class Trainer:
    """`stop`: asked at every step whether this rank should stop (a signal handler's flag); where
    it says so on any rank, every rank finishes the step, a checkpoint is written, and `run`
    raises Stopped."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, log=print, stop: Callable[[], bool] = lambda: False) -> None:
        self.cfg, self.ctx, self.log = cfg, ctx, log
        self.run_dir = Path(cfg.out)
        self.resume_path = self.resume_from()
        self.resumed = ckpt.load(self.resume_path) if self.resume_path is not None else None
        self.cfg = cfg = settle_plan(cfg, ctx.world_size, self.resumed, self.resume_path)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        columns, self.groups = selected_groups(cfg.kmers)
        self.feed = Feed(cfg, ctx, columns if len(columns) < N_FEATURES else None, log)
        self.batches = self.feed.batches
        self.heldout = self._heldout(columns) if ctx.is_main and cfg.latent_sample else None
        self.weights = cfg.weights_by_k()
        torch.manual_seed(cfg.seed)
        self.blocks = cfg.block_names()
        self.model = VAE(len(columns), tuple(cfg.hidden), cfg.latent, torch.as_tensor(columns), cfg.prior,
                         [torch.as_tensor(c) for c in block_columns(cfg.kmers, cfg.block_kmers)] if self.blocks else None,
                         cfg.block_sizes()).to(ctx.device)
        self.net = DDP(self.model, process_group=ddp_group()) if ctx.active else self.model
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.graph_wanted, self.step_mode = graph_decision(cfg.cuda_graphs, ctx.device, ctx.world_size, cfg.compile)
        self._configure_adam()
        self.plateau = self._new_plateau()
        self.noise = torch.Generator(device=ctx.device)
        # what a step reads and writes, at fixed addresses so that a captured step can be replayed
        self.eps_full = torch.empty(cfg.batch_size, cfg.latent, device=ctx.device)
        self.eps = self.eps_full[self.feed.train_stream.share.batch_slice]
        self.static_x: torch.Tensor | None = None  # the captured step's batch
        self.beta_t = torch.zeros((), device=ctx.device)
        self.step_t = torch.zeros((), dtype=torch.int64, device=ctx.device)
        self.first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=ctx.device)
        self.graph, self.graph_class, self.eager_steps = None, CudaGraphStep, 0
        self._side_stream = torch.cuda.Stream(ctx.device) if self.graph_wanted else None
        self.epoch, self.batch, self.step = 0, 0, 0
        self.best = self._no_best()
        self.epoch_sums = torch.zeros(N_SUMS, device=ctx.device, dtype=torch.float64)
        self.window_sums = torch.zeros_like(self.epoch_sums)
        self.window = {"rows": 0, "wait": 0.0, "start": time.perf_counter()}
        self.history: list[dict] = []
        self.metrics = self.metrics_url = None
        self.stop_vote = StopVote(stop)
        if ctx.is_main and (cfg.metrics_port or cfg.pushgateway):
            self.metrics = TrainMetrics(self.run_dir.resolve().name, {
                "world_size": str(ctx.world_size), "config_hash": cfg.digest(), "version": __version__,
                "device": ctx.device.type, "cache": self.feed.tier,
                "cuda_graphs": "wanted" if self.graph_wanted else "off"})
            if cfg.metrics_port:
                self.metrics_url = self.metrics.serve(cfg.metrics_port, cfg.metrics_addr)

    def _configure_adam(self) -> None:
        """Adam's implementation for this device. On CUDA the fused kernel (one launch where
        foreach takes a dozen); where the step is captured, `capturable` with the learning rate
        as a device tensor (a replay must read the current rate, which the plateau schedule
        changes). Plain Adam on a CPU. Also applied to a loaded checkpoint, whichever way it
        was written."""
        capturable, fused = self.graph_wanted, self.ctx.device.type == "cuda"
        for group in self.opt.param_groups:
            lr = float(group["lr"])
            group.update(capturable=capturable, fused=fused or None, foreach=None if fused else group.get("foreach"))
            group["lr"] = torch.tensor(lr, device=self.ctx.device) if capturable else lr
        for state in self.opt.state.values():
            if "step" in state:
                on_device = capturable or fused
                state["step"] = state["step"].to(self.ctx.device if on_device else "cpu", torch.float32)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def _no_best(self) -> dict:
        worst = math.inf if self.cfg.select_by == "val_loss" else -math.inf
        return {"by": self.cfg.select_by, "value": worst, "epoch": -1}

    def _heldout(self, columns: np.ndarray) -> dict | None:
        """A fixed seeded sample of validation rows (CLR, labels, distance pairs) for the
        latent metrics; None where the split holds no validation rows."""
        cfg, split = self.cfg, self.feed.val_stream.split
        rows = split.val_rows()
        if len(rows) <= 5:
            if cfg.select_by != "val_loss":
                raise KmervaeError(f"--select-by {cfg.select_by} needs validation rows; this split has {len(rows)}")
            return None
        rng = np.random.default_rng([cfg.seed, 0x1A7])
        rows = np.sort(rng.choice(rows, min(len(rows), cfg.latent_sample), replace=False)).astype(np.int64)
        labels = read_rows(cfg.data, open_array(cfg.data, LABELS), rows) if self.feed.train_stream.info.has_labels else None
        if labels is None and cfg.select_by == "knn":
            raise KmervaeError("--select-by knn needs a store with labels (python -m ingest ... --labels LABELS.npy)")
        x = np.asarray(read_rows(cfg.data, open_array(cfg.data), rows), dtype=np.float32)[:, columns]
        return {"rows": rows, "x": x, "labels": labels, "pairs": sample_pairs(len(rows), cfg.latent_pairs, cfg.seed)}

    @torch.no_grad()
    def latent_metrics(self) -> dict | None:
        """Rank 0 encodes the held-out sample; the three figures are broadcast so that every
        rank makes the same best-checkpoint decision."""
        values = torch.full((3,), math.nan, dtype=torch.float64, device=self.ctx.device)
        if self.heldout is not None:
            self.model.eval()
            x = torch.from_numpy(self.heldout["x"])
            z = torch.cat([self.model.encoder(b.to(self.ctx.device))[0].float().cpu() for b in x.split(1024)]).numpy()
            self.model.train()
            labels = self.heldout["labels"]
            values = torch.tensor([active_units(z), distance_spearman(z, self.heldout["x"], self.heldout["pairs"]),
                                   knn_accuracy(z, labels) if labels is not None else math.nan],
                                  dtype=torch.float64, device=self.ctx.device)
            with atomic_file(self.run_dir / "heldout_latents.npz") as f:
                np.savez(f, z=z, rows=self.heldout["rows"], **({"labels": labels} if labels is not None else {}))
        if self.ctx.active:
            torch.distributed.broadcast(values, src=0)
        active, rho, knn = values.tolist()
        if math.isnan(active):
            return None
        return {"active_units": int(active), "spearman": rho, "knn": None if math.isnan(knn) else knn}

    def _new_plateau(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        c = self.cfg
        return torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=c.plateau_factor,
                                                          patience=c.plateau_patience, min_lr=c.min_lr)

    # ---- state ----

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "plateau": self.plateau.state_dict(), "epoch": self.epoch, "batch": self.batch,
                "step": self.step, "best": dict(self.best), "epoch_sums": self.epoch_sums.cpu(),
                "rng_cpu": torch.get_rng_state(), "config": self.cfg.to_dict(), "world_size": self.ctx.world_size}

    def restore(self, s: dict) -> None:
        """Continue from checkpoint state `s` (checked by settle_plan), at any world size the plan
        allows."""
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self._configure_adam()
        self.plateau.load_state_dict(s["plateau"])
        self.epoch, self.batch, self.step = s["epoch"], s["batch"], s["step"]
        self.best = dict(s["best"])
        torch.set_rng_state(s["rng_cpu"])
        # rank 0 carries the reduced partial sums of the interrupted epoch; the others start at 0
        sums = torch.nn.functional.pad(s["epoch_sums"], (0, N_SUMS - len(s["epoch_sums"]))).to(self.ctx.device)
        self.epoch_sums = sums if self.ctx.is_main else torch.zeros_like(sums)
        history = self.run_dir / "history.json"
        if history.exists():
            self.history = [h for h in json.loads(history.read_text()) if h["epoch"] <= self.epoch]

    def resume_from(self) -> Path | None:
        if self.cfg.resume == "never":
            if ckpt.list_checkpoints(self.run_dir):
                raise KmervaeError(f"{self.run_dir}: already holds checkpoints of another run; "
                                   "choose another --out, or --resume auto to continue it")
            return None
        if self.cfg.resume != "auto":
            path = Path(self.cfg.resume)
            if not path.is_file():
                raise KmervaeError(f"{path}: no such checkpoint")
            return path
        found = ckpt.list_checkpoints(self.run_dir)
        return found[-1] if found else None

    def save_checkpoint(self) -> None:
        """Reduce the epoch's partial sums into rank 0, then write (rank 0) atomically."""
        self.check_finite()
        all_reduce(self.epoch_sums)
        if not self.ctx.is_main:
            self.epoch_sums.zero_()
            return
        ckpt.atomic_save(self.state(), ckpt.checkpoint_path(self.run_dir, self.epoch, self.step))
        ckpt.prune(self.run_dir, self.cfg.keep_checkpoints)

    def export(self, tag: str) -> None:
        if self.ctx.is_main:
            paths = export_paths(self.run_dir, tag)
            ckpt.atomic_save(self.model.state_dict(), paths["model"])
            ckpt.atomic_save(self.model.encoder.state_dict(), paths["encoder"])
            ckpt.atomic_save(self.model.decoder.state_dict(), paths["decoder"])

    # ---- steps ----

    def check_finite(self) -> None:
        """Stop on the first non-finite loss since the last check, or on weights or BatchNorm
        statistics gone non-finite (training losses use batch statistics, so a running
        variance can overflow while the loss stays finite). One sync, at checks only."""
        weights_ok = torch.stack([torch.isfinite(t).all() for t in self.model.state_dict().values()
                                  if t.is_floating_point()]).all()
        flags = torch.stack([self.first_bad, torch.where(weights_ok, NO_STEP, self.step - 1)])
        step_loss, step_weights = (int(v) for v in all_reduce(flags, torch.distributed.ReduceOp.MIN).tolist())
        if min(step_loss, step_weights) == NO_STEP:
            return
        step = min(step_loss, step_weights)
        what = "loss" if step_loss <= step_weights else "weights"
        epoch, batch = divmod(step, self.batches)
        last = ckpt.list_checkpoints(self.run_dir)
        keep = f"last good checkpoint {last[-1]}" if last else "no checkpoint was written"
        raise NonFiniteLoss(f"non-finite {what} at epoch {epoch + 1}, step {step + 1} (batch {batch + 1}); {keep}")

    def draw_noise(self) -> None:
        """Reparameterisation noise for the whole global batch, drawn from (seed, step) into
        `eps_full`; this rank uses its rows (`eps`), so any world size draws the same noise."""
        self.noise.manual_seed(self.cfg.seed * 1_000_003 + self.step)
        torch.randn(self.eps_full.shape, generator=self.noise, out=self.eps_full)

    def autocast(self):
        enabled = self.cfg.precision == "bf16" and self.ctx.device.type == "cuda"
        # a captured step must not keep autocast's weight-cast cache (torch's CUDA graph notes)
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled,
                              cache_enabled=not self.graph_wanted)

    def step_body(self, x: torch.Tensor, graphed: bool = False) -> torch.Tensor:
        """One optimisation step on device tensors only (no host values, no syncs), so that it
        can be captured. Under DDP a captured step averages gradients itself (DDP's hooks do
        it for the eager step). Returns the loss."""
        with self.autocast():
            recon, mu, log_var, kl = (self.model if graphed else self.net)(x, self.eps)
        loss, sums = vae_loss(x, recon, mu, log_var, self.beta_t, self.groups, self.weights, kl)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if graphed and self.ctx.active:
            grads = [p.grad for p in self.model.parameters()]
            flat = all_reduce(torch.cat([g.flatten() for g in grads])) / self.ctx.world_size
            torch._foreach_copy_(grads, [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads)])
        self.opt.step()
        self.epoch_sums += sums
        self.window_sums += sums
        self.first_bad.copy_(torch.where(torch.isfinite(loss), self.first_bad,
                                         torch.minimum(self.first_bad, self.step_t)))
        self.step_t += 1
        return loss.detach()

    def train_step(self, x: torch.Tensor) -> None:
        """One step on a batch of the trained columns, on the device: replayed from the
        captured graph once there is one, else eager."""
        self.draw_noise()
        if self.graph_wanted and self.graph is None and self.eager_steps >= WARMUP_STEPS:
            self.graph = self.capture(x)
        if self.graph is not None:
            self.static_x.copy_(x)
            self.graph.replay()
            return
        with self._eager_stream():
            self.step_body(x)
        self.eager_steps += 1

    @contextmanager
    def _eager_stream(self):
        """Eager steps before a capture run on a side stream, as CUDA graph capture requires."""
        if not (self.graph_wanted and self.graph is None and self.ctx.device.type == "cuda"):
            yield
            return
        side = self._side_stream
        side.wait_stream(torch.cuda.current_stream(self.ctx.device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(self.ctx.device).wait_stream(side)

    def step_state(self) -> list[torch.Tensor]:
        """Every tensor a step changes; the parameters first."""
        opt_state = [t for st in self.opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
        return [*self.model.parameters(), *self.model.buffers(), *opt_state,
                self.epoch_sums, self.window_sums, self.first_bad, self.step_t]

    def capture(self, x: torch.Tensor):
        """Capture the step on this batch and check it against the eager step; the graph, or
        None (eager from here on) with one line saying why. Every rank takes the same way."""
        graph, problem = self.graph_class(), None
        try:
            self.static_x = x.detach().clone()
            self.opt.zero_grad(set_to_none=True)
            graph.capture(lambda: self.step_body(self.static_x, graphed=True))
            problem = check_capture(graph, lambda: self.step_body(self.static_x), self.step_state(),
                                    list(self.model.parameters()), self.opt)
        except RuntimeError as e:
            problem = f"capture failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ok = all_reduce(torch.tensor([0 if problem else 1], device=self.ctx.device), torch.distributed.ReduceOp.MIN)
        if int(ok.item()):
            self.log(f"CUDA graph: captured at step {self.step + 1}; replay matches the eager step")
            return graph
        self.graph_wanted = False
        self.log(f"CUDA graph: not used ({problem or 'another rank could not capture'}); eager steps from here")
        return None

    def publish_window(self, beta: float) -> None:
        """At a log point (already a sync): reduce the window's train sums and gather per-rank
        throughput, data wait and memory to rank 0's exporter."""
        now = time.perf_counter()
        elapsed = max(now - self.window["start"], 1e-9)
        mine = torch.tensor([self.window["rows"] / elapsed, self.window["wait"] / elapsed,
                             memory_in_use(self.ctx.device)], dtype=torch.float64, device=self.ctx.device)
        per_rank = [t.tolist() for t in gather(mine)]
        window = summarise(all_reduce(self.window_sums.clone()), beta, self.groups, self.blocks)
        self.window_sums.zero_()
        self.window = {"rows": 0, "wait": 0.0, "start": now}
        if self.metrics is not None and window["rows"]:
            self.metrics.set_train(window, beta, self.lr, self.epoch)
            self.metrics.set_ranks(per_rank)

    @torch.no_grad()
    def validate(self, beta: float) -> dict | None:
        """Validation reconstructs from z_mean (deterministic, the same on any world size)."""
        self.model.eval()
        sums = torch.zeros(N_SUMS, device=self.ctx.device, dtype=torch.float64)
        for x, _ in self.feed.val():
            with self.autocast():
                recon, mu, log_var, kl = self.model(x, torch.zeros(len(x), self.cfg.latent, device=self.ctx.device))
            sums += vae_loss(x, recon, mu, log_var, beta, self.groups, self.weights, kl)[1]
        self.model.train()
        all_reduce(sums)
        return summarise(sums, beta, self.groups, self.blocks) if sums[0] > 0 else None

    # ---- the run ----

    def run(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        if self.resumed is not None:
            self.restore(self.resumed)
            was = self.resumed.get("world_size", "?")
            self.resumed = None  # the weights now live in the model
            self.log(f"resuming from {self.resume_path}: epoch {self.epoch + 1}, batch {self.batch}, step {self.step} "
                     f"(written by {was} process(es), now {ctx.world_size}; {cfg.partitions} partitions)")
        self.first_bad.fill_(NO_STEP)
        self.step_t.fill_(self.step)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while self.epoch < cfg.epochs:
            beta = beta_at(cfg, self.epoch)
            if self.epoch == warmup_end_epoch(cfg) and self.batch == 0 and self.epoch > 0:
                self.best = self._no_best()
                lr = self.lr
                self.plateau = self._new_plateau()
                self.log(f"β warm-up over: best-checkpoint and plateau tracking restart at epoch {self.epoch + 1} (lr {lr:g})")
            self.beta_t.fill_(beta)
            bar = Progress(self.batches, f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batches",
                           quiet=not ctx.is_main)
            bar.update(self.batch)
            rows, t0 = 0, time.perf_counter()
            batches, t_prev = self.feed.train(self.epoch, self.batch), time.perf_counter()
            while True:
                t_wait = time.perf_counter()
                try:
                    x, _ = next(batches)
                except StopIteration:
                    break
                wait = time.perf_counter() - t_wait
                self.train_step(x)
                self.step += 1
                self.batch += 1
                rows += len(x) * ctx.world_size
                self.window["rows"] += len(x)
                self.window["wait"] += wait
                now = time.perf_counter()
                if self.metrics is not None:
                    self.metrics.observe_step(now - t_prev, wait, len(x) * ctx.world_size)
                t_prev = now
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    self.check_finite()
                    self.publish_window(beta)
                if self.step % cfg.checkpoint_every == 0 and self.batch < self.batches:
                    self.save_checkpoint()
                if self.stop_vote.poll():
                    self.save_checkpoint()
                    raise Stopped(f"stopped at epoch {self.epoch + 1}, step {self.step} (batch {self.batch}) on a "
                                  f"signal, after writing {ckpt.checkpoint_path(self.run_dir, self.epoch, self.step)}; "
                                  "--resume auto continues it")
            bar.close()
            seconds = time.perf_counter() - t0
            self.check_finite()
            train = summarise(all_reduce(self.epoch_sums.clone()), beta, self.groups, self.blocks)
            val = self.validate(beta)
            if val is not None and not math.isfinite(val["loss"]):
                raise NonFiniteLoss(f"non-finite validation loss at epoch {self.epoch + 1}")
            monitored = (val or train)["loss"]
            self.plateau.step(monitored)
            latent = self.latent_metrics()
            score = monitored if cfg.select_by == "val_loss" else latent[cfg.select_by]
            improved = score is not None and better(cfg.select_by, score, self.best["value"])
            if improved:
                self.best = {"by": cfg.select_by, "value": score, "epoch": self.epoch}
                self.export("best")
            rate = rows / max(seconds, 1e-9)
            if self.metrics is not None:
                self.metrics.set_train(train, beta, self.lr, self.epoch)
                if val is not None:
                    self.metrics.set_val(val)
                if latent is not None:
                    self.metrics.set_latent(latent)
            if ctx.is_main:
                self.log(epoch_line(self.epoch, cfg.epochs, beta, train, val, rate, latent, cfg.latent))
                self.history.append({"epoch": self.epoch + 1, "beta": beta, "lr": self.lr,
                                     "seconds": seconds, "samples_per_s": rate, "best": improved,
                                     **{f"train_{k}": v for k, v in train.items()},
                                     **({f"val_{k}": v for k, v in val.items()} if val else {}),
                                     **({f"latent_{k}": v for k, v in latent.items()} if latent else {})})
                with atomic_file(self.run_dir / "history.json") as f:
                    f.write(json.dumps(self.history, indent=1).encode())
            self.epoch += 1
            self.batch = 0
            self.epoch_sums.zero_()
            self.save_checkpoint()
        self.export("final")
        return {"epochs": self.epoch, "steps": self.step, "best": self.best}

    def close(self) -> None:
        """Before the process groups go (distributed.shutdown): end the loader workers and wait
        for the stop vote in flight."""
        self.feed.close()
        self.stop_vote.close()

    def finish(self, failed: bool = False) -> None:
        """Push the final summary (where asked) and stop serving metrics."""
        if self.metrics is None:
            return
        if failed:
            self.metrics.set_non_finite()
        if self.cfg.pushgateway:
            self.metrics.push(self.cfg.pushgateway)
        self.metrics.close()
