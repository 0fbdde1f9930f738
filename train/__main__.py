"""python -m train / torchrun --nproc_per_node=N -m train: train the VAEMulti reference model on
a kmervae store (DDP over nccl on CUDA, gloo on CPU), with checkpoints, exact resume and exports."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading

from kmervae_core.config import TrainConfig, load_config
from kmervae_core.errors import KmervaeError, LoaderWorkerDied

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # preemption and eviction; Slurm's advance warning

EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_WORKER_KILLED = 2, 3, 4
EXIT_STOPPED = 143  # 128 + SIGTERM, as schedulers expect of a terminated task (Kubeflow's ExitCode policy retries 128-255)


def _list(item):
    return lambda text: [item(v) for v in text.split(",")]


# how a flag's text becomes a TrainConfig field of each annotated type
PARSE = {"int": int, "float": float, "str": str, "list[int]": _list(int), "list[float]": _list(float),
         "list[list[int]]": lambda text: [_list(int)(block) for block in text.split("/")]}


def _shown(value) -> str:
    """A default as a user would type it."""
    if isinstance(value, list):
        return "/".join(map(_shown, value)) if value and isinstance(value[0], list) else \
            ",".join(map(str, value)) or "none"
    return str(value) if value != "" else "none"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """One flag per TrainConfig field, built from the field (name, type, default, help, choices);
    a flag not given stays None, so that the TOML file's value or the default holds."""
    p = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, argument_default=None,
        epilog="Defaults are the reference recipe; a --config TOML file (keys as the long flags, with "
               "underscores) overrides them and flags override the file. Exit status: 0 done, 2 bad input, "
               "3 non-finite loss, 4 a reader thread failed or hung (the last good checkpoint is kept), 143 stopped by "
               "SIGTERM or SIGUSR1 (every rank finished its step and a checkpoint was written; --resume auto "
               "continues exactly).")
    p.add_argument("--config", help="TOML file of settings")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, type=PARSE[f.type], choices=f.metadata["choices"],
                           help=f"{text} (default {_shown(getattr(defaults, f.name))})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    toml_path = args.pop("config")
    try:
        cfg = load_config(toml_path, args)
    except KmervaeError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from kmervae_core.training.distributed import init_distributed, shutdown
    from kmervae_core.training.trainer import NonFiniteLoss, Stopped, Trainer
    stop = threading.Event()  # set by a signal; the trainer stops all ranks at one step
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    ctx = init_distributed()
    log = (lambda line: print(line, flush=True)) if ctx.is_main else (lambda line: None)
    trainer, clean = None, False
    try:
        trainer = Trainer(cfg, ctx, log, stop=stop.is_set)
        cfg = trainer.cfg  # with the epoch plan's partitions settled
        if ctx.is_main:
            trainer.run_dir.mkdir(parents=True, exist_ok=True)
            (trainer.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
            log(f"config ({ctx.world_size} process(es) on {ctx.device.type}, {trainer.batches} batches/epoch): "
                + json.dumps(cfg.to_dict()))
            log(trainer.runner.mode_line)
            log(trainer.feed.message)
            if trainer.recorder.metrics_url:
                log(f"metrics: {trainer.recorder.metrics_url} (Prometheus scrape target; see deploy/README.md)")
        summary = trainer.run()
        trainer.finish()
        best = summary["best"]
        log(f"done: {summary['epochs']} epochs, {summary['steps']} steps; best {best['by']} "
            f"{best['value']:.4g} at epoch {best['epoch'] + 1}; exports in {cfg.out}")
        clean = True
        return 0
    except Stopped as e:
        trainer.finish()
        if ctx.is_main:
            print(f"train: {e}", file=sys.stderr, flush=True)
        clean = True
        return EXIT_STOPPED
    except NonFiniteLoss as e:
        trainer.finish(failed=True)
        print(f"train: error: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    except KmervaeError as e:
        if trainer is not None:
            trainer.finish()
        print(f"train: error: {e}", file=sys.stderr)
        return EXIT_WORKER_KILLED if isinstance(e, LoaderWorkerDied) else EXIT_BAD_INPUT
    finally:
        if trainer is not None:
            trainer.close()  # reader threads and DDP go before the process group does
        shutdown(clean)


if __name__ == "__main__":
    sys.exit(main())
