"""The training step captured once as a CUDA graph and replayed (`--cuda-graphs`).

An eager step of this model launches a few hundred small kernels (global BatchNorm, per-k sums,
Adam), so at batch 1024 a GPU waits on Python and the launch queue; a replay launches them all
with one call. A replay reads its inputs from fixed tensors (the batch, the noise, β, the step
counter and the learning rate, which Adam reads on the device with `capturable=True`) and
updates the model, optimizer state and metric sums in place, so it computes what the eager step
computes. A capture is trusted only after a check: from the same state, the replay and the
eager step must give the same loss and weights, at a changed learning rate (so a learning rate
baked into the graph is caught). Any error or difference falls back to eager steps, with one line.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..config import GRAPH_MODES

WARMUP_STEPS = 3  # eager steps (on a side stream) before capture, as torch's CUDA graph notes ask
CHECK_LR_FACTOR = 0.5


def graph_decision(mode: str, device: torch.device, world_size: int, compiled: bool,
                   draws: bool = False) -> tuple[bool, str]:
    """(capture the step?, the line that says how steps run and why). `draws`: the step draws
    random numbers itself (--thinning), which a replay would repeat unchanged."""
    if mode not in GRAPH_MODES:
        raise ValueError(f"cuda_graphs must be one of {', '.join(GRAPH_MODES)}, got {mode!r}")
    if mode == "off":
        return False, "step: eager (--cuda-graphs off)"
    if device.type != "cuda":
        return False, "step: eager (no CUDA device" + (": --cuda-graphs on needs one)" if mode == "on" else ")")
    if compiled:
        return False, "step: eager, torch.compile'd (--compile; it does not mix with --cuda-graphs)"
    if draws:
        return False, "step: eager (--thinning draws its binomial counts in the step; a captured graph would replay one draw)"
    if world_size > 1 and mode == "auto":
        return False, ("step: eager (--cuda-graphs auto stays eager under DDP: capturing NCCL collectives is "
                       "not yet verified here; --cuda-graphs on tries it, checked against the eager step)")
    return True, f"step: CUDA graph, captured after {WARMUP_STEPS} eager steps and checked against the eager step"


class CudaGraphStep:
    """A step function recorded into a torch.cuda.CUDAGraph; `output` is its returned tensor,
    rewritten by each replay."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.output: torch.Tensor | None = None

    def capture(self, fn: Callable[[], torch.Tensor]) -> None:
        torch.cuda.synchronize()
        # thread_local: the feed's reader threads may allocate (staging, copies) while we capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = fn()
        torch.cuda.synchronize()

    def replay(self) -> None:
        self.graph.replay()


def set_lr(opt: torch.optim.Optimizer, values: list[float]) -> None:
    """Set each group's learning rate in place (a tensor learning rate keeps its address)."""
    for group, value in zip(opt.param_groups, values):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def check_capture(graph, eager: Callable[[], torch.Tensor], state: list[torch.Tensor],
                  params: list[torch.Tensor], opt: torch.optim.Optimizer) -> str | None:
    """Why the captured step differs from the eager one (None where it does not). Both run
    from the same `state` (every tensor a step changes) at a changed learning rate; the state
    and learning rate are put back afterwards."""
    saved = [t.detach().clone() for t in state]
    before = torch.cat([p.detach().flatten() for p in params])
    lrs = [float(g["lr"]) for g in opt.param_groups]

    def put_back() -> None:
        with torch.no_grad():
            for t, s in zip(state, saved):
                t.copy_(s)

    try:
        set_lr(opt, [lr * CHECK_LR_FACTOR for lr in lrs])
        graph.replay()
        graphed_loss = graph.output.detach().float().clone()
        graphed = torch.cat([p.detach().flatten() for p in params])
        put_back()
        eager_loss = eager().detach().float()
        eager_params = torch.cat([p.detach().flatten() for p in params])
    finally:
        put_back()
        set_lr(opt, lrs)
    if not torch.allclose(graphed_loss, eager_loss, rtol=1e-4, atol=1e-6):
        return f"the captured step's loss {graphed_loss.item():.6g} differs from the eager step's {eager_loss.item():.6g}"
    # Mean over all weights: a Linear bias feeding BatchNorm has no true gradient, so Adam may
    # move it by ~lr either way on rounding noise alone; such few weights barely shift the mean.
    step = (eager_params - before).abs().mean()
    off = (graphed - eager_params).abs().mean()
    if not bool(off <= 1e-2 * step):
        return (f"the captured step's weights differ from the eager step's by {off.item():.3g} on average "
                f"(a step moves them {step.item():.3g})")
    return None
