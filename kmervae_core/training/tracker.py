"""What the end of an epoch decides: whether this epoch is the best so far (its model is
exported as `_best`), and the learning rate's plateau schedule. Both watch the same figure and
both restart when the β warm-up ends (losses under a rising β are not comparable), so one part
owns them."""
from __future__ import annotations

import math

import torch

from ..config import TrainConfig, warmup_end_epoch


# the ReduceLROnPlateau state that the settings (plateau_factor, plateau_patience, min_lr) give
PLATEAU_SETTINGS = ("factor", "patience", "min_lrs", "default_min_lr")


def better(select_by: str, value: float, best: float) -> bool:
    """Lower validation loss, or higher distance correlation / kNN accuracy."""
    return value < best if select_by == "val_loss" else value > best


def measure(settings: dict) -> list:
    """What the best epoch's value is a value of: the metric, and for the latent metrics the
    latent sample they are computed on."""
    by = settings["select_by"]
    return [by] if by == "val_loss" else [by, settings["latent_sample"], settings["latent_pairs"]]


class Tracker:
    """`best`: {"by", "value", "epoch"} of the best epoch so far (-1: none yet)."""

    def __init__(self, cfg: TrainConfig, opt: torch.optim.Optimizer) -> None:
        self.cfg, self.opt = cfg, opt
        self.plateau = self._new_plateau()
        self.best = self._no_best()

    def _no_best(self) -> dict:
        worst = math.inf if self.cfg.select_by == "val_loss" else -math.inf
        return {"by": self.cfg.select_by, "value": worst, "epoch": -1}

    def _new_plateau(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        c = self.cfg
        return torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=c.plateau_factor,
                                                          patience=c.plateau_patience, min_lr=c.min_lr)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def start_epoch(self, epoch: int, batch: int) -> str | None:
        """At the first epoch after the β warm-up (entered at its start): forget the best epoch
        and the plateau's history; the line that says so, else None."""
        if epoch == warmup_end_epoch(self.cfg) and batch == 0 and epoch > 0:
            self.best = self._no_best()
            self.plateau = self._new_plateau()
            return (f"β warm-up over: best-checkpoint and plateau tracking restart at epoch {epoch + 1} "
                    f"(lr {self.lr:g})")
        return None

    def end_epoch(self, epoch: int, monitored: float, latent: dict | None) -> bool:
        """Step the plateau schedule on `monitored` (the validation loss, or the training loss
        without validation rows) and say whether this epoch is the best by `--select-by`."""
        self.plateau.step(monitored)
        by = self.cfg.select_by
        score = monitored if by == "val_loss" else latent[by]
        if score is None or not better(by, score, self.best["value"]):
            return False
        self.best = {"by": by, "value": score, "epoch": epoch}
        return True

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict(), "best": dict(self.best)}

    def load_state_dict(self, state: dict, saved_cfg: dict) -> str | None:
        """The restored schedule and best epoch, under this run's settings where they differ from
        `saved_cfg` (the checkpoint's): its --lr replaces the restored rate, its plateau_* the
        restored schedule's, and under another measure (--select-by, --latent-sample/pairs)
        best-epoch tracking restarts, since the saved best is a value of another figure. The line
        that says so, else None."""
        plateau = self._new_plateau()
        configured = {k: v for k, v in plateau.state_dict().items() if k in PLATEAU_SETTINGS}
        plateau.load_state_dict({**state["plateau"], **configured})
        self.plateau = plateau
        if self.cfg.lr != saved_cfg["lr"]:
            for group in self.opt.param_groups:
                group["lr"] = self.cfg.lr
        self.best = dict(state["best"])
        if measure(saved_cfg) != measure(self.cfg.to_dict()):
            self.best = self._no_best()
            return (f"best-epoch tracking restarts by {self.cfg.select_by} "
                    f"(vae_multi_best.pt so far: by {state['best']['by']})")
        return None
