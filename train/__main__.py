"""python -m train / torchrun --nproc_per_node=N -m train: train the VAEMulti reference model on
a kmervae store (DDP over nccl on CUDA, gloo on CPU), with checkpoints, exact resume and exports."""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading

from kmervae_core.config import ROLES, TrainConfig, load_config, shown
from kmervae_core.errors import KmervaeError, ReaderFailed
from kmervae_core.limits import return_large_blocks
from kmervae_core.outputs import WriteFailed
from kmervae_core.run_lock import RunLock
from kmervae_core.words import counted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # preemption, eviction; Slurm's advance warning; Ctrl-C

EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_READER_FAILED = 2, 3, 4
EXIT_STOPPED = 143  # 128 + SIGTERM, as schedulers expect of a terminated task (Kubeflow's ExitCode policy retries 128-255)


def _list(item):
    return lambda text: [item(v) for v in text.split(",")]


def _int_or_auto(text: str) -> int | str:
    if text == "auto" or text.isdigit():
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"expected auto or a non-negative integer, got {text!r}")


# how a flag's text becomes a TrainConfig field of each annotated type
PARSE = {"int": int, "int | str": _int_or_auto, "float": float, "str": str, "list[int]": _list(int), "list[float]": _list(float),
         "list[list[int]]": lambda text: [_list(int)(block) for block in text.split("/")]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """One flag per TrainConfig field, built from the field (name, type, default, role, help,
    choices; a boolean's as --x/--no-x); a flag not given stays None, so that the TOML file's value
    or the default holds."""
    p = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, argument_default=None,
        epilog="Defaults are the reference recipe; a --config TOML file (keys as the long flags, with "
               "underscores) overrides them and flags override the file. Exit status: 0 done, 2 bad input, "
               "3 non-finite loss, 4 a reader thread failed or hung (the last good checkpoint is kept), 143 stopped by "
               "SIGTERM, SIGUSR1 or Ctrl-C (every rank finished its step and a checkpoint was written; --resume auto "
               "continues exactly); a second Ctrl-C stops at once, keeping the last checkpoint. Every rank exits "
               "with the same status and one of them prints the line. torchrun itself exits 1 on any of these; "
               "python -m train.launch, which takes torchrun's options, exits with the ranks' status.")
    p.epilog += (" On resume, a setting that differs from the checkpoint's acts by its role (in brackets): "
                 + "; ".join(f"[{role}] {what}" for role, what in ROLES.items()) + ".")
    p.add_argument("--config", help="TOML file of settings")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata['help']} (default {shown(getattr(defaults, f.name))}) [{f.metadata['role']}]"
        if f.type == "bool":  # --x and --no-x, so that a flag can undo the file's true
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            p.add_argument(flag, type=PARSE[f.type], choices=f.metadata["choices"], help=text)
    return p.parse_args(argv)


def batch_refusal(batch_size: int, world_size: int) -> str | None:
    """Why the global batch cannot be shared by `world_size` processes, with the sizes that can."""
    if batch_size % world_size == 0:
        return None
    below = batch_size - batch_size % world_size
    fits = " or ".join(f"--batch-size {b}" for b in (below, below + world_size) if b > 0)
    return (f"--batch-size {batch_size} does not divide over {world_size} processes (each takes an equal share "
            f"of the global batch): use {fits}, or a process count that divides {batch_size}")


class StopRequest:
    """The signal handlers' flag. The first SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) asks every rank
    to stop at one step with a checkpoint (the trainer's stop vote); repeats of SIGTERM or SIGUSR1
    are ignored (Slurm and torchrun may both pass one on). After a Ctrl-C, a second Ctrl-C, or the
    SIGTERM torchrun sends on one, ends the rank at once, even inside a collective: the signal's
    default action is put back, so the kernel ends it (the last checkpoint stays whole)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._asked)

    def _asked(self, sig: int, _frame) -> None:
        if sig == signal.SIGINT or self.event.is_set():
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        if sig == signal.SIGINT:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    @staticmethod
    def leaving() -> None:
        """The rank is leaving (done, stopped or failed): SIGTERM and SIGUSR1 are ignored from here,
        so that the SIGTERM torchrun sends the ranks still tearing down, when the first has left,
        does not change their exit status."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            if signal.getsignal(sig) is not signal.SIG_DFL:  # a Ctrl-C asked for at once: keep that
                signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    return_large_blocks()  # a rank's memory is its slab and model, not freed buffers kept (docs/memory.md)
    toml_path = args.pop("config")
    try:
        cfg = load_config(toml_path, args)
    except KmervaeError as e:
        if os.environ.get("RANK", "0") == "0":  # every rank reads the same file: one line is enough
            print(f"train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from kmervae_core.distributed import FailureAgreement, init_distributed, shutdown
    from kmervae_core.training.trainer import NonFiniteLoss, Stopped, Trainer
    stop = StopRequest()  # the trainer stops all ranks at one step
    ctx = init_distributed()
    agreement = FailureAgreement(ctx)  # a failure on any rank ends every rank alike
    log = (lambda line: print(line, flush=True)) if ctx.is_main else (lambda line: None)
    trainer, lock, clean = None, None, False
    try:
        if refusal := batch_refusal(cfg.batch_size, ctx.world_size):
            raise KmervaeError(refusal)
        if ctx.is_main:  # one run per folder, before anything in it is read or written
            lock = RunLock(cfg.out)
            if lock.note:
                log(lock.note)
        trainer = Trainer(cfg, ctx, log, stop=stop.is_set)
        summary = trainer.run()
        trainer.finish()
        best = summary["best"]
        by = best["by"] if summary["validated"] else "training loss"  # the tracker's val_loss falls back to it
        log(f"done: {counted(summary['epochs'], 'epoch')}, {counted(summary['steps'], 'step')}; best {by} "
            f"{best['value']:.4g} at epoch {best['epoch'] + 1}; exports in {trainer.cfg.out}")
        clean = True
        return 0
    except Stopped as e:
        trainer.finish()
        if ctx.is_main:
            print(f"train: {e}", file=sys.stderr, flush=True)
        clean = True
        return EXIT_STOPPED
    except KmervaeError as e:
        if trainer is not None:
            trainer.finish(failed=isinstance(e, NonFiniteLoss))
        status = EXIT_NON_FINITE if isinstance(e, NonFiniteLoss) else \
            EXIT_READER_FAILED if isinstance(e, ReaderFailed) else EXIT_BAD_INPUT
        if isinstance(e, WriteFailed) and trainer is not None:
            e = WriteFailed(f"{e}; the checkpoints already written are sound ({trainer.checkpointer.last_good()})")
        where = f"rank {ctx.rank}: " if ctx.active and not str(e).startswith(f"rank {ctx.rank}:") else ""
        return agreement.fail(status, f"train: error: {where}{e}")
    except Exception:
        if (status := agreement.recorded()) is not None:  # a peer failed and left: its line is printed
            return status
        raise
    finally:
        stop.leaving()
        if trainer is not None:
            trainer.close()  # reader threads and DDP go before the process group does
        agreement.close()
        if lock is not None:
            lock.release()
        shutdown(clean)


if __name__ == "__main__":
    sys.exit(main())
