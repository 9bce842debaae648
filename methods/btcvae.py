"""β-TCVAE: Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", as disentanglement_lib trains it.

    recon + KL + (β − 1)·TC

The KL splits into index-code mutual information, total correlation (TC) and dimension-wise KL; with
the paper's α = γ = 1 only the TC term is reweighted, to β. TC is estimated on each batch by minibatch
weighted sampling (losses.total_correlation, disentanglement_lib's `total_correlation`): q(z) and each
q(z_l) at the batch's samples are averages of the batch's posteriors, the constant log(B·N) terms left
out (they carry no gradient), so the recorded `tc` is the estimate up to the constant (Z − 1)·log(B·N)
and can be negative. β = 1 is a plain VAE.
"""

from methods.base import Compute, VAEMethod
from methods.losses import total_correlation
from model import build_model


class BetaTCVAE(VAEMethod):
    needs_z = True
    extra_stats = ("tc",)
    watched = VAEMethod.watched | {"tc": "total-correlation"}

    def __init__(self, args, nc: int, distribution: str, compute: Compute):
        super().__init__(args.objective, build_model(args.model, args.z_dim, nc), distribution, compute,
                         args.lr, (args.beta1, args.beta2))
        self.beta = args.beta

    def regularizer(self, total_kld, mu, logvar, z, step):
        tc = total_correlation(z, mu, logvar)
        return total_kld + (self.beta - 1.0) * tc, {"tc": tc}
