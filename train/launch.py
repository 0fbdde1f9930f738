"""python -m train.launch [torchrun options] -m train ...: start the ranks of a multi-process run
as torchrun does (the same launcher, every torchrun option below passed on as it is), quiet where
the ranks have already said what happened, and ending with the ranks' exit status.

torchrun itself exits 1 with a traceback whenever a rank fails (ChildFailedError, with a block per
rank) or torchrun is signalled (SignalException: Ctrl-C, scancel, an eviction), whatever the
ranks did: a stopped run that wrote its checkpoint reads as a crash. This runs the same torchrun
(torch.distributed.run, the same options) in this process and instead
  - exits 0 when every rank did;
  - exits with the ranks' status when they agree on one of the trainer's (2 bad input, 3 non-finite
    loss, 4 a feed reader thread failed or hung, 143 stopped with a checkpoint), printing nothing more:
    the rank that failed has printed its line;
  - exits 128 + the signal when torchrun was signalled (130 Ctrl-C, 143 SIGTERM): torchrun passes
    the signal on and waits for the ranks, which stop at one step with a checkpoint;
  - otherwise (a rank crashed, was killed, or the ranks disagree) prints one line per failed rank
    and exits 1, as torchrun does.
torchrun's own log lines are hidden unless LOGLEVEL is set (LOGLEVEL=INFO shows them all)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

AGREED = {2, 3, 4, 143}  # train/__main__.py's exit statuses a rank reports after its own line


def parser() -> argparse.ArgumentParser:
    """torchrun's own parser (its options, parsed as torchrun parses them), under this command's
    name and description: --help says what train.launch does, then lists torchrun's options."""
    from torch.distributed.run import get_args_parser
    p = get_args_parser()
    p.prog, p.description, p.formatter_class = "python -m train.launch", __doc__, argparse.RawDescriptionHelpFormatter
    p.usage = "%(prog)s [torchrun options] -m train [train options]"
    p._optionals.title = "torchrun's options (passed on to it as they are)"  # argparse has no public setter
    p.epilog = "e.g. python -m train.launch --standalone --nproc_per_node=8 -m train --data kmers.zarr --out runs/r1"
    return p


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run
    if "LOGLEVEL" not in os.environ:  # torch's elastic loggers set their own levels when imported
        for name in ["torch.distributed", *logging.root.manager.loggerDict]:
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        if len(codes) == 1 and (code := codes.pop()) in AGREED:
            return code
        for rank, f in sorted(e.failures.items()):
            how = f"killed by {signal.Signals(-f.exitcode).name}" if f.exitcode < 0 else f"exit status {f.exitcode}"
            print(f"train.launch: rank {rank} failed ({how}, pid {f.pid})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
