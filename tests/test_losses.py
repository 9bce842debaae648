"""The losses against closed-form values."""

import math

import pytest
import torch

from methods.losses import Objective, capacity, kl_divergence, reconstruction_loss


def test_kl_is_zero_for_the_prior():
    total, per_dim, mean = kl_divergence(torch.zeros(4, 10), torch.zeros(4, 10))
    assert total.item() == 0 and mean.item() == 0
    assert torch.equal(per_dim, torch.zeros(10))


def test_kl_of_unit_mean_is_half_a_nat_per_latent():
    total, per_dim, mean = kl_divergence(torch.ones(3, 10), torch.zeros(3, 10))
    assert total.item() == pytest.approx(5.0)  # summed over 10 latents, averaged over the batch
    assert mean.item() == pytest.approx(0.5)
    assert torch.allclose(per_dim, torch.full((10,), 0.5))


def test_kl_of_a_wider_posterior():
    logvar = torch.full((2, 3), math.log(2.0))
    total, _, _ = kl_divergence(torch.zeros(2, 3), logvar)
    assert total.item() == pytest.approx(3 * 0.5 * (2 - 1 - math.log(2)))


def test_kl_averages_over_the_batch_not_sums():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    total, per_dim, _ = kl_divergence(mu, torch.zeros(2, 2))
    assert total.item() == pytest.approx(0.25)
    assert per_dim.tolist() == pytest.approx([0.25, 0.0])


def test_bernoulli_recon_sums_pixels_and_averages_batch():
    x = torch.ones(2, 1, 64, 64)
    loss = reconstruction_loss(x, torch.zeros_like(x), "bernoulli")
    assert loss.item() == pytest.approx(64 * 64 * math.log(2), rel=1e-6)


def test_gaussian_recon_is_squared_error_of_the_sigmoid():
    x = torch.ones(4, 3, 64, 64)
    loss = reconstruction_loss(x, torch.zeros_like(x), "gaussian")
    assert loss.item() == pytest.approx(3 * 64 * 64 * 0.25)


def test_unknown_distribution_is_an_error():
    with pytest.raises(ValueError, match="bernoulli"):
        reconstruction_loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "poisson")


def test_capacity_schedule():
    assert capacity(0, 25, 1e5) == 0
    assert capacity(50_000, 25, 1e5) == pytest.approx(12.5)
    assert capacity(100_000, 25, 1e5) == pytest.approx(25)
    assert capacity(300_000, 25, 1e5) == 25


def test_objective_h_is_recon_plus_beta_kl():
    h = Objective("H", beta=4.0)
    assert h(torch.tensor(10.0), torch.tensor(2.0), step=123).item() == pytest.approx(18.0)
    assert h.target_capacity(5) is None


def test_objective_b_penalises_distance_from_capacity():
    b = Objective("B", gamma=1000.0, C_max=25.0, C_stop_iter=100.0)
    # C(50) = 12.5; |KL - C| = |10 - 12.5| = 2.5
    assert b(torch.tensor(7.0), torch.tensor(10.0), step=50).item() == pytest.approx(7.0 + 2500.0)
    assert b(torch.tensor(7.0), torch.tensor(30.0), step=1000).item() == pytest.approx(7.0 + 5000.0)
