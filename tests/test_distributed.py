"""Process-group set-up under torchrun: each restart round agrees on a key space of its own on the
agents' store, though earlier rounds (some of whose ranks died midway) left their keys there."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch.distributed as dist

from kmervae_core.training.distributed import round_token


def agree(server: dist.TCPStore, world: int, late: dict[int, float] | None = None) -> list[str]:
    """Each rank's token, every rank a thread with its own client (ranks in `late` start after a delay)."""
    tokens: list[str | None] = [None] * world

    def rank(r: int) -> None:
        time.sleep((late or {}).get(r, 0.0))
        client = dist.TCPStore("127.0.0.1", server.port, world, is_master=False, timeout=timedelta(seconds=30))
        tokens[r] = round_token(client, r, world, timeout=timedelta(seconds=30))

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
    dead = dist.TCPStore("127.0.0.1", server.port, 3, is_master=False)
    dead.set("kmervae/hello/1", "a dead rank's nonce")
    # the next round's rank 1 and 2 come late, after rank 0 has answered the stale hello
    second = agree(server, 3, late={1: 0.5, 2: 1.0})
    assert len(set(second)) == 1 and second[0] != first[0]
    # rank 0 comes last, after the others could have read any earlier round's answers; a smaller world
    third = agree(server, 2, late={0: 1.0})
    assert len(set(third)) == 1 and third[0] not in (first[0], second[0])
