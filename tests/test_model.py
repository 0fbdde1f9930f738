"""The reference model, loss, metrics and β schedule against hand computations."""

import numpy as np
import pytest
import torch
from torch import nn

from kmervae_core.config import TrainConfig, beta_at, warmup_end_epoch
from kmervae_core.evaluation.embedding import knn_accuracy
from kmervae_core.model.losses import summarise, vae_loss
from kmervae_core.model.vae import VAE, GlobalBatchNorm1d, architecture, keras_param_count
from kmervae_core.training.recorder import epoch_line


def test_parameter_counts_equal_the_keras_reference():
    vae = VAE()
    assert keras_param_count(vae.encoder) == 3_633_152
    assert keras_param_count(vae.decoder) == 3_504_340


def test_the_architecture_is_read_back_from_an_encoders_weights():
    vae = VAE()
    assert architecture(vae.encoder.state_dict()) == (2772, (1024, 512), 256)
    assert architecture(VAE(hidden=(64, 32, 16), latent=8).encoder.state_dict()) == (2772, (64, 32, 16), 8)


def test_log_var_is_clipped():
    vae = VAE(hidden=(16,), latent=4).eval()
    with torch.no_grad():
        vae.encoder.z_log_var.bias.fill_(50.0)
        _, lv = vae.encoder(torch.randn(3, 2772))
    assert lv.max().item() == 2.0


def loss_case() -> tuple[np.ndarray, ...]:
    """x, reconstruction, mu, log var of 5 rows; the hand-computed reconstruction loss and KL."""
    rng = np.random.default_rng(0)
    x, r = rng.normal(size=(5, 2772)), rng.normal(size=(5, 2772))
    mu, lv = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    recon = ((r - x) ** 2).sum(axis=1).mean()
    kl = np.mean([-0.5 * np.sum(1 + lv[i] - mu[i] ** 2 - np.exp(lv[i])) for i in range(5)])
    return x, r, mu, lv, recon, kl


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def test_loss_matches_a_hand_computation():
    x, r, mu, lv, recon, kl = loss_case()
    total, _ = vae_loss(t(x), t(r), t(mu), t(lv), 0.06)
    assert total.item() == pytest.approx(recon + 0.06 * kl, rel=1e-5)


def test_metrics_match_a_hand_computation():
    x, r, mu, lv, recon, kl = loss_case()
    _, sums = vae_loss(t(x), t(r), t(mu), t(lv), 0.06)
    m = summarise(sums, 0.06)
    assert m["rows"] == 5 and m["recon"] == pytest.approx(recon, rel=1e-5) and m["kl"] == pytest.approx(kl, rel=1e-5)
    assert m["mse"] == pytest.approx(((r - x) ** 2).mean(), rel=1e-5)
    assert m["mse_6mer"] == pytest.approx(((r - x)[:, :2080] ** 2).mean(), rel=1e-5)
    assert m["mse_1mer"] == pytest.approx(((r - x)[:, 2770:] ** 2).mean(), rel=1e-5)


def test_global_batchnorm_alone_is_keras_batchnorm():
    torch.manual_seed(0)
    ours, ref = GlobalBatchNorm1d(16, momentum=0.01, eps=1e-3), nn.BatchNorm1d(16, momentum=0.01, eps=1e-3)
    for _ in range(3):
        x = torch.randn(32, 16) * 3 + 1
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_beta_warms_up_as_the_reference_logs():
    cfg = TrainConfig()
    assert [round(beta_at(cfg, e), 4) for e in range(7)] == [0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1]
    assert warmup_end_epoch(cfg) == 4


def test_a_cyclical_beta_warms_up_again_every_cycle():
    cyc = TrainConfig(beta_schedule="cyclical", beta_cycle_epochs=4)
    assert [round(beta_at(cyc, e), 4) for e in range(8)] == [0.05, 0.1, 0.1, 0.1] * 2


def test_epoch_line_is_the_reference_format():
    train = {"recon": 3896.94, "kl": 475.37}
    val = {"loss": 3397.95, "mse": 1.41, "mse_6mer": 1.52, "mse_5mer": 1.21, "mse_4mer": 0.98,
           "mse_3mer": 0.76, "mse_2mer": 0.45, "mse_1mer": 0.12}
    assert epoch_line(2, 100, 0.06, train, val, 123456) == (
        "Epoch 3/100: Recon: 3896.94, KL: 475.37 (w=0.0600), Val: 3397.95, MSE: 1.41 [6mer=1.52, 5mer=1.21, "
        "4mer=0.98, 3mer=0.76, 2mer=0.45, 1mer=0.12] 123,456 samples/s")


def test_knn_accuracy_matches_brute_force():
    rng = np.random.default_rng(1)
    z, labels = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    z[labels == 1] += 2.0
    hits = 0
    for i in range(60):
        d = [(np.sum((z[i] - z[j]) ** 2), j) for j in range(60) if j != i]
        near = [j for _, j in sorted(d)[:5]]
        counts = [sum(labels[j] == c for j in near) for c in range(3)]
        hits += int(np.argmax(counts) == labels[i])
    assert knn_accuracy(z, labels, k=5, block=7) == pytest.approx(hits / 60)


def test_cross_validated_knn_matches_brute_force():
    from kmervae_core.evaluation.embedding import knn_cv_accuracy
    rng = np.random.default_rng(5)
    z, labels = rng.normal(size=(50, 3)), rng.choice(["a", "b", "c"], 50)
    z[labels == "b"] += 1.5
    fold = np.random.default_rng([7, 0xF01D]).permutation(50) % 5
    hits = 0
    for i in range(50):
        d = sorted((np.sum((z[i] - z[j]) ** 2), j) for j in range(50) if fold[j] != fold[i])
        near = [labels[j] for _, j in d[:5]]
        counts = {c: near.count(c) for c in ("a", "b", "c")}
        hits += int(max(counts, key=lambda c: (counts[c], -ord(c))) == labels[i])
    assert knn_cv_accuracy(z, labels, k=5, folds=5, seed=7) == pytest.approx(hits / 50)
    assert hits < 50  # the classes overlap: a wrong fold assignment would change the figure


def latents() -> np.ndarray:
    """200 latent rows whose 6 units have variances 1 .. 0 (two of them under 0.01)."""
    return np.random.default_rng(3).normal(size=(200, 6)) * np.array([1.0, 0.5, 0.2, 0.09, 0.05, 0.0])


def test_active_units_are_those_of_variance_over_a_hundredth():
    from kmervae_core.evaluation.embedding import active_units
    z = latents()
    assert active_units(z) == int(sum(np.var(z[:, c]) > 0.01 for c in range(6)))


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr
    from kmervae_core.evaluation.embedding import spearman
    rng = np.random.default_rng(8)
    a, b = rng.integers(0, 5, 300).astype(float), rng.normal(size=300)  # ties in a
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_sampled_pairs_are_of_distinct_rows_and_fixed_by_the_seed():
    from kmervae_core.evaluation.embedding import sample_pairs
    i, j = sample_pairs(200, 500, seed=1)
    assert (i != j).all() and np.array_equal(sample_pairs(200, 500, seed=1)[0], i)


def test_distance_spearman_matches_scipy_over_the_pairs():
    from scipy.stats import spearmanr
    from kmervae_core.evaluation.embedding import distance_spearman, pair_distances, sample_pairs
    z, x = latents(), np.random.default_rng(9).normal(size=(200, 30))
    i, j = sample_pairs(200, 500, seed=1)
    dz = [np.sqrt(((z[p] - z[q]) ** 2).sum()) for p, q in zip(i, j)]
    dx = [np.sqrt(((x[p] - x[q]) ** 2).sum()) for p, q in zip(i, j)]
    assert pair_distances(x, i, j) == pytest.approx(dx, rel=1e-12)
    assert distance_spearman(z, pair_distances(x, i, j), (i, j)) == pytest.approx(spearmanr(dz, dx).statistic, abs=1e-12)


def weighted_subset() -> tuple:
    """5-mers weighted 2 and 2-mers 0.5 over 4 rows: (groups, x, r, mu, lv, the loss's sums)."""
    from kmervae_core.store.kmers import selected_groups
    rng = np.random.default_rng(4)
    _, groups = selected_groups([5, 2])  # 512 + 10 columns
    x, r = rng.normal(size=(4, 522)), rng.normal(size=(4, 522))
    mu, lv = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    return groups, x, r, mu, lv, vae_loss(t(x), t(r), t(mu), t(lv), 0.1, groups, {5: 2.0, 2: 0.5})


def test_weighted_subset_loss_matches_a_hand_computation():
    _, x, r, mu, lv, (total, _) = weighted_subset()
    sq = (r - x) ** 2
    recon = (2.0 * sq[:, :512].sum(axis=1) + 0.5 * sq[:, 512:].sum(axis=1)).mean()
    kl = (-0.5 * (1 + lv - mu ** 2 - np.exp(lv)).sum(axis=1)).mean()
    assert total.item() == pytest.approx(recon + 0.1 * kl, rel=1e-5)


def test_a_subsets_metrics_are_of_its_groups_and_unweighted():
    groups, x, r, _, _, (_, sums) = weighted_subset()
    sq = (r - x) ** 2
    m = summarise(sums, 0.1, groups)
    assert set(k for k in m if k.startswith("mse_")) == {"mse_5mer", "mse_2mer"}
    assert m["mse_2mer"] == pytest.approx(sq[:, 512:].mean(), rel=1e-5)  # metrics stay unweighted
    assert m["mse"] == pytest.approx(sq.mean(), rel=1e-5)
