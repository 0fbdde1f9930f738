"""The names of the figures a run records (summary.py), as history.json, the report and the
comparison read them: written out here by hand, not derived from the code under test."""
from __future__ import annotations

import pytest

from kmervae_core.summary import Summary, history_key, kl_block_key, kl_blocks_in_history, kl_by_block, mse_key


def test_figure_names_are_those_history_json_has_always_used():
    assert [mse_key(6), kl_block_key("4+3+2+1")] == ["mse_6mer", "kl_block_4+3+2+1"]
    assert [history_key("val", "loss"), history_key("train", "mse_1mer"), history_key("latent", "knn")] == \
        ["val_loss", "train_mse_1mer", "latent_knn"]


def test_a_figure_of_an_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be one of train, val, latent"):
        history_key("test", "loss")


def test_a_summary_names_its_block_kls_and_prefixes_its_split_in_history():
    s = Summary(rows=10, recon=2.0, kl=1.5, loss=3.5, mse=0.5, mse_6mer=0.25, **{"kl_block_6": 1.0, "kl_block_5+4": 0.5})
    assert kl_by_block(s) == {"6": 1.0, "5+4": 0.5}
    record = s.history("val")
    assert record["val_mse_6mer"] == 0.25 and record["val_kl_block_5+4"] == 0.5 and len(record) == len(s)
    assert kl_blocks_in_history(record, "val") == ["5+4", "6"] and kl_blocks_in_history(record, "train") == []
