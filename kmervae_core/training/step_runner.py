"""One optimisation step, and everything it reads and writes: the noise, the step counter, β,
the metric sums, the non-finite flag, autocast, and the CUDA graph (step_graph.py) it may be
replayed from.

The step is a part of its own because capture dictates its shape: a replay reads and writes
tensors at fixed addresses only, so the counter, β and the sums live on the device here and the
host's step number is kept beside them, changed only by this class. The loop (trainer.py)
calls `runner(x)` and never sees which way the step ran."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from ..config import TrainConfig
from ..distributed import DistContext, all_reduce
from ..store.kmers import KGroup
from ..model.likelihood import Multinomial, nt_xent
from ..model.losses import N_SUMS, vae_loss
from .step_graph import WARMUP_STEPS, CudaGraphStep, check_capture, graph_decision

NO_STEP = 2**62


class StepRunner:
    """`model` is the VAE, `net` what the eager step calls (DDP's wrapper, torch.compile's, or
    the model); `batch_slice` this rank's rows of the global batch (epoch_plan.RankRows);
    `counts` the multinomial likelihood (None: the reference's squared error). `epoch_sums` (the
    epoch's, reduced at checkpoints) and `window_sums` (since the last log point) are what the
    step adds its loss sums to."""

    def __init__(self, model: torch.nn.Module, net: torch.nn.Module, opt: torch.optim.Optimizer,
                 cfg: TrainConfig, ctx: DistContext, batch_slice: slice, groups: tuple[KGroup, ...],
                 weights: dict[int, float], log: Callable[[str], None], counts: Multinomial | None = None) -> None:
        self.model, self.net, self.opt, self.cfg, self.ctx, self.log = model, net, opt, cfg, ctx, log
        self.groups, self.weights, self.counts = groups, weights, counts
        self.graph_wanted, self.mode_line = graph_decision(cfg.cuda_graphs, ctx.device, ctx.world_size, cfg.compile,
                                                           bool(cfg.thinning))
        self.configure_adam()
        device = ctx.device
        self.noise = torch.Generator(device=device)
        self.eps_full = torch.empty(cfg.batch_size, cfg.latent, device=device)
        self.eps = self.eps_full[batch_slice]
        width = sum(g.size for g in groups)  # the trained columns: x's width
        self.x_noise_full = torch.empty(cfg.batch_size, width, device=device) if cfg.input_noise else None
        self.x_noise = None if self.x_noise_full is None else self.x_noise_full[batch_slice]
        rank_rows = batch_slice.stop - batch_slice.start
        self.row_w = torch.ones(rank_rows, device=device) if cfg.length_weight else None  # the batch's, copied in
        self.row_len = torch.ones(rank_rows, device=device) if counts is not None else None  # likewise
        self.thin_noise = torch.Generator(device=device) if cfg.thinning else None
        self.rank_start = batch_slice.start
        self.static_x: torch.Tensor | None = None  # the captured step's batch
        self.beta_t = torch.zeros((), device=device)
        self.step = 0
        self.step_t = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=device)
        self.epoch_sums = torch.zeros(N_SUMS, device=device, dtype=torch.float64)
        self.window_sums = torch.zeros_like(self.epoch_sums)
        self.graph, self.graph_class, self.eager_steps = None, CudaGraphStep, 0
        self._side_stream = torch.cuda.Stream(device) if self.graph_wanted else None

    def configure_adam(self) -> None:
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

    # ---- state: the step number and the interrupted epoch's sums ----

    def start_at(self, step: int) -> None:
        """Count from `step` (a new run: 0; a resumed one: the checkpoint's)."""
        self.step = step
        self.step_t.fill_(step)
        self.first_bad.fill_(NO_STEP)

    def reduce_epoch_sums(self) -> None:
        """Before a checkpoint: the epoch's partial sums of every rank, reduced into rank 0's
        (the others restart from zero), so that the checkpoint holds them whole."""
        all_reduce(self.epoch_sums)
        if not self.ctx.is_main:
            self.epoch_sums.zero_()

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch_sums": self.epoch_sums.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Rank 0 carries the reduced partial sums of the interrupted epoch; the others start at 0."""
        self.start_at(state["step"])
        sums = torch.nn.functional.pad(state["epoch_sums"], (0, N_SUMS - len(state["epoch_sums"])))
        self.epoch_sums = sums.to(self.ctx.device) if self.ctx.is_main else torch.zeros_like(self.epoch_sums)

    # ---- the step ----

    def __call__(self, x: torch.Tensor, row_weights: torch.Tensor | None = None,
                 lengths: torch.Tensor | None = None) -> None:
        """One step on a batch of the trained columns, on the device (and its rows' weights under
        --length-weight, its contig lengths under --likelihood multinomial): replayed from the
        captured graph once there is one, else eager."""
        self.draw_noise()
        if self.row_w is not None:
            self.row_w.copy_(row_weights)
        if self.row_len is not None:
            self.row_len.copy_(lengths)
        if self.graph_wanted and self.graph is None and self.eager_steps >= WARMUP_STEPS:
            self.graph = self.capture(x)
        if self.graph is not None:
            self.static_x.copy_(x)
            self.graph.replay()
        else:
            with self._eager_stream():
                self.step_body(x)
            self.eager_steps += 1
        self.step += 1

    def draw_noise(self) -> None:
        """Reparameterisation noise (and `--input-noise`'s) for the whole global batch, drawn from
        (seed, step) into `eps_full` (`x_noise_full`); this rank uses its rows (`eps`,
        `x_noise`), so any world size draws the same noise. `--thinning`'s binomial draws depend
        on the counts, which a rank holds of its own rows only: they are drawn in the step from
        (seed, step, the rank's first row), so they are the same on a rerun at the same world size."""
        self.noise.manual_seed(self.cfg.seed * 1_000_003 + self.step)
        if self.thin_noise is not None:
            self.thin_noise.manual_seed((self.cfg.seed * 1_000_003 + self.step) * 1_000_033 + self.rank_start + 1)
        torch.randn(self.eps_full.shape, generator=self.noise, out=self.eps_full)
        if self.x_noise_full is not None:
            torch.randn(self.x_noise_full.shape, generator=self.noise, out=self.x_noise_full)

    def autocast(self):
        enabled = self.cfg.precision == "bf16" and self.ctx.device.type == "cuda"
        # a captured step must not keep autocast's weight-cast cache (torch's CUDA graph notes)
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled,
                              cache_enabled=not self.graph_wanted)

    def step_body(self, x: torch.Tensor, graphed: bool = False) -> torch.Tensor:
        """One optimisation step on device tensors only (no host values, no syncs), so that it
        can be captured. Under DDP a captured step averages gradients itself (DDP's hooks do
        it for the eager step). Returns the loss."""
        cfg = self.cfg
        seen = x if not cfg.thinning else self.counts.thinned(x, self.row_len, cfg.thinning, self.thin_noise)
        seen = seen if self.x_noise is None else seen + cfg.input_noise * self.x_noise  # denoising: a noisy input
        with self.autocast():
            recon, mu, log_var, kl = (self.model if graphed else self.net)(seen, self.eps)
            if cfg.contrastive:  # a second thinned view of each row, encoded alone
                pair = self.model.encoder(self.counts.thinned(x, self.row_len, cfg.thinning, self.thin_noise))[0]
        contrast = nt_xent(mu, pair, cfg.contrastive_temperature) if cfg.contrastive else None  # in float32
        loss, sums = vae_loss(x, recon, mu, log_var, self.beta_t, self.groups, self.weights, kl,  # the clean row
                              self.row_w, self.counts, self.row_len, contrast, cfg.contrastive)
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
        None (eager from here on) with one line saying why. Every rank takes the same way and
        makes the same collectives: the ranks agree that every one captured before any runs the
        check (whose replay and eager step all-reduce gradients), then agree on the check."""
        graph = self.graph_class()

        def capture() -> None:
            self.static_x = x.detach().clone()
            self.opt.zero_grad(set_to_none=True)
            graph.capture(lambda: self.step_body(self.static_x, graphed=True))

        problem = _failure("capture failed", capture)
        if self._everywhere(problem is None):
            problem = _failure("check failed", lambda: check_capture(
                graph, lambda: self.step_body(self.static_x), self.step_state(), list(self.model.parameters()), self.opt))
            if self._everywhere(problem is None):
                self.log(f"CUDA graph: captured at step {self.step + 1}; replay matches the eager step")
                return graph
        self.graph_wanted = False
        self.log(f"CUDA graph: not used ({problem or 'another rank could not capture'}); eager steps from here")
        return None

    def _everywhere(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (one all-reduce, made by every rank)."""
        return bool(all_reduce(torch.tensor([int(ok)], device=self.ctx.device), torch.distributed.ReduceOp.MIN).item())

    def first_non_finite(self) -> tuple[str, int] | None:
        """("loss" or "weights", the 0-based step) of the first non-finite loss since the start,
        or of weights or BatchNorm statistics gone non-finite now (training losses use batch
        statistics, so a running variance can overflow while the loss stays finite); None
        where all is finite. One sync, agreed by every rank."""
        weights_ok = torch.stack([torch.isfinite(t).all() for t in self.model.state_dict().values()
                                  if t.is_floating_point()]).all()
        flags = torch.stack([self.first_bad, torch.where(weights_ok, NO_STEP, self.step - 1)])
        step_loss, step_weights = (int(v) for v in all_reduce(flags, torch.distributed.ReduceOp.MIN).tolist())
        if min(step_loss, step_weights) == NO_STEP:
            return None
        return ("loss", step_loss) if step_loss <= step_weights else ("weights", step_weights)


def _failure(what: str, fn: Callable[[], str | None]) -> str | None:
    """`fn()`'s problem, or "what: the first line of the RuntimeError it raised"."""
    try:
        return fn()
    except RuntimeError as e:
        return f"{what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
