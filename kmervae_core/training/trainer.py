"""The training loop: the reference VAE, one process or DDP, with exact mid-epoch resume.

`Trainer.run` is the whole story on one screen; each decision is handed to the part that owns
it (docs/design.md, "The trainer"):
  feed/rank_feed.py  where this rank's batches come from (the stream, or the row cache)
  step_runner.py  one optimisation step: noise, step counter, autocast, CUDA graph capture
  checkpoint.py   which checkpoint to resume from, when the next is due, writing it, exports
  tracker.py      the best epoch and the plateau learning-rate schedule
  validator.py    validation loss and the latent metrics (on the latent sample)
  recorder.py     progress bar, epoch line, history.json, Prometheus
The Trainer itself keeps the position in the epoch plan (epoch, batch) and says what a
checkpoint holds (`state_dict`)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..atomic import atomic_file
from .checkpoint import Checkpointer, initial_weights
from ..config import DATA_CLR, MULTINOMIAL, TrainConfig, beta_at, resume_changes, saved_settings
from ..distributed import DistContext, StopVote, all_reduce, ddp_group
from ..errors import KmervaeError
from ..feed.rank_feed import Feed
from ..outputs import one_line
from ..store.contract import store_identity
from ..store.kmers import N_FEATURES, block_columns, selected_groups
from ..model.likelihood import Multinomial
from ..model.losses import summarise
from ..model.vae import VAE
from .recorder import Recorder
from .step_runner import StepRunner
from .tracker import Tracker
from .validator import Validator
from ..words import counted


class NonFiniteLoss(KmervaeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Stopped(Exception):
    """The run was asked to stop (a signal reached some rank): every rank finished the same
    step and a checkpoint of it was written; `--resume auto` continues exactly."""


def set_numerics(cfg: TrainConfig, device: torch.device) -> None:
    """Deterministic kernels where asked; TF32 matrix products on CUDA otherwise allowed."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class Trainer:
    """`stop`: asked at every step whether this rank should stop (a signal handler's flag); where
    it says so on any rank, every rank finishes the step, a checkpoint is written, and `run`
    raises Stopped."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, log=print, stop: Callable[[], bool] = lambda: False) -> None:
        self.ctx, self.log = ctx, log
        self.checkpointer = Checkpointer(cfg, writer=ctx.is_main)
        self.store = store_identity(cfg.data)  # recorded in each checkpoint: a resume must find the same content
        self.cfg = cfg = self.checkpointer.settle(cfg, ctx.world_size, self.store)
        self.run_dir = Path(cfg.out)
        set_numerics(cfg, ctx.device)
        columns, groups = selected_groups(cfg.kmers)
        self.feed = Feed(cfg, ctx, columns if len(columns) < N_FEATURES else None, log)
        self.batches = self.feed.batches
        torch.manual_seed(cfg.seed)
        blocks = cfg.block_names()
        self.model = VAE(len(columns), tuple(cfg.hidden), cfg.latent, torch.as_tensor(columns), cfg.prior,
                         [torch.as_tensor(c) for c in block_columns(cfg.kmers, cfg.block_kmers)] if blocks else None,
                         cfg.block_sizes()).to(ctx.device)
        net = DDP(self.model, process_group=ddp_group()) if ctx.active else self.model
        if cfg.init_from and self.checkpointer.path is None:  # before anything is written, so a refusal leaves nothing
            self.start_from(cfg.init_from)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.runner = StepRunner(self.model, torch.compile(net) if cfg.compile else net, self.opt, cfg, ctx,
                                 self.feed.train_stream.rank_rows.batch_slice, groups, cfg.weights_by_k(), log,
                                 Multinomial(groups, self.feed.clr, ctx.device) if cfg.likelihood == MULTINOMIAL else None)
        self.tracker = Tracker(cfg, self.opt)
        self.validator = Validator(cfg, ctx, self.model, self.feed, self.runner, columns, blocks)
        self.recorder = Recorder(cfg, ctx, groups, blocks, log=log, info={
            "cache": self.feed.tier, "cuda_graphs": "wanted" if self.runner.graph_wanted else "off"})
        self.stop_vote = StopVote(stop)
        self.epoch, self.batch = 0, 0

    def run(self) -> dict:
        cfg, runner = self.cfg, self.runner
        self.announce()
        self.resume()
        while self.epoch < cfg.epochs:
            beta = beta_at(cfg, self.epoch)
            runner.beta_t.fill_(beta)
            if note := self.tracker.start_epoch(self.epoch, self.batch):
                self.log(note)
            for x, rows, wait in self.recorder.batches(self.epoch, self.batch, self.batches,
                                                       self.feed.train(self.epoch, self.batch)):
                runner(x, self.feed.row_weights(rows), self.feed.row_lengths(rows))
                self.batch += 1
                self.recorder.step(len(x), wait)
                if runner.step % cfg.log_every == 0:
                    self.check_finite()
                    self.recorder.publish_window(runner.window_sums, beta, self.tracker.lr, self.epoch)
                if self.checkpointer.due(runner.step, self.batch, self.batches):
                    self.save()
                if self.stop_vote.poll():
                    path = self.save()
                    raise Stopped(f"stopped at epoch {self.epoch + 1}, step {runner.step} (batch {self.batch}) on a "
                                  f"signal, after writing {path}; --resume auto continues it")
            self.end_epoch(beta)
            self.epoch, self.batch = self.epoch + 1, 0
            runner.epoch_sums.zero_()
            self.save()
        self.checkpointer.export(self.model, "final")
        return {"epochs": self.epoch, "steps": runner.step, "best": self.tracker.best,
                "validated": self.validator.val_rows > 0}

    def end_epoch(self, beta: float) -> None:
        """Validate, choose the best epoch (exported), step the schedule, record."""
        self.check_finite()
        train = summarise(all_reduce(self.runner.epoch_sums.clone()), beta, self.runner.groups, self.validator.blocks)
        val = self.validator.validate(beta)
        if val is not None and not math.isfinite(val["loss"]):
            raise NonFiniteLoss(f"non-finite validation loss at epoch {self.epoch + 1}")
        latent = self.validator.latent_metrics()
        best = self.tracker.end_epoch(self.epoch, (val or train)["loss"], latent)
        if best:
            self.checkpointer.export(self.model, "best")
            self.validator.keep_latents(self.epoch)
        self.recorder.end_epoch(self.epoch, beta, self.tracker.lr, train, val, latent, best)

    def announce(self) -> None:
        """Rank 0 records the settings in force and the store's CLR (RUN/config.json, read by the
        report and by train.encode) and says how the run will go: settings, step mode, data tier,
        metrics address."""
        if not self.ctx.is_main:
            return
        cfg = self.cfg.to_dict()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.run_dir / "config.json") as f:
            f.write(json.dumps({**cfg, DATA_CLR: self.feed.clr.flag}, indent=1).encode())
        self.log(f"config ({counted(self.ctx.world_size, 'process', 'processes')} on {self.ctx.device.type}, "
                 f"{counted(self.batches, 'batch', 'batches')} an epoch): " + json.dumps(cfg))
        self.log(self.runner.mode_line)
        self.log(self.feed.message)
        self.log(self.feed.memory_line(self.host_besides_feed()))
        if line := self.validator.shortfall():
            self.log(line)
        if self.recorder.metrics_url:
            self.log(f"metrics: {self.recorder.metrics_url} (Prometheus scrape target; see deploy/README.md)")

    def host_besides_feed(self) -> dict[str, int]:
        """Host bytes this rank holds besides its feed, by name: on a CPU rank the model with its
        gradients and Adam's two moments; on rank 0 the latent sample."""
        out = {}
        if self.ctx.device.type == "cpu":
            out["the model, its gradients and Adam's moments"] = 4 * sum(
                p.numel() * p.element_size() for p in self.model.parameters())
        if self.validator.heldout is not None:
            out["the latent sample"] = self.validator.heldout["x"].nbytes
        return out

    # ---- checkpoints ----

    def state_dict(self) -> dict:
        """Everything a checkpoint holds, one entry per part that owns state beside the settings
        it was written under: the one place to add a field (and to load it below)."""
        return {"config": self.cfg.to_dict(), "world_size": self.ctx.world_size, "store": self.store,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "tracker": self.tracker.state_dict(), "runner": self.runner.state_dict(),
                "trainer": {"epoch": self.epoch, "batch": self.batch, "rng_cpu": torch.get_rng_state()}}

    def load_state_dict(self, s: dict) -> None:
        """Continue from checkpoint state `s` (nested by part; checked by Checkpointer.settle), at
        any world size the plan allows, with the recipe settings changed since it in force."""
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        note = self.tracker.load_state_dict(s["tracker"], saved_settings(s["config"]))
        self.runner.configure_adam()
        self.runner.load_state_dict(s["runner"])
        self.epoch, self.batch = s["trainer"]["epoch"], s["trainer"]["batch"]
        torch.set_rng_state(s["trainer"]["rng_cpu"])
        self.recorder.keep_history(self.epoch)
        if changed := resume_changes(s["config"], self.cfg):
            self.log(f"settings changed since the checkpoint, in force from step {self.runner.step + 1}: "
                     + ", ".join(changed) + (f"; {note}" if note else ""))

    def resume(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        saved = self.checkpointer.take()
        if saved is None:
            if self.cfg.init_from:
                self.log(f"starting at epoch 1 from the weights of {self.cfg.init_from} (optimizer, schedule and "
                         "epoch plan new)")
            return
        if self.checkpointer.note:
            self.log(self.checkpointer.note)
        if self.cfg.init_from:
            self.log(f"--init-from {self.cfg.init_from} not applied: this run resumes its own checkpoint")
        self.load_state_dict(saved)
        if self.epoch >= self.cfg.epochs:
            self.log(f"{self.checkpointer.path}: this run already finished its {counted(self.cfg.epochs, 'epoch')}; "
                     "nothing to train (raise --epochs to train on)")
            return
        writers = counted(saved["world_size"], "process", "processes") if "world_size" in saved else "? processes"
        self.log(f"resuming from {self.checkpointer.path}: epoch {self.epoch + 1}, batch {self.batch}, "
                 f"step {self.runner.step} (written by {writers}, now "
                 f"{self.ctx.world_size}; {counted(self.cfg.partitions, 'partition')})")

    def start_from(self, path: str) -> None:
        """A new run whose model starts from the weights in `path` (--init-from)."""
        try:
            self.model.load_state_dict(initial_weights(path))
        except RuntimeError as e:  # shapes or names that are not this model's: torch's second line says which
            detail = (str(e).strip().splitlines() or [""])[1:2] or [str(e)]
            raise KmervaeError(f"--init-from {path}: its weights do not fit this run's model (hidden, latent, kmers, "
                               f"prior and blocks must be those it was trained with): {one_line(detail[0], 100)}") from None

    def save(self) -> Path:
        """Reduce the epoch's partial sums into rank 0, which writes the checkpoint."""
        self.check_finite()
        self.runner.reduce_epoch_sums()
        return self.checkpointer.save(self.state_dict, self.epoch, self.runner.step)

    def check_finite(self) -> None:
        """Stop on a non-finite loss or weights (StepRunner.first_non_finite), naming the step."""
        bad = self.runner.first_non_finite()
        if bad is None:
            return
        what, step = bad
        epoch, batch = divmod(step, self.batches)
        raise NonFiniteLoss(f"non-finite {what} at epoch {epoch + 1}, step {step + 1} (batch {batch + 1}); "
                            f"{self.checkpointer.last_good()}")

    # ---- the end ----

    def close(self) -> None:
        """Before the process groups go (distributed.shutdown): end the reader threads and wait
        for the stop vote in flight."""
        self.feed.close()
        self.stop_vote.close()

    def finish(self, failed: bool = False) -> None:
        self.recorder.finish(failed)
