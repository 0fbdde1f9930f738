"""python -m train / torchrun --nproc_per_node=N -m train: train the VAEMulti reference model on
a kmervae store (DDP over nccl on CUDA, gloo on CPU), with checkpoints, exact resume and exports."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from kmervae_core.config import (BETA_SCHEDULES, CACHE_TIERS, GRAPH_MODES, PRECISIONS, SELECT_BY, TrainConfig,
                                 load_config)
from kmervae_core.errors import KmervaeError
from kmervae_core.workers import STOP_SIGNALS

EXIT_BAD_INPUT, EXIT_NON_FINITE = 2, 3
EXIT_STOPPED = 143  # 128 + SIGTERM, as schedulers expect of a terminated task (Kubeflow's ExitCode policy retries 128-255)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, argument_default=None,
        epilog="Defaults are the reference recipe; a --config TOML file (keys as the long flags, with "
               "underscores) overrides them and flags override the file. Exit status: 0 done, 2 bad input, "
               "3 non-finite loss (the last good checkpoint is kept), 143 stopped by SIGTERM or SIGUSR1 (every rank "
               "finished its step and a checkpoint was written; --resume auto continues exactly).")
    p.add_argument("--config", help="TOML file of settings")
    p.add_argument("--data", help=f"the kmervae store (default {d.data})")
    p.add_argument("--out", help=f"run folder: checkpoints, history, exports (default {d.out})")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"global batch over all ranks (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], help="hidden sizes, e.g. 1024,512")
    p.add_argument("--latent", type=int, help=f"latent size (default {d.latent})")
    p.add_argument("--beta", type=float, help=f"final KL weight (default {d.beta})")
    p.add_argument("--beta-schedule", choices=BETA_SCHEDULES, help="linear warm-up (default) or cyclical")
    p.add_argument("--beta-warmup-epochs", type=int, help=f"default {d.beta_warmup_epochs}")
    p.add_argument("--beta-cycle-epochs", type=int, help=f"cyclical period (default {d.beta_cycle_epochs})")
    p.add_argument("--val-fraction", type=float, help=f"held-out share (default {d.val_fraction})")
    p.add_argument("--val-split", choices=("random", "tail"), help="seeded chunks (default) or the last rows")
    p.add_argument("--partitions", type=int,
                   help="epoch plan partitions (default 0: gcd(batch size, 48), or a multiple of the world size "
                        "above that; a resumed run keeps its own): every world size dividing it trains on the same "
                        "batches, and can resume the others' checkpoints")
    p.add_argument("--workers", type=int, help=f"DataLoader workers per rank (default {d.workers})")
    p.add_argument("--resume", help="auto (newest checkpoint in --out, the default), never, or a checkpoint path")
    p.add_argument("--checkpoint-every", type=int, help=f"steps between checkpoints (default {d.checkpoint_every}; also at each epoch end)")
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms: bitwise-repeatable runs")
    p.add_argument("--precision", choices=PRECISIONS, help="bf16 autocast on CUDA (default fp32)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--cuda-graphs", choices=GRAPH_MODES,
                   help="capture the training step as a CUDA graph and replay it (one launch per step): auto "
                        "(default) does on a single CUDA device; on also tries under DDP; every capture is "
                        "checked against the eager step, and falls back to it with one line")
    p.add_argument("--cache", choices=CACHE_TIERS,
                   help="keep this rank's training and validation rows resident after the first epoch, later "
                        "epochs gather from them in the stream's order: device (GPU memory), host (pinned RAM), none "
                        "(stream every epoch); auto (default) takes the first that fits --cache-fraction")
    p.add_argument("--cache-fraction", type=float,
                   help=f"share of free GPU memory (device tier) or of available RAM per rank on the host "
                        f"(host tier) the cache may take (default {d.cache_fraction})")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port on global rank 0 (default 9400; 0 = off)")
    p.add_argument("--metrics-addr", help="address to bind /metrics to (default 0.0.0.0)")
    p.add_argument("--pushgateway", help="Pushgateway URL to push a final summary to when the run ends")
    p.add_argument("--select-by", choices=SELECT_BY,
                   help="what vae_multi_best.pt tracks: lowest val_loss (default, the reference), or highest "
                        "latent/input distance correlation (spearman) or label kNN accuracy (knn, needs labels)")
    p.add_argument("--latent-sample", type=int,
                   help=f"held-out validation rows for the per-epoch latent metrics (default {d.latent_sample}; 0 = off)")
    p.add_argument("--kmers", type=lambda v: [int(k) for k in v.split(",")],
                   help="k groups to train on, e.g. 5,4,3,2,1 (default all six, 6..1)")
    p.add_argument("--kmer-weights", type=lambda v: [float(w) for w in v.split(",")],
                   help="weight of each --kmers group's reconstruction term, e.g. 1,1,0.5,0.5,0.5 (default 1 each)")
    p.add_argument("--log-every", type=int, help=f"steps between non-finite checks and metric updates (default {d.log_every})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    toml_path = args.pop("config")
    try:
        cfg = load_config(toml_path, args)
    except KmervaeError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from kmervae_core.distributed import init_distributed, shutdown
    from kmervae_core.training import NonFiniteLoss, Stopped, Trainer
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
            log(trainer.step_mode)
            log(trainer.feed.message)
            if trainer.metrics_url:
                log(f"metrics: {trainer.metrics_url} (Prometheus scrape target; see deploy/README.md)")
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
        return EXIT_BAD_INPUT
    finally:
        if trainer is not None:
            trainer.close()  # loader workers and DDP go before the process group does
        shutdown(clean)


if __name__ == "__main__":
    sys.exit(main())
