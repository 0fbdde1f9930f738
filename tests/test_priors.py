"""Learned priors and per-scale latents against float64 hand computations and scipy."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from kmervae_core.config import TrainConfig, parse_prior, resume_mismatch
from kmervae_core.errors import KmervaeError
from kmervae_core.store.kmers import block_columns
from kmervae_core.model.losses import summarise, vae_loss
from kmervae_core.training.prometheus import TrainMetrics
from kmervae_core.model.vae import VAE, BlockEncoder, encoder_from_state
from kmervae_core.model.priors import MixturePrior, VampPrior, mixture_log_density, normal_kl, posterior_log_density

SIZES = [3, 2]  # two latent blocks


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def reference_mixture_log_density(z, means, log_vars, weights):
    """log sum_k w_k prod_d N(z_d; m_kd, e^lv_kd), float64, one block."""
    per_k = np.array([[norm.logpdf(row, m, np.exp(0.5 * lv)).sum() for m, lv in zip(means, log_vars)] for row in z])
    return logsumexp(per_k + np.log(weights), axis=1)


def test_mixture_log_density_matches_scipy_per_block():
    rng = np.random.default_rng(0)
    z, means, log_vars = rng.normal(size=(7, 5)), rng.normal(size=(4, 5)), rng.normal(size=(4, 5)) * 0.5
    weights = rng.dirichlet(np.ones(4))
    got = mixture_log_density(t(z), t(means), t(log_vars), t(np.log(weights)), SIZES).numpy()
    for b, cols in enumerate([slice(0, 3), slice(3, 5)]):
        want = reference_mixture_log_density(z[:, cols], means[:, cols], log_vars[:, cols], weights)
        np.testing.assert_allclose(got[:, b], want, rtol=1e-5)


def test_single_sample_kl_is_log_q_minus_log_p_at_the_sampled_z():
    torch.manual_seed(1)
    prior = MixturePrior(3, SIZES)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.5, -1.0, 0.2]))
    mu, lv, eps = torch.randn(6, 5), torch.randn(6, 5) * 0.3, torch.randn(6, 5)
    z = mu + torch.exp(0.5 * lv) * eps
    kl = prior.kl(None, mu, lv, z, eps).detach().double().numpy()
    z64, mu64, sd = z.double().numpy(), mu.double().numpy(), np.exp(0.5 * lv.double().numpy())
    w = np.exp(prior.logits.double().detach().numpy())
    w /= w.sum()
    for b, cols in enumerate([slice(0, 3), slice(3, 5)]):
        log_q = norm.logpdf(z64[:, cols], mu64[:, cols], sd[:, cols]).sum(axis=1)
        log_p = reference_mixture_log_density(z64[:, cols], prior.means.detach().double().numpy()[:, cols],
                                              prior.log_vars.detach().double().numpy()[:, cols], w)
        assert kl[b] == pytest.approx((log_q - log_p).sum(), rel=1e-4)


def test_posterior_log_density_is_the_gaussians_at_the_sampled_z():
    torch.manual_seed(1)
    mu, lv, eps = torch.randn(6, 5), torch.randn(6, 5) * 0.3, torch.randn(6, 5)
    z = (mu + torch.exp(0.5 * lv) * eps).double().numpy()
    np.testing.assert_allclose(posterior_log_density(lv, eps, [5]).numpy()[:, 0],
                               norm.logpdf(z, mu.double().numpy(), np.exp(0.5 * lv.double().numpy())).sum(axis=1),
                               rtol=1e-5)


def test_normal_prior_kl_is_the_reference_closed_form_per_block():
    rng = np.random.default_rng(2)
    mu, lv = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    terms = -0.5 * (1 + lv - mu ** 2 - np.exp(lv))
    np.testing.assert_allclose(normal_kl(t(mu), t(lv), SIZES).numpy(), [terms[:, :3].sum(), terms[:, 3:].sum()], rtol=1e-5)


def test_the_default_prior_gives_the_reference_closed_form_kl():
    """Not the single-sample estimate of the learned priors: the figure does not depend on the noise."""
    torch.manual_seed(7)
    vae = VAE(hidden=(16,), latent=5)
    _, mu, lv, kl = vae(torch.randn(6, 2772), torch.randn(6, 5) * 3)
    mu, lv = mu.detach().double().numpy(), lv.detach().double().numpy()
    assert kl.shape == (1,)
    assert kl.item() == pytest.approx((-0.5 * (1 + lv - mu ** 2 - np.exp(lv))).sum(), rel=1e-5)


def block_kl_sums() -> tuple[np.ndarray, torch.Tensor]:
    """Hand-computed KL terms of 4 rows x 5 latents, and the loss's sums over blocks of 3 and 2."""
    rng = np.random.default_rng(3)
    mu, lv = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    x, r = torch.randn(4, 2772), torch.randn(4, 2772)
    _, sums = vae_loss(x, r, t(mu), t(lv), 0.1, kl=normal_kl(t(mu), t(lv), SIZES))
    return -0.5 * (1 + lv - mu ** 2 - np.exp(lv)), sums


def test_block_kl_reaches_the_summary():
    terms, sums = block_kl_sums()
    m = summarise(sums, 0.1, blocks=("6", "5+4"))
    assert m["kl"] == pytest.approx(terms.sum(axis=1).mean(), rel=1e-5)
    assert m["kl_block_6"] == pytest.approx(terms[:, :3].sum(axis=1).mean(), rel=1e-5)
    assert m["kl_block_5+4"] == pytest.approx(terms[:, 3:].sum(axis=1).mean(), rel=1e-5)


def test_a_summary_without_blocks_has_no_block_kl():
    _, sums = block_kl_sums()
    assert not any(k.startswith("kl_block") for k in summarise(sums, 0.1))


def test_block_kl_reaches_prometheus_with_a_block_label():
    _, sums = block_kl_sums()
    m = summarise(sums, 0.1, blocks=("6", "5+4"))
    metrics = TrainMetrics("r", {})
    metrics.set_train(m, 0.1, 1e-4, 0)
    assert metrics.registry.get_sample_value("kmervae_train_kl_block_loss", {"run": "r", "block": "5+4"}) == \
        pytest.approx(m["kl_block_5+4"])


def test_vamp_pseudo_inputs_go_through_the_encoder_on_running_statistics():
    torch.manual_seed(4)
    vae = VAE(hidden=(16, 8), latent=5, prior="vamp:3")
    prior: VampPrior = vae.prior
    x = torch.randn(12, 2772)
    vae(x, torch.zeros(12, 5))  # move the running statistics off their start
    before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    means, log_vars, log_w = prior.components(vae.encoder)
    assert vae.encoder.training  # the mode is put back
    assert all(torch.equal(before[k], v) for k, v in vae.encoder.state_dict().items())  # statistics untouched
    vae.encoder.eval()
    with torch.no_grad():
        want_mu, want_lv = vae.encoder(prior.pseudo_inputs)
    torch.testing.assert_close(means.detach(), want_mu)
    torch.testing.assert_close(log_vars.detach(), want_lv)
    torch.testing.assert_close(log_w, torch.full((3,), -np.log(3.0)))


PER_SCALE = [[6], [5], [4, 3, 2, 1]]


def test_block_columns_are_each_blocks_k_groups_in_store_order():
    cols = block_columns([6, 5, 4, 3, 2, 1], PER_SCALE)
    assert [(c[0], c[-1] + 1) for c in cols] == [(0, 2080), (2080, 2592), (2592, 2772)]
    assert [(c[0], c[-1] + 1) for c in block_columns([5, 2, 1], [[2, 5], [1]])] == [(0, 522), (522, 524)]


def per_scale_vae() -> VAE:
    torch.manual_seed(5)
    cols = block_columns([6, 5, 4, 3, 2, 1], PER_SCALE)
    return VAE(hidden=(16,), latent=6, prior="normal", blocks=[torch.as_tensor(c) for c in cols], sizes=[3, 2, 1]).eval()


def test_per_scale_encoder_reads_only_its_own_k_groups():
    vae = per_scale_vae()
    x = torch.randn(4, 2772)
    y = x.clone()
    y[:, 2080:] += 1.0  # changes only what blocks 2 and 3 read
    with torch.no_grad():
        (mx, _), (my, _) = vae.encoder(x), vae.encoder(y)
    assert torch.equal(mx[:, :3], my[:, :3]) and not torch.equal(mx[:, 3:5], my[:, 3:5])


def test_a_per_scale_encoder_is_rebuilt_from_its_weights():
    vae = per_scale_vae()
    x = torch.randn(4, 2772)
    with torch.no_grad():
        mx = vae.encoder(x)[0]
    rebuilt = encoder_from_state(vae.encoder.state_dict())
    assert isinstance(rebuilt, BlockEncoder) and rebuilt.latent == 6
    rebuilt.load_state_dict(vae.encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x)[0], mx)


@pytest.mark.parametrize("spec", ["mog:0", "vamp:-1", "gauss", "mog", "normal:3", "vamp:x"])
def test_bad_priors_are_refused(spec):
    with pytest.raises(KmervaeError, match="prior"):
        parse_prior(spec)


def test_good_priors_and_block_settings_are_accepted():
    assert parse_prior("mog:4") == ("mog", 4) and parse_prior("vamp:16") == ("vamp", 16)
    TrainConfig(latent=8, latent_blocks=[4, 2, 2]).validate()


def test_block_settings_that_cannot_work_are_refused():
    for bad, message in [(dict(latent=8, latent_blocks=[4, 2, 1]), "add up to latent 8"),
                         (dict(latent=8, latent_blocks=[4, 4]), "2 sizes for 3 blocks"),
                         (dict(latent=8, latent_blocks=[4, 4], block_kmers=[[6, 5], [4, 3, 2]]), "share out"),
                         (dict(latent=8, latent_blocks=[8], kmers=[5, 4], block_kmers=[[6]]), "share out"),
                         (dict(latent=8, block_kmers=[[6, 5], [4, 3, 2, 1]]), "block_kmers needs latent_blocks")]:
        with pytest.raises(KmervaeError, match=message):
            TrainConfig(**bad).validate()


def test_resuming_under_another_model_setting_names_it_with_both_values():
    reference = TrainConfig().to_dict()
    assert resume_mismatch(reference, TrainConfig(hidden=[64, 32])).startswith(
        "hidden 1024,512 in the checkpoint, 64,32 now: a resumed run keeps its model")
    assert resume_mismatch(reference, TrainConfig(latent=8, hidden=[64, 32])).startswith(
        "hidden 1024,512 in the checkpoint, 64,32 now; latent 256 in the checkpoint, 8 now:")
    blocks = TrainConfig(latent=8, latent_blocks=[4, 2, 2]).to_dict()
    assert "latent_blocks 4,2,2 in the checkpoint, 2,4,2 now" in resume_mismatch(
        blocks, TrainConfig(latent=8, latent_blocks=[2, 4, 2]))
    assert resume_mismatch(blocks, TrainConfig(latent=8, latent_blocks=[4, 2, 2])) is None


def test_a_checkpoint_from_before_priors_and_blocks_is_of_a_flat_run_under_the_normal_prior():
    flat = TrainConfig(latent=8).to_dict()
    old = {k: v for k, v in flat.items() if k not in ("prior", "latent_blocks", "block_kmers")}
    assert resume_mismatch(old, TrainConfig(latent=8)) is None
    assert resume_mismatch(old, TrainConfig(latent=8, prior="mog:2")).startswith(
        "prior normal in the checkpoint, mog:2 now")
    assert resume_mismatch(old, TrainConfig(latent=8, latent_blocks=[4, 2, 2])).startswith(
        "latent_blocks none in the checkpoint, 4,2,2 now")


def test_one_block_holding_every_k_is_the_flat_model():
    x, eps = torch.randn(6, 2772), torch.randn(6, 8)
    outputs = []
    for blocks in (None, [torch.arange(2772)]):
        torch.manual_seed(6)
        vae = VAE(hidden=(16,), latent=8, blocks=blocks, sizes=[8])
        outputs.append(vae(x, eps))
    for flat, one in zip(*outputs):
        assert torch.equal(flat, one)
