"""`--likelihood multinomial` and the thinned views it allows (`--thinning`, `--contrastive`): the
frequencies read back from a CLR store, the count deviance and the per-k-mer MSE against float64
numpy written from the definitions (docs/experiments.md, "The multinomial likelihood"), the
refusals, and that a tiny run of each setting trains."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from conftest import DESIGN_SOURCE, random_kmers, reference_clr, run
from kmervae_core.config import TrainConfig, load_config
from kmervae_core.errors import KmervaeError
from kmervae_core.model.likelihood import Multinomial, nt_xent
from kmervae_core.model.losses import summarise, vae_loss
from kmervae_core.store.clr import ClrSpec
from kmervae_core.model.vae import Encoder
from kmervae_core.store.kmers import KMER_GROUPS, selected_groups
from tests.conftest import train_config
from tests.test_train import TINY, first_step, train_args

CPU = torch.device("cpu")
SIZES = {k: b - a for k, (a, b) in DESIGN_SOURCE.items()}


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def used(rows: np.ndarray, ks) -> dict[int, np.ndarray]:
    """Each k group's frequencies of source rows, float64."""
    return {k: np.asarray(rows, np.float64)[:, slice(*DESIGN_SOURCE[k])] for k in ks}


def log_softmax(a: np.ndarray) -> np.ndarray:
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("scope", ["per_k", "global"])
def test_the_frequencies_are_read_back_exactly_from_either_clr(scope):
    rows = random_kmers(8, seed=3)
    c = reference_clr(rows, scope).astype(np.float32)
    f = Multinomial(KMER_GROUPS, ClrSpec(scope), CPU).frequencies(t(c)).double().numpy()
    np.testing.assert_allclose(f, np.asarray(rows, np.float64)[:, 8193:10965], rtol=1e-4, atol=2e-7)
    if scope == "per_k":  # the softmax alone is biased toward uniform: (f + 1/4) / 1.5 for the 1-mers
        np.testing.assert_allclose(torch.softmax(t(c[:, 2770:]), 1).numpy(), (f[:, 2770:] + 0.25) / 1.5, rtol=1e-4)


def hand_case(scope: str, ks: list[int]):
    """Rows of the `ks` groups as the store holds them (CLR), contig lengths (one shorter than a
    2-mer), logits; their float64 frequencies."""
    rng = np.random.default_rng(5)
    rows = random_kmers(3, seed=7)
    assert all(np.allclose(g.sum(axis=1), 1) for g in used(rows, SIZES).values())  # a composition in every group
    c_all = reference_clr(rows, scope)
    columns, groups = selected_groups(ks)
    f = used(rows, ks)
    lengths = np.array([7.0, 30.0, 1.0])
    logits = rng.normal(size=(3, len(columns)))
    mu, lv = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    return c_all[:, columns], groups, f, lengths, logits, mu, lv


def test_the_multinomial_term_matches_a_hand_computation():
    c, groups, f, lengths, logits, mu, lv = hand_case("per_k", [2, 1])
    weights = {2: 2.0, 1: 0.5}
    recon = np.zeros(3)
    for g in groups:  # deviance: sum n (log f - log softmax(logits)), n = f (L - k + 1), 0 log 0 = 0
        n = f[g.k] * np.maximum(lengths - g.k + 1, 0)[:, None]
        log_f = np.log(np.where(f[g.k] > 0, f[g.k], 1.0))
        recon += weights[g.k] * (n * (log_f - log_softmax(logits[:, g.local]))).sum(axis=1)
    kl = (-0.5 * (1 + lv - mu ** 2 - np.exp(lv)).sum(axis=1)).mean()
    total, sums = vae_loss(t(c), t(logits), t(mu), t(lv), 0.3, groups, weights,
                           counts=Multinomial(groups, ClrSpec("per_k"), CPU), lengths=t(lengths))
    assert total.item() == pytest.approx(recon.mean() + 0.3 * kl, rel=1e-5)
    assert summarise(sums, 0.3, groups)["recon"] == pytest.approx(recon.mean(), rel=1e-5)


@pytest.mark.parametrize("scope, ks", [("per_k", [2, 1]), ("global", [6, 5, 4, 3, 2, 1]), ("global", [3, 1])])
def test_the_per_kmer_mse_is_of_the_clr_of_the_decoded_probabilities(scope, ks):
    c, groups, _, lengths, logits, mu, lv = hand_case(scope, ks)
    spec = ClrSpec(scope)
    p = np.concatenate([np.full(g.size, spec.pseudocounts()[g.k]) for g in groups])
    q = np.exp(np.concatenate([log_softmax(logits[:, g.local]) for g in groups], axis=1))
    logs = np.log(q + p)
    decoded = np.empty_like(logs)
    for cols in ([g.local for g in groups] if scope == "per_k" else [slice(0, logs.shape[1])]):
        # the CLR of the decoded frequencies, at the input's mean over the same columns: 0, but for a
        # global CLR of some k groups, centred over all 2,772
        decoded[:, cols] = logs[:, cols] - logs[:, cols].mean(axis=1, keepdims=True) + c[:, cols].mean(axis=1,
                                                                                                   keepdims=True)
    if len(ks) == 6:
        np.testing.assert_allclose(c.mean(axis=1), 0, atol=1e-9)  # all groups: the CLR's own definition
    _, sums = vae_loss(t(c), t(logits), t(mu), t(lv), 0.3, groups,
                       counts=Multinomial(groups, spec, CPU), lengths=t(lengths))
    m = summarise(sums, 0.3, groups)
    for g in groups:
        assert m[f"mse_{g.k}mer"] == pytest.approx(((decoded - c)[:, g.local] ** 2).mean(), rel=1e-4)
    assert m["mse"] == pytest.approx(((decoded - c) ** 2).mean(), rel=1e-4)


def test_nt_xent_matches_a_hand_computation():
    rng = np.random.default_rng(2)
    a, b, temperature = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), 0.5
    z = np.concatenate([a, b])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(6):
        sims = np.array([z[i] @ z[j] / temperature for j in range(6) if j != i])
        positive = z[i] @ z[(i + 3) % 6] / temperature
        losses.append(-positive + np.log(np.exp(sims).sum()))
    assert nt_xent(t(a), t(b), temperature).item() == pytest.approx(np.mean(losses), rel=1e-5)


@pytest.mark.parametrize("settings, message", [
    (dict(thinning=0.5), "thinning and contrastive need likelihood multinomial"),
    (dict(likelihood="multinomial", contrastive=1.0), "contrastive needs thinning"),
    (dict(likelihood="multinomial", thinning=1.0), "thinning must be in \\[0, 1\\)"),
    (dict(likelihood="multinomial", length_weight=1.0), "length_weight does not go with likelihood multinomial"),
    (dict(likelihood="poisson"), "likelihood must be one of mse, multinomial"),
])
def test_settings_that_cannot_work_are_one_line(settings, message):
    with pytest.raises(KmervaeError, match=f"^bad configuration: {message}"):
        load_config(None, settings)


def test_a_store_without_lengths_in_column_0_is_one_line_and_exit_2(sample, tmp_path):
    rows = np.load(sample[0])
    rows[:, 0] = np.arange(len(rows))  # a row index, as some counters write: row 0 holds 0
    np.save(tmp_path / "all_kmers.npy", rows)
    run("ingest", tmp_path / "all_kmers.npy", tmp_path / "kmers.zarr", "--chunk-rows", 100, check=True)
    proc = run("train", *train_args(str(tmp_path / "kmers.zarr"), tmp_path / "run", "--likelihood", "multinomial",
                                    *TINY))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"train: error: --likelihood multinomial needs each row's contig length in column 0; 1 row of "
        f"{tmp_path / 'kmers.zarr'} has none (0 or less)")
    assert not (tmp_path / "run" / "checkpoints").exists()


def lengths_of(store: str, clean: np.ndarray) -> np.ndarray:
    """The contig lengths (column 0) of a batch's rows, found by value."""
    group = zarr.open_group(store, mode="r")
    where = {row.tobytes(): i for i, row in enumerate(group["clr"][:])}
    return group["column0"][:].astype(np.float64)[[where[row.astype(np.float32).tobytes()] for row in clean]]


def test_thinning_shows_the_encoder_thinned_counts_and_scores_the_full_ones(train_store, tmp_path):
    store = train_store[0]
    clean, seen, logits, sums = first_step(store, tmp_path / "run", likelihood="multinomial", thinning=0.5)
    lengths = lengths_of(store, clean)
    counts = Multinomial(KMER_GROUPS, ClrSpec("global"), CPU)
    f, f_seen = (counts.frequencies(t(a)).double().numpy() for a in (clean, seen))
    # the term scores the full counts: the deviance of the clean row's counts
    recon = 0.0
    for g in KMER_GROUPS:
        n = f[:, g.local] * (lengths - g.k + 1)[:, None]
        recon += (n * (np.log(np.where(n > 0, f[:, g.local], 1.0)) - log_softmax(logits[:, g.local]))).sum()
    assert sums[1] == pytest.approx(recon, rel=1e-4)
    # the encoder's row: the 1-mer share of half the counts, kept at random: off the full row's by
    # binomial noise, sd sqrt(f (1 - f) (1 - keep) / (keep L)) about
    share, share_seen = f[:, 2770], f_seen[:, 2770]
    z = (share_seen - share) / np.sqrt(share * (1 - share) / lengths)
    assert 0.5 < z.std() < 2 and abs(z.mean()) < 1
    counts_seen = f_seen[:, 2770:] * np.round(f_seen[:, 2770:].sum(1) * lengths * 0.5)[:, None]
    assert np.abs(counts_seen - np.round(counts_seen)).max() < 1  # whole k-mers (the rounding of the kept total)


@pytest.fixture(scope="module")
def runs(train_store, tmp_path_factory) -> dict[str, tuple[list[str], list[dict], TrainConfig]]:
    """Tiny 4-epoch runs: one per setting (the multinomial one on the 5..1-mers, weighted)."""
    store, d = train_store[0], tmp_path_factory.mktemp("likelihood")
    settings = {"multinomial": dict(likelihood="multinomial", kmers=[5, 4, 3, 2, 1], kmer_weights=[0.3, 1, 1, 1, 1]),
                "thinning": dict(likelihood="multinomial", thinning=0.5),
                "contrastive": dict(likelihood="multinomial", thinning=0.5, contrastive=200.0)}
    out = {}
    for name, extra in settings.items():
        cfg = TrainConfig(data=store, out=str(d / name), batch_size=48, workers=0, hidden=[64, 32], latent=8, epochs=4, lr=1e-3,
                          metrics_port=0, latent_sample=200, deterministic=True, **extra)
        said = train_config(cfg)
        out[name] = (said, json.loads((d / name / "history.json").read_text()), cfg)
    return out


@pytest.mark.parametrize("name, figure, by", [("multinomial", "train_recon", 0.9), ("thinning", "train_recon", 0.9),
                                              ("contrastive", "train_contrastive", 0.98)])
def test_a_tiny_run_of_each_setting_lowers_its_loss(runs, name, figure, by):
    _, history, _ = runs[name]  # NT-Xent over 48 rows of 4 genomes: same-genome negatives keep it high
    assert history[-1][figure] < by * history[0][figure]
    ks = range(1, 6) if name == "multinomial" else range(1, 7)
    assert all(np.isfinite(h[f"val_mse_{k}mer"]) for h in history for k in ks)


def test_the_decoder_export_records_its_logit_groups_and_train_encode_takes_the_encoder(runs, tmp_path):
    _, _, cfg = runs["multinomial"]
    decoder = torch.load(f"{cfg.out}/vae_multi_decoder_final.pt", weights_only=True)
    assert decoder.pop("logit_groups").tolist() == [5, 4, 3, 2, 1]
    model = torch.load(f"{cfg.out}/vae_multi_final.pt", weights_only=True)
    assert decoder.keys() == {k.removeprefix("decoder.") for k in model if k.startswith("decoder.")}
    encoder = torch.load(f"{cfg.out}/vae_multi_encoder_final.pt", weights_only=True)
    assert encoder.keys() == {k.removeprefix("encoder.") for k in model if k.startswith("encoder.")}
    run("train.encode", "--checkpoint", f"{cfg.out}/vae_multi_encoder_final.pt", "--data", cfg.data,
        "--out", tmp_path / "z.zarr", check=True)
    enc = Encoder(692, (64, 32), 8).eval()
    enc.load_state_dict(encoder)
    with torch.no_grad():
        want = enc(torch.from_numpy(zarr.open_group(cfg.data, mode="r")["clr"][:, 2080:]))[0].numpy()
    np.testing.assert_allclose(zarr.open_group(str(tmp_path / "z.zarr"), mode="r")["z_mean"][:], want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_processes_train_the_multinomial_likelihood_like_one_and_run_the_contrastive_term(train_store, tmp_path):
    """The counts' lengths follow each rank's rows; the second thinned view is encoded outside
    DDP's forward, whose gradient averaging must still cover it (its draws differ by world size)."""
    from tests.conftest import train_here
    from tests.test_train import history, torchrun
    store = train_store[0]
    args = ("--epochs", 2, "--latent-sample", 0, *TINY, "--likelihood", "multinomial")
    train_here(*train_args(store, tmp_path / "one", *args))
    two = torchrun("train", *train_args(store, tmp_path / "two", *args))
    assert two.returncode == 0, two.stderr[-3000:]
    for a, b in zip(history(tmp_path / "one"), history(tmp_path / "two"), strict=True):
        for key in ("train_recon", "train_mse_6mer", "val_loss", "val_mse_1mer"):
            assert a[key] == pytest.approx(b[key], rel=2e-3), key
    views = torchrun("train", *train_args(store, tmp_path / "views", *args, "--thinning", 0.5, "--contrastive", 100))
    assert views.returncode == 0, views.stderr[-3000:]
    assert all(np.isfinite(h["train_contrastive"]) and np.isfinite(h["val_loss"]) for h in history(tmp_path / "views"))
