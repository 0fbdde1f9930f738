"""The epoch plan as pure functions (no store, no files): which rows form each batch, for every
rank, worker and epoch, and which rows are a rank's (rank_rows, checked against rows worked
out here by hand). Each test states one promise the trainer and the stream rely on."""
import numpy as np
import pytest

from kmervae_core.feed.epoch_plan import EpochPlan, Split, make_split, rank_rows

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


def test_validation_chunks_are_dealt_to_ranks_disjoint_and_complete():
    dealt = [rank_rows(plan(), r, 3).val_chunks for r in range(3)]
    together = np.sort(np.concatenate(dealt))
    assert np.array_equal(together, np.flatnonzero(SPLIT.val_counts > 0))


def rows_of(ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in ranges] or [np.zeros(0, dtype=np.int64)])


TAIL = make_split(ROWS, CHUNK, 0.1, "tail")  # its first validation chunk is partly training


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 6, 12])
def test_ranks_training_ranges_are_disjoint_and_hold_every_training_row(world_size):
    shares = [rank_rows(plan(), r, world_size) for r in range(world_size)]
    rows = np.concatenate([rows_of(s.train_ranges) for s in shares])
    assert np.array_equal(np.sort(rows), train_rows())  # each training row exactly once
    assert sum(s.train_row_count for s in shares) == len(train_rows())


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_a_ranks_training_rows_are_its_block_of_the_fixed_row_order(world_size):
    """By hand: the T training rows, in the plan's order, cut into 12 parts of T/12 rows (+-1);
    rank r of W serves parts r*12/W .. (r+1)*12/W."""
    p, total = plan(), len(train_rows())
    for r in range(world_size):
        lo, hi = (r * 12 // world_size) * total // 12, ((r + 1) * 12 // world_size) * total // 12
        assert np.array_equal(np.sort(rows_of(rank_rows(p, r, world_size).train_ranges)), np.sort(p.order()[lo:hi]))


@pytest.mark.parametrize("split", [SPLIT, TAIL], ids=["random", "tail"])
def test_a_ranks_validation_ranges_are_the_held_out_rows_of_its_chunks(split: Split):
    held = [c for c in range(len(split.length)) if split.length[c] > split.train_stop[c]]
    for r in range(3):
        share = rank_rows(EpochPlan(split, seed=7, epoch=0, global_batch=96, partitions=12), r, 3)
        assert share.val_chunks == tuple(held[r::3])  # dealt round-robin in store order
        assert share.val_ranges == tuple((c * CHUNK + int(split.train_stop[c]), min((c + 1) * CHUNK, ROWS))
                                         for c in held[r::3])


@pytest.mark.parametrize("split", [SPLIT, TAIL], ids=["random", "tail"])
def test_ranks_validation_rows_are_disjoint_and_hold_every_row_that_does_not_train(split: Split):
    p = EpochPlan(split, seed=7, epoch=0, global_batch=96, partitions=12)
    shares = [rank_rows(p, r, 4) for r in range(4)]
    rows = np.concatenate([rows_of(s.val_ranges) for s in shares])
    training = np.concatenate([split.train_rows_of(c) for c in range(len(split.length))])
    assert np.array_equal(np.sort(rows), np.setdiff1d(np.arange(ROWS), training))
    assert sum(s.val_row_count for s in shares) == ROWS - len(training)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 6, 12])
def test_ranks_batch_slices_tile_the_global_batch_in_rank_order(world_size):
    shares = [rank_rows(plan(), r, world_size) for r in range(world_size)]
    assert {s.local_batch for s in shares} == {96 // world_size}
    assert np.array_equal(np.concatenate([np.arange(96)[s.batch_slice] for s in shares]), np.arange(96))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_a_ranks_batch_slice_of_a_global_batch_is_the_rows_it_yields(world_size):
    """The trainer draws noise for the whole global batch and each rank takes its slice, so a
    row meets the same noise on any world size."""
    p = plan()
    whole = p.order()[p.batch_positions(range(p.partitions))]  # [batches, 96]: one process's batches
    for r in range(world_size):
        share = rank_rows(p, r, world_size)
        assert np.array_equal(p.order()[p.batch_positions(share.partitions)], whole[:, share.batch_slice])


@pytest.mark.parametrize("world_size", [1, 2, 3, 6])
def test_a_ranks_training_share_is_what_two_ranks_serve_at_twice_the_world_size(world_size):
    """What lets a run resume on another world size of the family: rank r of W is ranks 2r and
    2r + 1 of 2W, in training rows and in its part of each global batch."""
    p = plan()
    for r in range(world_size):
        share = rank_rows(p, r, world_size)
        low, high = (rank_rows(p, q, 2 * world_size) for q in (2 * r, 2 * r + 1))
        assert share.train_ranges == low.train_ranges + high.train_ranges
        assert share.batch_slice == slice(low.batch_slice.start, high.batch_slice.stop)
        assert low.batch_slice.stop == high.batch_slice.start


@pytest.mark.parametrize("world_size", [1, 2, 3, 6])
def test_a_ranks_validation_chunks_are_what_two_ranks_hold_at_twice_the_world_size(world_size):
    """Dealt round-robin, rank r's validation chunks at W are those of ranks r and r + W at 2W."""
    p = plan()
    for r in range(world_size):
        pair = [rank_rows(p, q, 2 * world_size).val_chunks for q in (r, r + world_size)]
        assert tuple(sorted(pair[0] + pair[1])) == rank_rows(p, r, world_size).val_chunks


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="not a multiple of the plan's 12 partitions"):
        plan(batch=100)
    with pytest.raises(ValueError, match="world size 5 does not divide the plan's 12 partitions"):
        plan().partitions_of(0, 5)
    with pytest.raises(ValueError, match="world size 5 does not divide the plan's 12 partitions"):
        rank_rows(plan(), 0, 5)
