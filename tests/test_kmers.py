"""The k-mer column map: one table, equal to docs/design.md's, and canonical k-mers really canonical."""
import itertools

import numpy as np
import pytest

from kmervae_core.store import kmers
from tests.conftest import DESIGN_SOURCE

COMPLEMENT = str.maketrans("ACGT", "TGCA")


def test_groups_match_the_design_table():
    assert kmers.SOURCE_COLUMNS == 10965
    assert kmers.N_FEATURES == 2772
    assert (kmers.USED_SOURCE.start, kmers.USED_SOURCE.stop) == (8193, 10965)
    local = 0
    for g in kmers.KMER_GROUPS:
        assert (g.source.start, g.source.stop) == DESIGN_SOURCE[g.k]
        assert (g.local.start, g.local.stop) == (local, local + g.size)
        local += g.size
    assert [g.k for g in kmers.KMER_GROUPS] == [6, 5, 4, 3, 2, 1]
    assert [g.size for g in kmers.KMER_GROUPS] == [2080, 512, 136, 32, 10, 2]


def test_unknown_k_is_a_clear_error():
    with pytest.raises(ValueError, match="k=7 is not a trained k-mer size"):
        kmers.group(7)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_canonical_columns_pair_each_kmer_with_its_reverse_complement(k):
    names = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    index = kmers.canonical_index(k)
    canon = sorted({min(s, s.translate(COMPLEMENT)[::-1]) for s in names})
    assert len(canon) == kmers.canonical_count(k)
    for code, s in enumerate(names):
        rc = s.translate(COMPLEMENT)[::-1]
        assert index[code] == canon.index(min(s, rc))
    assert kmers.canonical_kmers(k) == canon


def test_palindromes_have_their_own_column():
    index = kmers.canonical_index(2)
    code = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=2))}
    palindromes = ["AT", "CG", "GC", "TA"]
    assert len({index[code[p]] for p in palindromes}) == 4
    assert np.bincount(index).tolist().count(1) == 4


def test_selected_groups_keep_store_order_and_rebase_columns():
    columns, groups = kmers.selected_groups([1, 5])
    np.testing.assert_array_equal(columns, np.r_[2080:2592, 2770:2772])
    assert [(g.k, g.local.start, g.local.stop) for g in groups] == [(5, 0, 512), (1, 512, 514)]


def test_selecting_an_untrained_k_is_refused():
    with pytest.raises(ValueError, match="k=7"):
        kmers.selected_groups([7])
