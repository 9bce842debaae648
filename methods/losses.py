"""Pure loss functions: tensors and a step number in, tensors out, no hidden state.

Conventions follow the papers and the reference implementation, because the
published β, γ and C values are calibrated against them:
reconstruction is summed over pixels and averaged over the batch, and the KL
is summed over latents and averaged over the batch.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def reconstruction_loss(x: torch.Tensor, x_logits: torch.Tensor, distribution: str) -> torch.Tensor:
    """Negative log-likelihood of x under the decoder, per image (scalar).

    x, x_logits: (B, C, H, W); x in [0, 1], x_logits are the decoder's raw outputs.
    'bernoulli' (dSprites): BCE with logits. 'gaussian' (CelebA, 3DChairs):
    squared error of sigmoid(logits), i.e. a fixed-variance Gaussian up to constants.
    """
    batch_size = x.shape[0]
    if distribution == "bernoulli":
        total = F.binary_cross_entropy_with_logits(x_logits, x, reduction="sum")
    elif distribution == "gaussian":
        total = F.mse_loss(torch.sigmoid(x_logits), x, reduction="sum")
    else:
        raise ValueError(f"unknown decoder distribution {distribution!r}: use 'bernoulli' or 'gaussian'")
    return total / batch_size


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor):
    """KL(N(μ, σ²) ‖ N(0, I)) for a diagonal Gaussian posterior.

    mu, logvar: (B, z_dim). Returns
      total (scalar): summed over latents, averaged over the batch (the objective's term);
      per_dim (z_dim,): averaged over the batch, one value per latent;
      mean (scalar): averaged over latents and batch.
    """
    klds = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())  # (B, z_dim)
    return klds.sum(1).mean(), klds.mean(0), klds.mean()


def capacity(step: int, C_max: float, C_stop_iter: float) -> float:
    """Burgess et al.'s target KL: grows linearly from 0 to C_max at C_stop_iter, then stays."""
    return min(C_max * step / C_stop_iter, C_max)


@dataclass(frozen=True)
class Objective:
    """The training objective: 'H' = recon + β·KL, 'B' = recon + γ·|KL − C(step)|."""

    name: str
    beta: float = 4.0
    gamma: float = 1000.0
    C_max: float = 25.0
    C_stop_iter: float = 1e5

    def target_capacity(self, step: int) -> float | None:
        return capacity(step, self.C_max, self.C_stop_iter) if self.name == "B" else None

    def penalty(self, total_kld: torch.Tensor, step: int) -> torch.Tensor:
        """The objective's KL term: β·KL for H, γ·|KL − C(step)| for B."""
        if self.name == "H":
            return self.beta * total_kld
        if self.name == "B":
            return self.gamma * (total_kld - self.target_capacity(step)).abs()
        raise ValueError(f"unknown objective {self.name!r}: choose from {sorted(OBJECTIVES)}")

    def __call__(self, recon: torch.Tensor, total_kld: torch.Tensor, step: int) -> torch.Tensor:
        return recon + self.penalty(total_kld, step)


# The registry behind `--objective`, with a one-line description for --help.
OBJECTIVES = {
    "H": "Higgins et al. 2017: recon + beta * KL",
    "B": "Burgess et al. 2018: recon + gamma * |KL - C|, C annealed from 0 to C_max",
}


# --------------------------------------------------------------------------- the methods beside β-VAE
#
# Each follows disentanglement_lib (methods/unsupervised/vae.py, Locatello et al. 2019) term for term,
# so that the hyperparameters of its study carry over. Shapes: B images, Z latents.


def gaussian_log_density(samples: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(samples; mean, exp(logvar)), elementwise (broadcasting)."""
    return -0.5 * ((samples - mean).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi))


def total_correlation(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """β-TCVAE's estimate of TC(q(z)) = KL(q(z) ‖ Π_l q(z_l)) on one batch (scalar).

    z, mu, logvar: (B, Z), z sampled from q(z|x_j) = N(mu_j, exp(logvar_j)). This is minibatch weighted
    sampling (Chen et al. 2018): q(z_j) is estimated by the batch's average of q(z_j|x_i) over all
    i, the sample's own posterior included. As in disentanglement_lib, the normalising constants
    -log(B·N) (N: the dataset's size) are left out of both log q(z) and each log q(z_l); what is left
    differs from the MWS estimate by the constant (Z - 1)·log(B·N), which has no gradient. So the
    value can be negative; add that constant to read it as an estimate in nats.
    """
    log_qz_given_x = gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))  # (B_j, B_i, Z)
    log_qz_product = torch.logsumexp(log_qz_given_x, dim=1).sum(dim=1)  # (B,): Σ_l log Σ_i q(z_jl | x_i)
    log_qz = torch.logsumexp(log_qz_given_x.sum(dim=2), dim=1)  # (B,): log Σ_i q(z_j | x_i)
    return (log_qz - log_qz_product).mean()


def covariance(x: torch.Tensor) -> torch.Tensor:
    """(B, Z) -> (Z, Z): E[x xᵀ] - E[x] E[x]ᵀ over the batch (divided by B, not B - 1, as in DIP-VAE)."""
    mean = x.mean(dim=0)
    return (x.unsqueeze(2) * x.unsqueeze(1)).mean(dim=0) - mean.unsqueeze(1) * mean.unsqueeze(0)


def dip_covariance(mu: torch.Tensor, logvar: torch.Tensor, kind: str) -> torch.Tensor:
    """The matrix DIP-VAE pushes towards the identity (Kumar et al. 2018), (Z, Z).

    'i': Cov[μ(x)], the covariance of the encoder means over the batch (eq. 6).
    'ii': Cov[z] = E[Σ(x)] + Cov[μ(x)], the covariance of the aggregate posterior (eq. 7), with Σ(x)
    the diagonal posterior covariance diag(exp(logvar)).
    """
    cov_mu = covariance(mu)
    if kind == "i":
        return cov_mu
    if kind == "ii":
        return torch.diag(logvar.exp().mean(dim=0)) + cov_mu
    raise ValueError(f"unknown DIP-VAE kind {kind!r}: use 'i' or 'ii'")


def dip_terms(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_{k≠l} cov_kl², Σ_k (cov_kk - 1)²): the off-diagonal and diagonal deviations from the identity."""
    diagonal = torch.diagonal(cov)
    off_diagonal = cov - torch.diag(diagonal)
    return off_diagonal.pow(2).sum(), (diagonal - 1).pow(2).sum()


def dip_penalty(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """λ_od·Σ_{k≠l} cov_kl² + λ_d·Σ_k (cov_kk - 1)² (scalar)."""
    off_diagonal, diagonal = dip_terms(cov)
    return lambda_od * off_diagonal + lambda_d * diagonal


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle each latent independently across the batch: (B, Z) -> (B, Z), a sample of Π_l q(z_l).

    One random permutation per column (the argsort of uniform noise), drawn from `generator` or the
    global RNG on z's device, so a checkpoint's RNG state replays it.
    """
    order = torch.rand(z.shape, generator=generator, device=z.device).argsort(dim=0)  # (B, Z)
    return z.gather(0, order)


def factor_vae_tc(logits: torch.Tensor) -> torch.Tensor:
    """FactorVAE's TC estimate from the discriminator's logits (B, 2) on z ~ q(z) (scalar).

    Class 0 is "drawn from q(z)", class 1 "permuted". With D = softmax(logits)[:, 0],
    log(D / (1 - D)) = logit_0 - logit_1, so the density-ratio estimate of TC is its batch mean.
    """
    return (logits[:, 0] - logits[:, 1]).mean()


DISCRIMINATOR_CLIP = 1e-6  # disentanglement_lib clips the discriminator's probabilities to [1e-6, 1 - 1e-6]


def factor_vae_discriminator_loss(logits_z: torch.Tensor, logits_permuted: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss (to minimise): -(½·E log D(z) + ½·E log(1 - D(z̃))) (scalar).

    logits_z: (B, 2) on the batch's z; logits_permuted: (B, 2) on the same z permuted per latent.
    Probabilities are clipped as disentanglement_lib does (which also stops their gradient there).
    """
    probs_z = torch.softmax(logits_z, dim=1).clamp(DISCRIMINATOR_CLIP, 1 - DISCRIMINATOR_CLIP)
    probs_permuted = torch.softmax(logits_permuted, dim=1).clamp(DISCRIMINATOR_CLIP, 1 - DISCRIMINATOR_CLIP)
    return -(0.5 * probs_z[:, 0].log().mean() + 0.5 * probs_permuted[:, 1].log().mean())


def discriminator_accuracy(logits_z: torch.Tensor, logits_permuted: torch.Tensor) -> torch.Tensor:
    """The share of z called "from q(z)" and of permuted z called "permuted", averaged (scalar)."""
    return 0.5 * ((logits_z.argmax(1) == 0).float().mean() + (logits_permuted.argmax(1) == 1).float().mean())


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-(E log D(x) + E log(1 - D(G(c)))) with D = sigmoid(logits) (scalar), the GAN discriminator's loss.

    Written with softplus, which is exactly -log sigmoid and -log(1 - sigmoid) without their rounding.
    """
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E log D(G(c)) (scalar): the non-saturating generator loss of Goodfellow et al. 2014 and InfoGAN."""
    return F.softplus(-fake_logits).mean()


def info_gan_code_loss(code_estimate: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """-E log Q(c | G(c)) for continuous codes (scalar): InfoGAN's cross-entropy term.

    Q(c | x) is a factored Gaussian with mean `code_estimate` (B, Z) and unit standard deviation (the
    fixed-std choice of the InfoGAN code); summed over codes, averaged over the batch. The mutual
    information lower bound is H(c) minus this, H(c) = Z·log 2 for codes uniform on [-1, 1].
    """
    return -gaussian_log_density(codes, code_estimate, torch.zeros_like(code_estimate)).sum(dim=1).mean()


def uniform_code_entropy(z_dim: int) -> float:
    """H(c) in nats of z_dim codes uniform on [-1, 1]: the constant of InfoGAN's MI lower bound."""
    return z_dim * math.log(2.0)
