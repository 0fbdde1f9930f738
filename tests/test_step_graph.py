"""The captured training step (`--cuda-graphs`): where it is used, that replaying it computes
what the eager step computes, and that a capture which does not is refused with one line.

There is no GPU here, so a stand-in records the step function and replays it by calling it:
like a CUDA graph it runs only on the fixed tensors (batch, noise, β, step counter, learning
rate) captured once, so these tests check that plumbing and the capture check, not CUDA itself.
"""
from __future__ import annotations

import json

import pytest
import torch

from kmervae_core.config import TrainConfig
from kmervae_core.distributed import DistContext
from kmervae_core.training.step_graph import graph_decision, set_lr
from kmervae_core.training.trainer import Trainer


class Replay:
    """Capture records the step without running it; replay runs it on the fixed tensors."""

    def __init__(self) -> None:
        self.output = None

    def capture(self, fn) -> None:
        self.fn = fn

    def replay(self) -> None:
        self.output = self.fn()


class DoesNothing(Replay):
    def replay(self) -> None:
        self.output = torch.zeros(())


def train(store: str, out, graph_class=None, epochs: int = 2, **settings) -> tuple[Trainer, list[str]]:
    cfg = TrainConfig(data=store, out=str(out), batch_size=48, workers=0, hidden=[64, 32], latent=8, epochs=epochs,
                      metrics_port=0, latent_sample=0, cache="none", deterministic=True, resume="never", **settings)
    lines: list[str] = []
    trainer = Trainer(cfg, DistContext(0, 1, 0, torch.device("cpu")), log=lines.append)
    if graph_class is not None:  # what --cuda-graphs does on a GPU, with the stand-in
        trainer.runner.graph_wanted = True
        trainer.runner.graph_class = graph_class if isinstance(graph_class, type) else graph_class(trainer)
    trainer.run()
    return trainer, lines


def losses(trainer: Trainer) -> list[tuple[float, float]]:
    return [(h["train_loss"], h["val_loss"]) for h in trainer.recorder.history]


def same_weights(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


@pytest.fixture(scope="module")
def eager(train_store, tmp_path_factory):
    return train(train_store[0], tmp_path_factory.mktemp("eager"))[0]


def test_replayed_steps_train_exactly_like_eager_steps(train_store, tmp_path, eager):
    graphed, lines = train(train_store[0], tmp_path, Replay)
    assert graphed.runner.graph is not None
    assert "CUDA graph: captured at step 4; replay matches the eager step" in lines
    assert losses(graphed) == losses(eager)
    assert same_weights(graphed, eager)
    assert graphed.runner.step == eager.runner.step and int(graphed.runner.step_t) == graphed.runner.step


def test_a_multinomial_step_replays_exactly_like_its_eager_step(train_store, tmp_path):
    """The count likelihood (its frequencies, counts and per-k metrics) is all in the captured step:
    the contig lengths are copied into a fixed tensor before each replay, like the batch."""
    eager_run, _ = train(train_store[0], tmp_path / "eager", likelihood="multinomial")
    replayed, lines = train(train_store[0], tmp_path / "replay", Replay, likelihood="multinomial")
    assert "CUDA graph: captured at step 4; replay matches the eager step" in lines
    assert losses(replayed) == losses(eager_run) and same_weights(replayed, eager_run)


def test_a_capture_that_differs_from_the_eager_step_is_refused_and_training_goes_on_eagerly(train_store, tmp_path, eager):
    refused, lines = train(train_store[0], tmp_path, DoesNothing)
    notes = [line for line in lines if line.startswith("CUDA graph")]
    assert len(notes) == 1 and "not used (the captured step's loss 0 differs" in notes[0], notes
    assert refused.runner.graph is None and not refused.runner.graph_wanted
    assert losses(refused) == losses(eager) and same_weights(refused, eager)  # the check left no trace


def test_a_learning_rate_baked_into_the_capture_is_caught(train_store, tmp_path, eager):
    """A replay must use the learning rate of the moment (ReduceLROnPlateau changes it)."""
    def baked(trainer):
        class BakedLr(Replay):
            def capture(self, fn) -> None:
                super().capture(fn)
                self.lr = [float(g["lr"]) for g in trainer.opt.param_groups]

            def replay(self) -> None:
                now = [float(g["lr"]) for g in trainer.opt.param_groups]
                set_lr(trainer.opt, self.lr)
                super().replay()
                set_lr(trainer.opt, now)
        return BakedLr

    refused, lines = train(train_store[0], tmp_path, baked)
    notes = [line for line in lines if line.startswith("CUDA graph")]
    assert len(notes) == 1 and "weights differ from the eager step's" in notes[0], notes
    assert same_weights(refused, eager)


CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_the_step_is_captured_on_one_gpu_by_default_and_under_ddp_when_asked():
    assert graph_decision("auto", GPU, 1, False)[0]
    assert graph_decision("on", GPU, 8, False)[0]


def test_elsewhere_the_step_is_eager_and_the_line_says_why():
    off = {mode: graph_decision(*mode) for mode in [("auto", CPU, 1, False), ("on", CPU, 1, False),
                                                   ("off", GPU, 1, False), ("auto", GPU, 8, False),
                                                   ("on", GPU, 1, True)]}
    assert not any(wanted for wanted, _ in off.values())
    assert "no CUDA device: --cuda-graphs on needs one" in off[("on", CPU, 1, False)][1]
    assert "under DDP" in off[("auto", GPU, 8, False)][1] and "--cuda-graphs on" in off[("auto", GPU, 8, False)][1]
    assert "--compile" in off[("on", GPU, 1, True)][1]
    thinning = graph_decision("auto", GPU, 1, False, True)
    assert not thinning[0] and "--thinning draws its binomial counts in the step" in thinning[1]


def test_an_unknown_graph_mode_is_refused():
    with pytest.raises(ValueError, match="cuda_graphs must be one of"):
        graph_decision("always", GPU, 1, False)


DDP_SCRIPT = '''
import json, sys, torch
from kmervae_core.config import TrainConfig
from kmervae_core.distributed import init_distributed, shutdown
from kmervae_core.training.trainer import Trainer
from tests.test_step_graph import Replay
store, out, replay = sys.argv[1], sys.argv[2], sys.argv[3] == "replay"
ctx = init_distributed()
cfg = TrainConfig(data=store, out=out, batch_size=48, workers=0, hidden=[64, 32], latent=8, epochs=2,
                  metrics_port=0, latent_sample=0, cache="none", deterministic=True, resume="never")
lines = []
trainer = Trainer(cfg, ctx, log=lines.append)
if replay:
    trainer.runner.graph_wanted, trainer.runner.graph_class = True, Replay
trainer.run()
if ctx.is_main:
    print(json.dumps({"losses": [(h["train_loss"], h["val_loss"]) for h in trainer.recorder.history], "lines": lines,
                      "captured": trainer.runner.graph is not None}))
trainer.close()
shutdown()
'''


@pytest.mark.slow
def test_under_ddp_a_replayed_step_averages_gradients_like_ddp(train_store, tmp_path):
    """`--cuda-graphs on` under DDP: the captured step cannot use DDP's hooks, so it all-reduces
    the gradients itself; it must train as the eager DDP step does (here on gloo)."""
    from tests.test_train import torchrun
    script = tmp_path / "ddp_replay.py"
    script.write_text(DDP_SCRIPT)
    results = {}
    for mode in ("eager", "replay"):
        proc = torchrun(script, train_store[0], tmp_path / mode, mode, module=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["replay"]["captured"] and not results["eager"]["captured"]
    assert "CUDA graph: captured at step 4; replay matches the eager step" in results["replay"]["lines"]
    for a, b in zip(results["eager"]["losses"], results["replay"]["losses"], strict=True):
        assert a == pytest.approx(b, rel=1e-6)
