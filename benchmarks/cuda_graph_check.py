"""GPU check: the captured step (--cuda-graphs) trains like the eager step, on CUDA.

Two short deterministic runs on the same synthetic store, `--cuda-graphs off` and `on`; after
each epoch the learning rate is cut (as ReduceLROnPlateau does), so a replay that kept the rate
of its capture would drift. Prints both loss trajectories and the largest weight difference,
and exits 1 where the losses differ beyond float32 rounding (1e-4 relative) or the step was not
captured. (Weights may differ more in a few places: a Linear bias feeding BatchNorm has no true
gradient, so Adam moves it on rounding noise.)

    python benchmarks/cuda_graph_check.py [--rows 20000] [--batch 1024] [--epochs 3]
    python benchmarks/cuda_graph_check.py --prior vamp:16 --latent-blocks 128,64,64   # the variants
    python benchmarks/cuda_graph_check.py --likelihood multinomial                    # issue 31's likelihood
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import build_store  # noqa: E402
from kmervae_core.config import LIKELIHOODS, MSE, TrainConfig  # noqa: E402
from kmervae_core.distributed import DistContext  # noqa: E402
from kmervae_core.training.step_graph import set_lr  # noqa: E402
from kmervae_core.training.trainer import Trainer  # noqa: E402


class CutEachEpoch(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """Cuts the learning rate at every epoch end, whatever the loss did."""

    def step(self, metrics: float) -> None:
        set_lr(self.optimizer, [float(g["lr"]) * 0.3 for g in self.optimizer.param_groups])


def train(store: str, out: Path, graphs: str, args: argparse.Namespace, device: torch.device) -> tuple[Trainer, list[str]]:
    cfg = TrainConfig(data=store, out=str(out), batch_size=args.batch, epochs=args.epochs, workers=2,
                      beta_warmup_epochs=0, metrics_port=0, latent_sample=0, deterministic=True,
                      cuda_graphs=graphs, cache=args.cache, resume="never", prior=args.prior,
                      latent_blocks=args.latent_blocks, likelihood=args.likelihood)
    lines: list[str] = []
    trainer = Trainer(cfg, DistContext(0, 1, 0, device), log=lines.append)
    trainer.tracker.plateau = CutEachEpoch(trainer.opt)
    trainer.run()
    return trainer, lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cache", default="auto")
    p.add_argument("--device", default="cuda")
    p.add_argument("--prior", default="normal", help="the latent prior, as python -m train --prior (e.g. vamp:16)")
    p.add_argument("--latent-blocks", type=lambda v: [int(s) for s in v.split(",")], default=[],
                   help="per-scale latent sizes, as python -m train --latent-blocks (e.g. 128,64,64)")
    p.add_argument("--likelihood", default=MSE, choices=LIKELIHOODS, help="the reconstruction term, as python -m train --likelihood")
    args = p.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="kmervae-graph-check-"))
    try:
        store = build_store(work, args.rows, 1024)
        (eager, _), (graphed, lines) = (train(store, work / mode, mode, args, device) for mode in ("off", "on"))
        for line in lines:
            if line.startswith(("CUDA graph", "cache")):
                print(line)
        print(f"{'epoch':>5} {'eager loss':>14} {'graph loss':>14} {'rel diff':>9} {'lr after':>9}")
        worst = 0.0
        for a, b in zip(eager.recorder.history, graphed.recorder.history, strict=True):
            rel = abs(a["train_loss"] - b["train_loss"]) / abs(a["train_loss"])
            worst = max(worst, rel)
            print(f"{a['epoch']:>5} {a['train_loss']:>14.6f} {b['train_loss']:>14.6f} {rel:>9.2e} {b['lr']:>9.2e}")
        diff = max((x - y).abs().max().item() for x, y in zip(eager.model.state_dict().values(),
                                                                graphed.model.state_dict().values())
                   if x.is_floating_point())
        print(f"largest weight difference: {diff:.3g}; steps {eager.runner.step} eager, {graphed.runner.step} graphed")
        ok = graphed.runner.graph is not None and worst <= 1e-4  # a stale learning rate moves losses by ~1e-2
        print("CUDA graph check:", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
