"""DIP-VAE-I and DIP-VAE-II: Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts from
Unlabeled Observations", as disentanglement_lib trains them.

    recon + KL + λ_od·Σ_{k≠l} C_kl² + λ_d·Σ_k (C_kk − 1)²

    DIP-VAE-I:  C = Cov[μ(x)], the covariance of the encoder means over the batch (eq. 6)
    DIP-VAE-II: C = Cov[z] = E[Σ(x)] + Cov[μ(x)], the aggregate posterior's covariance (eq. 7)

Covariances are batch estimates divided by B (losses.dip_covariance). disentanglement_lib's study sets
λ_d = 10·λ_od for DIP-VAE-I and λ_d = λ_od for DIP-VAE-II; --lambda_d defaults to exactly that.
"""

from methods.base import Compute, VAEMethod
from methods.losses import dip_covariance, dip_terms
from model import build_model


class DIPVAE(VAEMethod):
    kind = ""  # 'i' or 'ii', set by the subclasses below
    extra_stats = ("dip_off_diagonal", "dip_diagonal")  # Σ_{k≠l} C_kl² and Σ_k (C_kk − 1)², unweighted

    def __init__(self, args, nc: int, distribution: str, compute: Compute):
        super().__init__(args.objective, build_model(args.model, args.z_dim, nc), distribution, compute,
                         args.lr, (args.beta1, args.beta2))
        self.lambda_od, self.lambda_d = args.lambda_od, args.lambda_d

    def regularizer(self, total_kld, mu, logvar, z, step):
        off_diagonal, diagonal = dip_terms(dip_covariance(mu, logvar, self.kind))  # from a (Z, Z) matrix
        penalty = total_kld + self.lambda_od * off_diagonal + self.lambda_d * diagonal
        return penalty, {"dip_off_diagonal": off_diagonal, "dip_diagonal": diagonal}


class DIPVAE_I(DIPVAE):
    kind = "i"


class DIPVAE_II(DIPVAE):
    kind = "ii"
