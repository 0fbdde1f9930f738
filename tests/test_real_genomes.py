"""benchmarks/real_genomes.py's fragments and k-mer rows, against hand computations."""
from __future__ import annotations

import numpy as np

from benchmarks.real_genomes import fragments, write_kmers
from kmervae_core.store.kmers import group


def genome() -> bytes:
    """30 kb of mixed-case ACGT with an N at 5,000."""
    seq = bytearray(np.random.default_rng(0).choice(list(b"ACGTacgt"), 30000).astype(np.uint8).tobytes())
    seq[5000] = ord("N")
    return bytes(seq)


def test_fragments_are_non_overlapping_acgt_tiles_of_1_to_4_kb():
    seq = genome()
    tiles = fragments(seq, np.random.default_rng(1), limit=100)
    text = seq.upper()
    starts = [text.find(np.frombuffer(b"ACGT", np.uint8)[t].tobytes()) for t in tiles]
    assert all(1000 <= len(t) <= 4000 for t in tiles) and all(s >= 0 for s in starts)
    assert all(a + len(t) <= b for a, b, t in zip(starts, starts[1:], tiles))  # in order, no overlap
    assert not any(s <= 5000 < s + len(t) for s, t in zip(starts, tiles))  # the tile with the N is left out
    assert 30000 - 2 * 4000 <= sum(map(len, tiles)) < 30000  # all but the N tile and the unfinished tail


def test_fragments_stop_at_the_limit():
    assert len(fragments(genome(), np.random.default_rng(1), limit=3)) == 3


def test_a_fragments_row_holds_its_length_and_its_1_mer_frequencies(tmp_path):
    tiles = fragments(genome(), np.random.default_rng(1), limit=2)
    write_kmers(tiles, tmp_path / "k.npy")
    rows = np.load(tmp_path / "k.npy")
    one = group(1).source
    for row, t in zip(rows, tiles):
        assert row[0] == len(t)
        at = np.isin(t, [0, 3]).mean()  # canonical 1-mers: A (with T) and C (with G)
        np.testing.assert_allclose(row[one], [at, 1 - at], rtol=1e-6)
