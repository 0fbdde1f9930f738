"""How KmerStream's loader processes (make_loader's forkserver and its workers) live and end.

Stop signals are the rank's to handle: torchrun passes SIGTERM to each rank's whole process group
and Slurm signals every process of a job step, but the rank stops only at a step all ranks agree
on and then ends its workers itself. A worker killed first would fail the rank's current step,
and a killed forkserver takes its workers along (torch's worker watchdog ends a worker whose
parent is gone). So the forkserver ignores them (forkserver_init.py, which make_loader
preloads), and a worker obeys SIGTERM from its rank only (multiprocessing's and DataLoader's way
of ending a worker that does not stop by itself).

And no loader process may outlive its rank, however the rank ends (SIGKILL included). A
forkserver worker's parent is the forkserver, which torch's watchdog watches, and the forkserver
lives as long as its workers do (they hold its liveness pipe): so each worker watches the rank.
"""
from __future__ import annotations

import os
import select
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # preemption, eviction; Slurm's advance warning; Ctrl-C


def ignore_stop_signals() -> None:
    """For the forkserver (and, inherited across fork, the workers' SIGUSR1)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def worker_init(rank_pid: int, worker_id: int) -> None:
    """DataLoader worker_init_fn (bind rank_pid, the rank's pid, with functools.partial). torch
    has just installed its SIGTERM handler, which obeys the worker's parent (the forkserver) and
    dies of anyone else's: SIGTERM is blocked instead and a thread takes it, ending the worker
    only when the rank sent it. Another thread ends the worker when the rank ends."""
    try:
        rank = os.pidfd_open(rank_pid)
    except ProcessLookupError:  # the rank is already gone
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started below inherit it
    threading.Thread(target=_exit_on_sigterm_from, args=(rank_pid,), name="rank-sigterm", daemon=True).start()
    threading.Thread(target=_exit_when_readable, args=(rank,), name="rank-watch", daemon=True).start()


def _exit_on_sigterm_from(pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != pid:
        pass
    os._exit(0)


def _exit_when_readable(fd: int) -> None:
    select.select([fd], [], [])  # a pidfd becomes readable when its process ends
    os._exit(1)
