"""Process-group set-up under torchrun: each restart round agrees on a key space of its own on the
agents' store, though earlier rounds (some of whose ranks died midway) left their keys there."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Callable

import torch.distributed as dist

from kmervae_core.distributed import round_token

TIMEOUT = timedelta(seconds=30)


def client(server: dist.TCPStore, world: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", server.port, world, is_master=False, timeout=TIMEOUT)


def agree(server: dist.TCPStore, world: int, first: dict[int, Callable[[], None]] | None = None) -> list[str]:
    """Each rank's token, every rank a thread with its own client; a rank in `first` starts only
    once its wait there has returned."""
    tokens: list[str | None] = [None] * world

    def rank(r: int) -> None:
        (first or {}).get(r, lambda: None)()
        tokens[r] = round_token(client(server, world), r, world, timeout=TIMEOUT)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(t, str) for t in tokens), tokens
    return tokens


def test_every_round_agrees_on_a_token_no_earlier_round_used_though_dead_ranks_left_their_keys():
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    first = agree(server, 3)
    assert len(set(first)) == 1
    # a round whose rank 1 said hello and died before rank 0 came: its nonce stays in the store
    client(server, 3).set("kmervae/hello/1", "a dead rank's nonce")
    # the next round's ranks 1 and 2 come only after rank 0 has answered that stale hello
    stale_answer = "kmervae/answer/a dead rank's nonce"
    answered = lambda: client(server, 3).wait([stale_answer], TIMEOUT)  # noqa: E731
    second = agree(server, 3, first={1: answered, 2: answered})
    assert len(set(second)) == 1 and second[0] != first[0]
    assert server.get(stale_answer).decode() == second[0]  # the stale hello was answered, and misled no one
    # a smaller world whose rank 0 comes only after rank 1 has said hello, when every earlier
    # round's answers are in the store for it to misread
    said = server.get("kmervae/hello/1")

    def rank_1_said_hello() -> None:
        watcher, deadline = client(server, 2), time.monotonic() + TIMEOUT.total_seconds()
        while watcher.get("kmervae/hello/1") == said and time.monotonic() < deadline:
            time.sleep(0.01)

    third = agree(server, 2, first={0: rank_1_said_hello})
    assert len(set(third)) == 1 and third[0] not in (first[0], second[0])
