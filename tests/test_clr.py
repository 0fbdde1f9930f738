"""CLR in both scopes against a float64 reference written from the definition."""
import numpy as np
import pytest

from kmervae_core.store.clr import ClrSpec, clr
from tests.conftest import random_kmers, reference_clr


@pytest.mark.parametrize("scope", ["global", "per_k"])
@pytest.mark.parametrize("pseudocount", [None, 0.01])
def test_clr_matches_float64_reference(scope, pseudocount):
    x = random_kmers(64, seed=3)
    got = clr(x[:, 8193:10965], ClrSpec(scope, pseudocount))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_clr(x, scope, pseudocount), rtol=0, atol=1e-5)


def test_global_clr_rows_sum_to_zero():
    x = random_kmers(8, seed=4)[:, 8193:10965]
    assert np.abs(clr(x, ClrSpec("global")).astype(np.float64).sum(axis=1)).max() < 1e-2


def test_per_k_clr_groups_sum_to_zero():
    x = random_kmers(8, seed=4)[:, 8193:10965]
    per_k = clr(x, ClrSpec("per_k")).astype(np.float64)
    assert np.abs(per_k[:, 2770:2772].sum(axis=1)).max() < 1e-5  # the 1-mer group


def test_each_scope_has_its_default_pseudocounts():
    assert ClrSpec("global").pseudocounts()[6] == 1e-6
    assert ClrSpec("per_k").pseudocounts()[6] == pytest.approx(0.5 / 2080)
    assert ClrSpec("per_k").pseudocounts()[1] == pytest.approx(0.25)


def test_a_spec_round_trips_through_the_store_attributes():
    for spec in (ClrSpec("global"), ClrSpec("per_k"), ClrSpec("per_k", 0.1)):
        assert ClrSpec.from_attrs(spec.to_attrs()) == spec


@pytest.mark.parametrize("bad", [{"scope": "total"}, {"scope": "global", "pseudocount": 0.0}])
def test_bad_spec_is_refused(bad):
    with pytest.raises(ValueError):
        ClrSpec(**bad)
