"""The losses of FactorVAE, β-TCVAE, DIP-VAE and InfoGAN against values worked out by hand on tiny batches."""

import math

import pytest
import torch

from methods.losses import (
    covariance,
    dip_covariance,
    dip_penalty,
    dip_terms,
    discriminator_accuracy,
    factor_vae_discriminator_loss,
    factor_vae_tc,
    gan_discriminator_loss,
    gan_generator_loss,
    info_gan_code_loss,
    permute_dims,
    total_correlation,
    uniform_code_entropy,
)

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- β-TCVAE


def test_total_correlation_of_two_samples_at_their_means():
    """z = μ = [[0, 0], [1, 1]], unit variances. For either sample, each latent's density is
    N(0) + N(1) ∝ 1 + e^{-1/2} and the joint's is 1 + e^{-1}, so TC = log(1 + e^{-1}) − 2·log(1 + e^{-1/2})."""
    mu = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    tc = total_correlation(mu.clone(), mu, torch.zeros(2, 2))
    assert tc.item() == pytest.approx(math.log(1 + math.exp(-1)) - 2 * math.log(1 + math.exp(-0.5)), abs=1e-6)


def test_total_correlation_equals_the_sum_written_out_term_by_term():
    torch.manual_seed(0)
    z, mu, logvar = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3) * 0.5

    def log_q(j: int, i: int, latent: int) -> float:  # log N(z_j,l; μ_i,l, exp(logvar_i,l))
        var = math.exp(logvar[i, latent])
        return -0.5 * ((z[j, latent] - mu[i, latent]).item() ** 2 / var + math.log(var) + LOG_2PI)

    total = 0.0
    for j in range(5):
        joint = math.log(sum(math.exp(sum(log_q(j, i, lat) for lat in range(3))) for i in range(5)))
        product = sum(math.log(sum(math.exp(log_q(j, i, lat)) for i in range(5))) for lat in range(3))
        total += (joint - product) / 5
    assert total_correlation(z, mu, logvar).item() == pytest.approx(total, abs=1e-5)


def test_total_correlation_is_higher_for_correlated_latents():
    """Posteriors spread along the diagonal (z_0 = z_1) against the same spread with z_1 shuffled."""
    torch.manual_seed(1)
    t = torch.randn(64, 1) * 3
    correlated = torch.cat([t, t], dim=1)
    independent = torch.cat([t, t[torch.randperm(64)]], dim=1)
    logvar = torch.full((64, 2), -4.0)
    assert total_correlation(correlated, correlated, logvar) > total_correlation(independent, independent, logvar)


# --------------------------------------------------------------------------- DIP-VAE


MU = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # mean (2, 1); centred rows ±(−1, 1): Cov = [[1, −1], [−1, 1]]


def test_covariance_divides_by_the_batch_size():
    assert torch.allclose(covariance(MU), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


def test_dip_vae_i_penalises_the_covariance_of_the_means():
    cov = dip_covariance(MU, torch.zeros(2, 2), "i")
    off_diagonal, diagonal = dip_terms(cov)
    assert off_diagonal.item() == pytest.approx(2.0) and diagonal.item() == pytest.approx(0.0)
    assert dip_penalty(cov, 10.0, 100.0).item() == pytest.approx(20.0)  # λ_od·2 + λ_d·0


def test_dip_vae_ii_adds_the_mean_posterior_variance():
    logvar = torch.log(torch.tensor([[1.0, 3.0], [1.0, 1.0]]))  # E[Σ] = diag(1, 2)
    cov = dip_covariance(MU, logvar, "ii")
    assert torch.allclose(cov, torch.tensor([[2.0, -1.0], [-1.0, 3.0]]))
    off_diagonal, diagonal = dip_terms(cov)
    assert off_diagonal.item() == pytest.approx(2.0) and diagonal.item() == pytest.approx(1.0 + 4.0)
    assert dip_penalty(cov, 10.0, 10.0).item() == pytest.approx(70.0)


def test_dip_covariance_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="'iii'"):
        dip_covariance(MU, torch.zeros(2, 2), "iii")


# --------------------------------------------------------------------------- FactorVAE


def test_permute_dims_shuffles_each_latent_on_its_own_and_replays_from_the_rng():
    z = torch.arange(200.0).reshape(50, 4)  # every value distinct
    torch.manual_seed(3)
    permuted = permute_dims(z)
    for column in range(4):  # each column holds the same values, in another order
        assert torch.equal(permuted[:, column].sort().values, z[:, column])
    orders = [(permuted[:, c] - c).div(4).long() for c in range(4)]  # the row each entry came from
    assert not all(torch.equal(orders[0], order) for order in orders[1:])  # not one shared permutation
    torch.manual_seed(3)
    assert torch.equal(permute_dims(z), permuted)


# logits: D(z) = softmax[:, 0] is 1/2 and 3/4 on z; 1 − D = softmax[:, 1] is 3/4 and 1/2 on the permuted z.
LOGITS_Z = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
LOGITS_PERMUTED = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])


def test_factor_vae_tc_is_the_mean_logit_difference():
    assert factor_vae_tc(LOGITS_Z).item() == pytest.approx(0.5 * math.log(3))


def test_factor_vae_discriminator_loss():
    """−(½·mean(log ½, log ¾) + ½·mean(log ¾, log ½)) = ½·log(8/3)."""
    loss = factor_vae_discriminator_loss(LOGITS_Z, LOGITS_PERMUTED)
    assert loss.item() == pytest.approx(0.5 * math.log(8 / 3), abs=1e-6)


def test_factor_vae_discriminator_probabilities_are_clipped_at_1e_6():
    """A permuted z called 'from q(z)' with probability 1 − e^{-100} costs −log(1e-6), not 100 nats."""
    confident = torch.tensor([[0.0, 100.0]])  # z: D = e^{-100}, clipped to 1e-6
    right = torch.tensor([[-100.0, 0.0]])  # permuted: 1 − D ≈ 1, clipped to 1 − 1e-6
    loss = factor_vae_discriminator_loss(confident, right)
    assert loss.item() == pytest.approx(-0.5 * math.log(1e-6) - 0.5 * math.log(1 - 1e-6), rel=1e-5)


def test_discriminator_accuracy_counts_both_halves():
    logits_z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # one right (class 0), one wrong
    logits_permuted = torch.tensor([[0.0, 1.0], [0.0, 3.0]])  # both right (class 1)
    assert discriminator_accuracy(logits_z, logits_permuted).item() == pytest.approx(0.75)


# --------------------------------------------------------------------------- InfoGAN


def test_gan_losses_at_known_probabilities():
    half = torch.zeros(4)  # D = ½ everywhere: each term is log 2
    assert gan_discriminator_loss(half, half).item() == pytest.approx(2 * math.log(2))
    assert gan_generator_loss(half).item() == pytest.approx(math.log(2))
    real, fake = torch.full((3,), math.log(3)), torch.full((3,), -math.log(3))  # D(x) = ¾, D(G) = ¼
    assert gan_discriminator_loss(real, fake).item() == pytest.approx(-2 * math.log(0.75))
    assert gan_generator_loss(fake).item() == pytest.approx(-math.log(0.25))


def test_info_gan_code_loss_is_a_unit_gaussian_cross_entropy():
    codes = torch.tensor([[0.5, -0.5, 1.0], [0.0, 0.2, -1.0]])  # B = 2, Z = 3
    exact = info_gan_code_loss(codes.clone(), codes)
    assert exact.item() == pytest.approx(3 * 0.5 * LOG_2PI)  # summed over codes, averaged over the batch
    off_by_one = info_gan_code_loss(codes + 1, codes)
    assert off_by_one.item() == pytest.approx(3 * 0.5 * LOG_2PI + 3 * 0.5)
    assert uniform_code_entropy(3) == pytest.approx(3 * math.log(2))  # U[-1, 1] has density ½: log 2 nats each
