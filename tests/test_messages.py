"""The words users read: counts in the number they take, a flag's own spelling, a likely meant
setting suggested, one meaning per metric and flag name, train.launch's own --help."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kmervae_core.errors import KmervaeError
from tests.conftest import random_kmers, write_npy


def test_counts_take_the_number_of_their_noun():
    from kmervae_core.words import counted
    assert [counted(1, "epoch"), counted(2, "epoch"), counted(0, "chunk"), counted(12288, "row")] == [
        "1 epoch", "2 epochs", "0 chunks", "12,288 rows"]
    assert [counted(1, "process", "processes"), counted(3, "process", "processes")] == ["1 process", "3 processes"]


def test_the_epoch_line_says_1_label_for_a_sample_of_one_genome():
    from kmervae_core.training.recorder import epoch_line
    summary = {"recon": 1.0, "kl": 1.0, "loss": 1.0, "mse": 1.0}
    line = epoch_line(0, 1, 0.1, summary, None, 10.0, {"active_units": 2, "spearman": 0.5, "knn": 1.0, "knn_labels": 1}, 8)
    assert line.endswith("kNN 1.000 (1 label)")


@pytest.fixture(scope="module")
def one_bad_row(tmp_path_factory):
    """A 40-row input whose row 7 holds a NaN, ingested with --on-bad-rows drop into 20-row chunks."""
    d = tmp_path_factory.mktemp("words")
    x = random_kmers(40, seed=3)
    x[7, 9000] = np.nan
    return write_npy(d / "in.npy", x), d


def test_ingest_says_1_row_dropped_and_verify_names_the_clr_as_its_flag(one_bad_row, capsys):
    from ingest.__main__ import main
    npy, d = one_bad_row
    assert main([str(npy), str(d / "s.zarr"), "--clr", "per-k", "--chunk-rows", "20", "--on-bad-rows", "drop",
                 "--quiet"]) == 0
    assert main([str(npy), str(d / "t.zarr"), "--chunk-rows", "20", "--on-bad-rows", "drop"]) == 0
    said = capsys.readouterr().out
    assert "dropping 1 row with NaN" in said and ": 39 rows x 2,772" in said
    assert main(["--verify", str(d / "s.zarr")]) == 0
    summary = capsys.readouterr().out
    assert "CLR       per-k," in summary and "per_k" not in summary  # as --clr spells it
    assert "(1 source row dropped), 2 chunks of 20 rows" in summary


def test_ingest_workers_0_is_refused_saying_it_is_not_trains_read_in_the_loop(one_bad_row, capsys):
    from ingest.__main__ import main
    npy, d = one_bad_row
    assert main([str(npy), str(d / "w.zarr"), "--workers", "0"]) == 2
    assert "train's --workers 0 has no counterpart here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Not train's --workers, whose 0 reads in the training loop" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("key, guess", [("epoch", "epochs"), ("batch-size", "batch_size"), ("hiden", "hidden")])
def test_an_unknown_toml_setting_suggests_the_one_likely_meant(tmp_path, key, guess):
    from kmervae_core.config import load_config
    toml = tmp_path / "c.toml"
    toml.write_text(f"{key} = 2\n")
    with pytest.raises(KmervaeError) as e:
        load_config(str(toml), {})
    assert str(e.value) == f"{toml}: unknown setting {key} (did you mean {guess}?)"


def test_an_unknown_toml_setting_like_none_is_named_without_a_guess(tmp_path):
    from kmervae_core.config import load_config
    toml = tmp_path / "c.toml"
    toml.write_text("colour = 2\nlatent_size = 3\n")
    with pytest.raises(KmervaeError) as e:
        load_config(str(toml), {})
    assert str(e.value) == f"{toml}: unknown settings colour, latent_size"


def test_cpu_ranks_export_no_device_memory_only_their_resident_memory():
    from prometheus_client import generate_latest
    from kmervae_core.training.prometheus import TrainMetrics
    metrics = TrainMetrics("r", {})
    metrics.set_ranks([(10.0, 0.1, math.nan, 5e8), (10.0, 0.1, math.nan, 6e8)])
    text = generate_latest(metrics.registry).decode()
    assert "kmervae_rank_device_memory_bytes{" not in text
    assert 'kmervae_rank_host_memory_bytes{rank="1",run="r"} 6e+08' in text
    metrics.set_ranks([(10.0, 0.1, 2e9, 5e8)])  # a CUDA rank
    assert 'kmervae_rank_device_memory_bytes{rank="0",run="r"} 2e+09' in generate_latest(metrics.registry).decode()


def test_train_launch_help_is_its_own_and_lists_torchruns_options():
    from train.launch import parser
    text = parser().format_help()
    assert text.startswith("usage: python -m train.launch [torchrun options] -m train [train options]")
    assert "ending with the ranks' exit status" in text and "launch.py" not in text
    assert "torchrun's options (passed on to it as they are):" in text
    assert "--nproc-per-node" in text and "--max-restarts" in text and "--standalone" in text


def test_train_launch_parses_torchruns_options_as_torchrun_does():
    from torch.distributed.run import parse_args
    from train.launch import parser
    argv = ["--standalone", "--nproc_per_node=2", "--max-restarts", "3", "-m", "train", "--epochs", "2"]
    assert vars(parser().parse_args(argv)) == vars(parse_args(argv))
