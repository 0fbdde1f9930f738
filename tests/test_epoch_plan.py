"""The epoch plan as pure functions (no store, no files): which rows form each batch, for every
rank, worker and epoch. Each test states one promise the trainer and the stream rely on."""
import numpy as np
import pytest

from kmervae_core.epoch_plan import EpochPlan, make_split, validation_chunks, worker_batches

ROWS, CHUNK = 10_000, 256  # 40 chunks, the last one short (16 rows)
SPLIT = make_split(ROWS, CHUNK, 0.1, "random", seed=3)


def plan(epoch: int = 0, batch: int = 96, partitions: int = 12, **kw) -> EpochPlan:
    return EpochPlan(SPLIT, seed=7, epoch=epoch, global_batch=batch, partitions=partitions, **kw)


def train_rows() -> np.ndarray:
    return np.concatenate([SPLIT.train_rows_of(c) for c in range(len(SPLIT.length))])


def global_batch_rows(p: EpochPlan, k: int, world_size: int) -> np.ndarray:
    """Batch k as the union of what every rank of `world_size` yields for it."""
    order = p.order()
    return np.concatenate([order[p.batch_positions(p.partitions_of(r, world_size), k)[0]] for r in range(world_size)])


def test_random_split_holds_out_whole_chunks_and_keeps_every_row_once():
    n_chunks = -(-ROWS // CHUNK)
    held = [c for c in range(n_chunks) if SPLIT.val_counts[c] > 0]
    assert len(held) == round(0.1 * n_chunks)
    assert all(SPLIT.train_counts[c] == 0 for c in held)  # a held-out chunk is wholly validation
    rows = np.concatenate([train_rows()] + [SPLIT.val_rows_of(c) for c in held])
    assert np.array_equal(np.sort(rows), np.arange(ROWS))


def test_tail_split_holds_out_the_last_rows():
    tail = make_split(ROWS, CHUNK, 0.1, "tail")
    val = np.concatenate([tail.val_rows_of(c) for c in range(len(tail.length))])
    assert np.array_equal(val, np.arange(9_000, ROWS))


def test_a_bad_split_is_refused():
    with pytest.raises(ValueError, match="unknown validation split"):
        make_split(ROWS, CHUNK, 0.1, "middle")
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        make_split(ROWS, CHUNK, 1.0)


def test_an_epoch_visits_every_training_row_once():
    p = plan()
    assert np.array_equal(np.sort(p.order()), train_rows())
    used = p.order()[p.batch_positions(range(p.partitions))].ravel()
    assert len(np.unique(used)) == len(used) == p.batches * p.global_batch
    assert p.batches == len(train_rows()) // 96  # only a tail shorter than one global batch is left out


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 6, 12])
def test_every_rank_gets_the_same_number_of_equal_batches(world_size):
    p = plan()
    shapes = {p.batch_positions(p.partitions_of(r, world_size)).shape for r in range(world_size)}
    assert shapes == {(p.batches, 96 // world_size)}


def test_the_global_batches_are_the_same_for_every_world_size_dividing_the_partitions():
    p = plan()
    for k in (0, 1, p.batches // 2, p.batches - 1):
        want = np.sort(global_batch_rows(p, k, 1))
        for world_size in (2, 3, 4, 6, 12):
            assert np.array_equal(np.sort(global_batch_rows(p, k, world_size)), want), (k, world_size)


def test_ranks_read_disjoint_rows_that_stay_theirs_in_every_epoch():
    def held(p: EpochPlan, r: int) -> np.ndarray:  # the store rows of rank r's partitions
        return np.concatenate([np.arange(a, b) for q in p.partitions_of(r, 4) for a, b in p.pieces[q]])

    first = [held(plan(0), r) for r in range(4)]
    assert np.array_equal(np.sort(np.concatenate(first)), train_rows())  # disjoint, together all
    for epoch in (1, 2):
        p = plan(epoch)
        for r in range(4):
            assert np.array_equal(held(p, r), first[r])  # what lets a rank cache its rows
            yielded = p.order()[p.batch_positions(p.partitions_of(r, 4))].ravel()
            assert np.isin(yielded, first[r]).all()


def test_each_epoch_shuffles_and_the_same_epoch_is_the_same_shuffle():
    assert np.array_equal(plan(1).order(), plan(1).order())
    assert not np.array_equal(plan(1).order(), plan(2).order())


def test_resuming_at_batch_k_yields_exactly_the_batches_from_k_on():
    p = plan()
    parts = p.partitions_of(1, 3)
    assert np.array_equal(p.batch_positions(parts, 5), p.batch_positions(parts)[5:])


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_loader_workers_share_the_batches_round_robin_without_overlap(workers):
    got = sorted(k for w in range(workers) for k in worker_batches(40, 7, w, workers))
    assert got == list(range(7, 40))
    assert [next(iter(worker_batches(40, 7, w, workers))) for w in range(workers)] == list(range(7, 7 + workers))


def test_validation_chunks_are_dealt_to_ranks_disjoint_and_complete():
    dealt = [validation_chunks(SPLIT, r, 3) for r in range(3)]
    together = np.sort(np.concatenate(dealt))
    assert np.array_equal(together, np.flatnonzero(SPLIT.val_counts > 0))


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="not a multiple of the plan's 12 partitions"):
        plan(batch=100)
    with pytest.raises(ValueError, match="world size 5 does not divide the plan's 12 partitions"):
        plan().partitions_of(0, 5)
