"""Settings and checkpoint files: the TOML file, flags over it, and which checkpoints a run keeps."""
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from kmervae_core.training import checkpoint as ckpt
from conftest import run
from kmervae_core.config import TrainConfig, beta_at, load_config
from kmervae_core.errors import KmervaeError
from kmervae_core.model.vae import VAE, keras_param_count
from kmervae_core.training.tracker import Tracker


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_toml_file_overrides_the_reference_defaults_and_flags_override_the_file(tmp_path):
    toml = write(tmp_path / "run.toml", 'epochs = 7\nlr = 3e-4\nhidden = [256, 128]\nval_split = "tail"\n')
    cfg = load_config(toml, {"epochs": 9, "seed": None})
    assert cfg.epochs == 9  # the flag wins
    assert cfg.lr == 3e-4 and cfg.hidden == [256, 128] and cfg.val_split == "tail"  # the file wins
    assert cfg.seed == 42 and cfg.batch_size == 1024  # a flag not given (None) keeps the default


def test_no_file_gives_the_vaemulti_reference_recipe():
    """The seed's numbers: Adam 1e-4, 100 epochs, batch 1024, β 0.1 warmed up over 5 epochs,
    ReduceLROnPlateau(0.5, 20, min 1e-6), 2772 -> 1024 -> 512 -> 256 mirrored, seed 42."""
    cfg = load_config(None, {})
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.seed) == (1e-4, 100, 1024, 42)
    assert [beta_at(cfg, epoch) for epoch in range(7)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1])
    plateau = Tracker(cfg, torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)).plateau
    assert (plateau.factor, plateau.patience, plateau.min_lrs) == (0.5, 20, [1e-6])
    assert (cfg.hidden, cfg.latent, cfg.kmers, cfg.prior) == ([1024, 512], 256, [6, 5, 4, 3, 2, 1], "normal")
    vae = VAE(hidden=tuple(cfg.hidden), latent=cfg.latent)
    assert (keras_param_count(vae.encoder), keras_param_count(vae.decoder)) == (3_633_152, 3_504_340)


@pytest.mark.parametrize("text, message", [
    ('epochs = "two"\n', 'epochs must be an integer, got "two" (a string)'),
    ("epochs = 2.5\n", "epochs must be an integer, got 2.5 (a number)"),
    ('deterministic = "false"\n', 'deterministic must be true or false, got "false" (a string)'),
    ("lr = true\n", "lr must be a number, got true (a boolean)"),
    ('hidden = "64,32"\n', 'hidden must be a list of integers, e.g. [64, 32], got "64,32" (a string)'),
    ("kmer_weights = [1, 'x']\n", "kmer_weights must be a list of numbers"),
    ("block_kmers = [6, 5]\n", "block_kmers must be a list of lists of integers"),
], ids=["string-for-int", "float-for-int", "string-for-bool", "bool-for-float", "string-for-list", "list-item",
        "flat-for-nested"])
def test_a_value_of_the_wrong_type_in_the_file_is_one_line_naming_the_key_and_the_value(tmp_path, text, message):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(KmervaeError) as e:
        load_config(path, {})
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


def test_an_integer_in_the_file_is_taken_where_a_number_is_wanted(tmp_path):
    cfg = load_config(write(tmp_path / "ints.toml", "lr = 1\nkmer_weights = [2, 1, 1, 1, 1, 1]\n"), {})
    assert type(cfg.lr) is float and cfg.lr == 1.0
    assert [type(w) for w in cfg.kmer_weights] == [float] * 6


def test_a_wrong_type_in_a_config_file_is_one_line_and_exit_2(tmp_path):
    proc = run("train", "--config", write(tmp_path / "bad.toml", 'epochs = "two"\n'))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'train: error: {tmp_path / "bad.toml"}: epochs must be an integer, got "two" (a string)']


@pytest.mark.parametrize("text, message", [
    ("epochs = 3\nlearning_rate = 1e-3\n", "unknown setting learning_rate"),
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


# What each setting does on resume where it differs from the checkpoint's (docs/design.md, "Settings
# on resume"): plan and model refused, recipe in force from the resume on, run applied and unhashed.
ROLES = {
    "plan": "batch_size seed val_fraction val_split window_chunks lanes partitions",
    "model": "hidden latent kmers prior latent_blocks block_kmers",
    "recipe": "epochs lr beta beta_schedule beta_warmup_epochs beta_cycle_epochs plateau_factor plateau_patience min_lr "
              "precision latent_sample latent_pairs select_by kmer_weights length_weight input_noise "
              "likelihood thinning contrastive contrastive_temperature",
    "run": "data store_clr out workers resume init_from checkpoint_every keep_checkpoints deterministic compile cuda_graphs cache "
           "cache_fraction metrics_port metrics_addr pushgateway log_every",
}


def test_every_setting_declares_its_role_on_resume():
    declared = {f.name: f.metadata["role"] for f in dataclasses.fields(TrainConfig)}
    assert declared == {name: role for role, names in ROLES.items() for name in names.split()}


@pytest.mark.parametrize("change", [dict(workers=0), dict(out="elsewhere"), dict(data="moved.zarr"),
                                    dict(cache="none"), dict(deterministic=True), dict(checkpoint_every=7),
                                    dict(metrics_port=0), dict(cuda_graphs="off"), dict(store_clr="per-k")], ids=lambda c: next(iter(c)))
def test_the_config_hash_ignores_how_the_run_is_carried_out(change):
    assert TrainConfig(**change).digest() == TrainConfig().digest()


@pytest.mark.parametrize("change", [dict(lr=1e-3), dict(epochs=3), dict(select_by="spearman"), dict(seed=1),
                                    dict(batch_size=48), dict(hidden=[64, 32]), dict(prior="mog:2")],
                         ids=lambda c: next(iter(c)))
def test_the_config_hash_follows_what_shapes_the_result(change):
    assert TrainConfig(**change).digest() != TrainConfig().digest()


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


# every flag of `python -m train --help`, as a user types it (a boolean has its --no- form)
FLAGS = """--config --data --store-clr --out --epochs --batch-size --lr --seed --hidden --latent --beta --beta-schedule
    --beta-warmup-epochs --beta-cycle-epochs --plateau-factor --plateau-patience --min-lr --val-fraction --val-split
    --workers --window-chunks --lanes --partitions --resume --init-from --checkpoint-every --keep-checkpoints --deterministic
    --no-deterministic --precision --compile --no-compile --cuda-graphs --cache --cache-fraction --metrics-port
    --metrics-addr --pushgateway --log-every --latent-sample --latent-pairs --select-by --kmers --kmer-weights --length-weight --input-noise --likelihood
    --thinning --contrastive --contrastive-temperature --prior
    --latent-blocks --block-kmers""".split()


def test_help_lists_a_flag_for_every_setting(capsys):
    with pytest.raises(SystemExit):
        flags("--help")
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert sorted(set(re.findall(r"(--[a-z][a-z-]*)", usage))) == sorted(FLAGS)


def test_a_flag_undoes_a_true_of_the_file(tmp_path):
    toml = write(tmp_path / "on.toml", "deterministic = true\ncompile = true\n")
    assert load_config(toml, flags()).deterministic is True
    cfg = load_config(toml, flags("--no-deterministic", "--no-compile"))
    assert cfg.deterministic is False and cfg.compile is False


def test_a_flag_sets_its_setting_in_the_settings_type(some_flags):
    assert set(some_flags) == {f.removeprefix("--").replace("-", "_") for f in FLAGS if not f.startswith("--no-")}
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
