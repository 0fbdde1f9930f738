"""Process-group set-up and teardown for one process or torchrun (nccl on CUDA, gloo on CPU).

Teardown has one trap. A gloo group's worker threads drop each finished collective's tensors
after the caller has seen it finish; where Python owns such a tensor, dropping it takes the GIL,
and a thread that takes the GIL once the interpreter is finalizing is ended inside a C++
destructor: std::terminate, "terminate called without an active exception", SIGABRT (seen as a
rank failing after it trained). So no group may outlive `shutdown()` with work of ours on it:
shutdown frees the default group (joining its threads) while the interpreter is alive, and DDP,
which keeps its group alive to the end of the process, gets a group of its own (`ddp_group`)
that carries only the buffers DDP allocates itself.

Set-up has one too. torchrun's agents keep one store for the whole job: restarted ranks find the
dead round's keys in it, and gloo then connects to the dead ranks' addresses. So each restart
round needs a key space of its own, which `round_token` names (see there why the restart count
cannot)."""
from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist


# set at init_process_group, not left to the backend (NCCL's default is 10 min): the feed's read
# timeout is a quarter of it (feed/stream.py), so a hung read is named and agreed on first
PROCESS_GROUP_TIMEOUT = timedelta(minutes=20)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    key_space: str = "kmervae"  # this round's prefix on the job's store (round_token)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the torchrun job described by the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    key_space = "kmervae"
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"timeout": PROCESS_GROUP_TIMEOUT, **({"device_id": device} if device.type == "cuda" else {})}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # the store outlives restarts
            store = store_client(world)
            key_space = f"kmervae/{round_token(store, rank, world)}"
            dist.init_process_group(backend, store=dist.PrefixStore(key_space, store), rank=rank, world_size=world,
                                    **kwargs)
        else:
            dist.init_process_group(backend, **kwargs)
    return DistContext(rank, world, local, device, key_space)


def store_client(world: int) -> dist.TCPStore:
    """A connection of this process's own to the job's store (torchrun's agent store, or rank 0's
    under a plain env:// launch: both at MASTER_ADDR:MASTER_PORT). A connection runs one request
    at a time, and a rank blocked in a store wait (a group's rendezvous) holds its connection
    until the wait ends: a thread that must reach the store then needs a connection of its own."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)


def round_token(store: dist.Store, rank: int, world: int, timeout: timedelta = timedelta(minutes=5)) -> str:
    """A name that this round's ranks alone share, agreed on a store where earlier rounds left keys.

    TORCHELASTIC_RESTART_COUNT does not name a round: each agent counts only the restarts its own
    workers' failures caused, not those for a rendezvous another agent started (torch 2.13,
    torch/distributed/elastic/agent/server/api.py `_invoke_run`), so after one node's worker dies
    the agents may start the next round with different counts (pytorch/pytorch#135712). Instead
    rank 0 draws a token and hands it to each rank in answer to a nonce that rank has just drawn:
    no earlier round can have answered it. Rank 0 answers until every rank confirms under the
    token, so a rank that starts late is answered too."""
    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"kmervae/hello/{rank}", nonce)
        token = store.get(f"kmervae/answer/{nonce}").decode()  # waits up to the store's timeout
        store.set(f"kmervae/{token}/here/{rank}", "1")
        return token
    token, answered, waiting = uuid.uuid4().hex, set(), set(range(1, world))
    deadline = time.monotonic() + timeout.total_seconds()
    while waiting:
        for r in sorted(waiting):
            if store.check([f"kmervae/{token}/here/{r}"]):
                waiting.discard(r)
            elif store.check([f"kmervae/hello/{r}"]):
                nonce = store.get(f"kmervae/hello/{r}").decode()  # maybe a dead round's: answered all the same
                if nonce not in answered:
                    store.set(f"kmervae/answer/{nonce}", token)
                    answered.add(nonce)
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"ranks {sorted(waiting)} did not join rank 0 within {timeout}")
        time.sleep(0.02)
    return token


def ddp_group() -> dist.ProcessGroup | None:
    """The group to give DDP: under gloo a group of its own (see the module's note), else the
    default group (None)."""
    return dist.new_group(backend="gloo") if dist.get_backend() == "gloo" else None


def all_reduce(t: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce where a process group is active; the tensor itself otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, in rank order (collective where distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t)
        return out
    return [t]


class StopVote:
    """Ranks agree to stop at the same step, though a signal may reach only some of them.

    Every step each rank adds whether it was asked to stop (`asked()`) to an all-reduce on a
    CPU (gloo) group of its own, started asynchronously and read at the next step: the step
    never waits on it and no device sync is added, and every rank reads the same sum at the
    same step. Where no process group is active, `asked()` is read directly."""

    def __init__(self, asked: Callable[[], bool]) -> None:
        self.asked = asked
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() and dist.get_world_size() > 1 else None
        self.pending: tuple[dist.Work, torch.Tensor] | None = None

    def poll(self) -> bool:
        """Call once per step on every rank: True, on every rank at the same step, one step
        after the first step at which some rank was asked."""
        if self.group is None:
            return self.asked()
        agreed = self._result()
        flag = torch.tensor([int(self.asked())])
        self.pending = (dist.all_reduce(flag, group=self.group, async_op=True), flag)
        return agreed

    def _result(self) -> bool:
        if self.pending is None:
            return False
        work, flag = self.pending
        work.wait()
        self.pending = None
        return bool(flag.item())

    def close(self) -> None:
        """Wait for the vote in flight and let go of the group, so that shutdown() frees it. A
        vote whose peers have left (a failure every rank agreed on) ends with them."""
        try:
            self._result()
        except RuntimeError:
            self.pending = None
        self.group = None


FAILURE = "kmervae/failure"


class FailureAgreement:
    """Every rank leaves with one status and one line when any rank fails.

    A rank that fails (a KmervaeError: bad input, a damaged chunk, a refusal) calls `fail`,
    which records the exit status on the job's store: no collective carries it, so it reaches
    ranks blocked in a collective the failed rank will never join. The first rank to record
    prints its line; every other rank, failed too or not, prints nothing and leaves with that
    status: one that fails itself returns it from `fail`, the others are ended by a thread
    watching the store (os._exit: their main thread may be blocked in a collective for good, and
    every file a run writes is atomic, so nothing is left half written). The first rank waits
    (up to WAIT_S) until the others have left, so that torchrun sees every rank exit alike
    instead of ending the survivors itself, and a rank that has failed ignores SIGTERM from then
    on. Alone (no process group) `fail` only prints."""

    POLL_S, WAIT_S = 0.1, 10.0

    def __init__(self, ctx: DistContext) -> None:
        self.rank, self.world = ctx.rank, ctx.world_size
        active = ctx.active and dist.is_available() and dist.is_initialized()
        # a connection of its own (store_client): the watcher must reach the store while the main
        # thread is blocked in a group's rendezvous, which holds the main connection
        self.store = dist.PrefixStore(ctx.key_space, store_client(ctx.world_size)) if active else None
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="failure-watch", daemon=True)
        if self.store is not None:
            self._watcher.start()

    def fail(self, status: int, line: str) -> int:
        """This rank failed with `status` and the one-line `line`: the status every rank exits with."""
        if self.store is None:
            print(line, file=sys.stderr, flush=True)
            return status
        self._done.set()  # this rank leaves by returning, not by the watcher
        if threading.current_thread() is threading.main_thread():
            # torchrun sends SIGTERM to the ranks still tearing down once the first has left:
            # it must not turn the agreed status into "killed by SIGTERM"
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        first = False
        try:
            first = self.store.add(f"{FAILURE}/count", 1) == 1
            if first:
                print(line, file=sys.stderr, flush=True)
                self.store.set(FAILURE, str(status))
            else:
                status = int(self.store.get(FAILURE))  # set by the first at once after its count
            self.store.set(f"{FAILURE}/left/{self.rank}", "1")
            if first:
                others = [f"{FAILURE}/left/{r}" for r in range(self.world) if r != self.rank]
                deadline = time.monotonic() + self.WAIT_S
                while not self.store.check(others) and time.monotonic() < deadline:
                    time.sleep(self.POLL_S)
        except RuntimeError:  # the store's host (rank 0 without torchrun's agent) has left
            if not first:
                print(line, file=sys.stderr, flush=True)
        return status

    def recorded(self) -> int | None:
        """The status a failed rank recorded, if any (for a rank whose collective broke because
        that rank left)."""
        if self.store is None:
            return None
        try:
            return int(self.store.get(FAILURE)) if self.store.check([FAILURE]) else None
        except RuntimeError:
            return None

    def _watch(self) -> None:
        while not self._done.wait(self.POLL_S):
            try:
                if not self.store.check([FAILURE]):
                    continue
                status = int(self.store.get(FAILURE))
                if self._done.is_set():
                    return
                self.store.set(f"{FAILURE}/left/{self.rank}", "1")
            except RuntimeError:  # the store is gone: the job is ending
                return
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    def close(self) -> None:
        """Stop watching, before shutdown() takes the store away."""
        self._done.set()
        if self._watcher.is_alive():
            self._watcher.join()


def shutdown(clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first meets the others at a
    barrier, so that none tears down its connections while a peer still reads from them; after
    an error it does not wait (a peer may be stuck in another collective, and torchrun ends it)."""
    if dist.is_available() and dist.is_initialized():
        if clean and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()  # frees the groups (their threads joined) now, not during interpreter shutdown
