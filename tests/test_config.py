"""Settings and checkpoint files: the TOML file, flags over it, and which checkpoints a run keeps."""
import dataclasses
from pathlib import Path

import pytest
import torch

from kmervae_core.training import checkpoint as ckpt
from kmervae_core.config import TrainConfig, load_config
from kmervae_core.errors import KmervaeError


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_toml_file_overrides_the_reference_defaults_and_flags_override_the_file(tmp_path):
    toml = write(tmp_path / "run.toml", 'epochs = 7\nlr = 3e-4\nhidden = [256, 128]\nval_split = "tail"\n')
    cfg = load_config(toml, {"epochs": 9, "seed": None})
    assert cfg.epochs == 9  # the flag wins
    assert cfg.lr == 3e-4 and cfg.hidden == [256, 128] and cfg.val_split == "tail"  # the file wins
    assert cfg.seed == 42 and cfg.batch_size == 1024  # a flag not given (None) keeps the default


def test_no_file_gives_the_reference_recipe():
    assert load_config(None, {}) == TrainConfig()


@pytest.mark.parametrize("text, message", [
    ("epochs = 3\nlearning_rate = 1e-3\n", "unknown settings learning_rate"),
    ("epochs = \n", "not valid TOML"),
    ("epochs = 0\n", "epochs must be at least 1"),
])
def test_a_bad_config_file_is_one_line_naming_the_problem(tmp_path, text, message):
    with pytest.raises(KmervaeError, match=message) as e:
        load_config(write(tmp_path / "bad.toml", text), {})
    assert "\n" not in str(e.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(KmervaeError, match="absent.toml: no such config file"):
        load_config(str(tmp_path / "absent.toml"), {})


def pruned(run_dir: Path) -> Path:
    """Five checkpoints (steps out of order within an epoch) and a user's file, pruned to 2."""
    for epoch, step in [(0, 5), (0, 10), (1, 1000), (1, 999), (2, 20000)]:
        ckpt.atomic_save({"step": step}, ckpt.checkpoint_path(run_dir, epoch, step))
    (run_dir / "checkpoints" / "notes.txt").write_text("mine")
    ckpt.prune(run_dir, keep=2)
    return run_dir / "checkpoints"


def test_pruning_keeps_the_newest_checkpoints_by_step(tmp_path):
    pruned(tmp_path)
    kept = [torch.load(p, weights_only=True)["step"] for p in ckpt.list_checkpoints(tmp_path)]
    assert kept == [1000, 20000]


def test_pruning_leaves_other_files_in_the_checkpoint_folder(tmp_path):
    folder = pruned(tmp_path)
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ckpt-e0001-s000001000.pt", "ckpt-e0002-s000020000.pt", "notes.txt"]


def flags(*args: str) -> dict:
    from train.__main__ import parse_args
    return vars(parse_args(list(args)))


@pytest.fixture(scope="module")
def some_flags() -> dict:
    return flags("--hidden", "64,32", "--block-kmers", "6/5,4/3,2,1", "--kmer-weights", "1,0.5",
                 "--deterministic", "--val-split", "tail", "--partitions", "4", "--min-lr", "1e-7")


def test_every_setting_has_a_flag(some_flags):
    assert set(some_flags) - {"config"} == {f.name for f in dataclasses.fields(TrainConfig)}


def test_a_flag_sets_its_setting_in_the_settings_type(some_flags):
    args = some_flags
    assert args["hidden"] == [64, 32] and args["block_kmers"] == [[6], [5, 4], [3, 2, 1]]
    assert args["kmer_weights"] == [1.0, 0.5] and args["deterministic"] is True and args["val_split"] == "tail"
    assert args["partitions"] == 4 and args["min_lr"] == 1e-7


def test_a_flag_not_given_leaves_the_setting_to_the_file_or_the_default(some_flags):
    assert some_flags["epochs"] is None and some_flags["compile"] is None


def test_a_choice_outside_its_list_is_refused_by_flag(capsys):
    with pytest.raises(SystemExit):
        flags("--cache", "disk")
    assert "invalid choice: 'disk'" in capsys.readouterr().err


def test_a_choice_outside_its_list_is_refused_by_file(tmp_path):
    with pytest.raises(KmervaeError, match="cache must be one of auto, device, host, none"):
        load_config(write(tmp_path / "c.toml", 'cache = "disk"\n'), {})
