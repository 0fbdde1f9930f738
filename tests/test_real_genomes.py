"""benchmarks/real_genomes.py's fragments and k-mer rows, and genome_sources' reading of the
packaged files, against hand computations."""
from __future__ import annotations

import gzip
import json
import lzma

import numpy as np
import pytest

from benchmarks.genome_sources import GENOMES, decompress, parse_records
from benchmarks.real_genomes import (BANDS, FOLD_SETS, FOLDS, ROUNDS, SETTINGS, SPLIT_SEED, TUNING, VARIANTS,
                                     balanced_limit, choice_record, deal_rounds, draw_band, four_mer_columns, main,
                                     parse_variants, pca, pick, species_folds, tile, tuning_record, write_kmers)
from kmervae_core.store.kmers import canonical_kmers, group


def genome() -> bytes:
    """30 kb of mixed-case ACGT with an N at 5,000."""
    seq = bytearray(np.random.default_rng(0).choice(list(b"ACGTacgt"), 30000).astype(np.uint8).tobytes())
    seq[5000] = ord("N")
    return bytes(seq)


def starts_of(seq: bytes, tiles: list[np.ndarray]) -> list[int]:
    text = seq.upper()
    return [text.find(np.frombuffer(b"ACGT", np.uint8)[t].tobytes()) for t in tiles]


def test_tiles_are_non_overlapping_acgt_pieces_within_the_band():
    seq = genome()
    for lo, hi in BANDS.values():
        tiles = tile(seq, np.random.default_rng(1), (lo, hi))
        starts = starts_of(seq, tiles)
        assert all(lo <= len(t) <= hi for t in tiles) and all(s >= 0 for s in starts)
        assert all(a + len(t) <= b for a, b, t in zip(starts, starts[1:], tiles))  # in order, no overlap
        assert not any(s <= 5000 < s + len(t) for s, t in zip(starts, tiles))  # the tile with the N is left out
        assert 30000 - 2 * hi <= sum(map(len, tiles)) < 30000  # all but the N tile and the unfinished tail


def test_pick_keeps_at_most_the_limit_in_genome_order():
    tiles = tile(genome(), np.random.default_rng(1), BANDS["1-4kb"])
    got = pick(tiles, np.random.default_rng(2), 3)
    index = [next(i for i, t in enumerate(tiles) if t is g) for g in got]
    assert len(got) == 3 and index == sorted(index)
    assert len(pick(tiles, np.random.default_rng(2), 10 ** 6)) == len(tiles)


def test_the_balanced_limit_is_the_smallest_cap_that_reaches_the_target():
    assert balanced_limit([5, 100, 100], 105) == 50  # 5 + 50 + 50
    assert balanced_limit([5, 100, 100], 106) == 51  # 5 + 51 + 51 = 107: the smallest cap reaching 106
    assert balanced_limit([5, 10], 1000) == 10  # fewer than the target: every tile


def test_a_fragments_row_holds_its_length_and_its_1_mer_frequencies(tmp_path):
    tiles = tile(genome(), np.random.default_rng(1), BANDS["1-4kb"])[:3]
    write_kmers(tiles, tmp_path / "k.npy")
    rows = np.load(tmp_path / "k.npy")
    one = group(1).source
    for row, t in zip(rows, tiles):
        assert row[0] == len(t)
        at = np.isin(t, [0, 3]).mean()  # canonical 1-mers: A (with T) and C (with G)
        np.testing.assert_allclose(row[one], [at, 1 - at], rtol=1e-6)


def test_the_4_mer_columns_are_the_136_canonical_4_mers():
    cols = four_mer_columns()
    assert len(cols) == len(canonical_kmers(4)) == 136 and cols[0] == 2080 + 512  # after the 6- and 5-mers


def test_fasta_and_genbank_records_are_read_as_header_and_bases():
    fasta = b">a first\nACGT\nac\n>b\nGG\n"
    genbank = (b"LOCUS       X1   6 bp    DNA\nDEFINITION  x.\nORIGIN\n        1 acgtac\n//\n"
               b"LOCUS       X2   3 bp\nORIGIN      \n        1 ggc\n//\n")
    assert parse_records(fasta) == [(b"a first", b"ACGTac"), (b"b", b"GG")]
    assert [(h.split()[1], s) for h, s in parse_records(genbank)] == [(b"X1", b"acgtac"), (b"X2", b"ggc")]
    assert decompress(gzip.compress(fasta)) == decompress(lzma.compress(fasta)) == decompress(fasta) == fasta


def test_the_benchmark_has_106_distinct_genomes_of_66_species_groups():
    assert len(GENOMES) == 106 and len({g.species for g in GENOMES}) == 66
    assert len({(g.member, g.records, g.inner) for g in GENOMES}) == len(GENOMES)  # no genome twice
    assert all(len(g.sha256) == 64 for g in GENOMES)


def test_the_first_55_genomes_are_round_1_and_a_later_round_adds_only_new_species_groups():
    rounds = [g.round for g in GENOMES]
    assert rounds == sorted(rounds) and rounds.count(1) == 55 and set(rounds) == set(range(1, len(ROUNDS) + 1))
    first = {g.species for g in GENOMES if g.round == 1}
    assert len(first) == 30 and not first & {g.species for g in GENOMES if g.round > 1}


def test_a_later_round_leaves_the_first_rounds_fragments_as_they_were_drawn_without_it():
    seqs = [bytes(np.random.default_rng(i).choice(list(b"ACGT"), 40_000).astype(np.uint8)) for i in range(5)]
    for order in ("file", "shuffled"):
        alone, alone_genome = draw_band("1-4kb", seqs[:3], [1, 1, 1], 40, order, seed=7)
        both, both_genome = draw_band("1-4kb", seqs, [1, 1, 1, 2, 2], 40, order, seed=7)
        n = len(alone)
        assert n >= 40 and np.array_equal(both_genome[:n], alone_genome)
        assert all(np.array_equal(a, b) for a, b in zip(alone, both))
        # round 2 draws its share, 40 x ROUNDS[1] / ROUNDS[0] (20: 2 folds to round 1's 4), from its own genomes
        assert set(both_genome[n:]) == {3, 4} and len(both) - n == 40 * ROUNDS[1] // ROUNDS[0] == 20


def test_pca_scores_are_the_svd_scores_up_to_sign():
    x = np.random.default_rng(4).normal(size=(300, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(pca(x, 5)), np.abs(u[:, :5] * s[:5]), rtol=1e-8, atol=1e-10)


def test_species_groups_are_dealt_heaviest_first_to_the_lightest_fold():
    weights = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}
    fold = species_folds(weights, 2, seed=0)
    # by hand: a->0 (5), b->1 (4), then c or d (tied, seeded order) to 1 (7), the other to 0 (8), e to 1 (8)
    assert fold["a"] == 0 and fold["b"] == 1 and fold["e"] == 1 and {fold["c"], fold["d"]} == {0, 1}
    assert sorted(sum(w for g, w in weights.items() if fold[g] == f) for f in (0, 1)) == [8, 8]
    assert species_folds(weights, 2, seed=0) == fold  # the same seed, the same split


def test_every_genome_of_a_species_group_lands_in_one_fold_and_each_fold_holds_groups():
    weights = [{g.species: 1.0 for g in GENOMES if g.round == r} for r in range(1, len(ROUNDS) + 1)]
    fold = deal_rounds(weights, SPLIT_SEED)
    assert set(fold) == {g.species for g in GENOMES} and set(fold.values()) == set(range(FOLDS))
    assert set(TUNING) < set(range(ROUNDS[0]))  # some of round 1's folds are left to judge


def test_each_round_is_dealt_to_its_own_folds_and_a_later_round_moves_no_earlier_group():
    first, second = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}, {"x": 2, "y": 1}
    fold = deal_rounds([first, second], SPLIT_SEED)
    assert {g: fold[g] for g in first} == species_folds(first, ROUNDS[0], SPLIT_SEED)
    assert {fold[g] for g in second} <= set(range(ROUNDS[0], ROUNDS[0] + ROUNDS[1]))
    assert FOLD_SETS["fresh"] == tuple(range(ROUNDS[0], FOLDS)) and not set(FOLD_SETS["fresh"]) & set(TUNING)


def test_a_held_out_table_refuses_a_variant_never_run_on_the_tuning_folds(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--quick", "--folds", "heldout", "--variants", "reference", "--work", str(tmp_path)])
    assert e.value.code == 2 and "choose on the tuning folds first" in capsys.readouterr().err


def test_a_held_out_table_refuses_a_variant_whose_flags_changed_since_tuning(tmp_path, capsys):
    record = choice_record(tmp_path, "quick", "file", 42, "v")
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(dict(store="per_k", flags=["--latent", "16"], setting=dict(SETTINGS["quick"]),
                                      bands=list(BANDS))))
    with pytest.raises(SystemExit) as e:
        main(["--quick", "--folds", "heldout", "--work", str(tmp_path), "--add-variant", "v=per-k:--latent 8",
              "--variants", "v"])
    assert e.value.code == 2 and "other flags" in capsys.readouterr().err


def test_a_variant_is_data_a_name_a_store_and_train_flags():
    variants = parse_variants(["mn=per-k:--config configs/x.toml --likelihood multinomial"])
    assert variants["mn"] == ("per_k", ["--config", "configs/x.toml", "--likelihood", "multinomial"])
    assert variants["reference"] == VARIANTS["reference"]
    for bad in ("x=perk:--latent 8", "x=per-k", "=per-k:"):
        with pytest.raises(ValueError):
            parse_variants([bad])


def test_tuning_one_band_at_a_time_keeps_the_other_bands_record_of_the_same_configuration():
    config = dict(store="per_k", flags=["--latent", "8"], setting=dict(SETTINGS["quick"]))
    short = tuning_record(config, {"1-4kb": {"genome": "0.4", "species": "0.9"}}, {})
    both = tuning_record(config, {"2-20kb": {"genome": "0.5", "species": "0.95"}}, short)
    assert both["bands"] == ["1-4kb", "2-20kb"] and both["tuning"]["1-4kb"] == {"genome": "0.4", "species": "0.9"}
    other = tuning_record(dict(config, flags=["--latent", "16"]), {"2-20kb": {"genome": "0.5", "species": "0.9"}},
                          short)
    assert other["bands"] == ["2-20kb"]  # another configuration's bands were not tuned with these flags
