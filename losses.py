"""Pure loss functions: tensors and a step number in, tensors out, no hidden state.

Conventions follow the papers and the reference implementation, because the
published β, γ and C values are calibrated against them:
reconstruction is summed over pixels and averaged over the batch, and the KL
is summed over latents and averaged over the batch.
"""

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

    def __call__(self, recon: torch.Tensor, total_kld: torch.Tensor, step: int) -> torch.Tensor:
        if self.name == "H":
            return recon + self.beta * total_kld
        if self.name == "B":
            return recon + self.gamma * (total_kld - self.target_capacity(step)).abs()
        raise ValueError(f"unknown objective {self.name!r}: choose from {sorted(OBJECTIVES)}")


# The registry behind `--objective`, with a one-line description for --help.
OBJECTIVES = {
    "H": "Higgins et al. 2017: recon + beta * KL",
    "B": "Burgess et al. 2018: recon + gamma * |KL - C|, C annealed from 0 to C_max",
}
