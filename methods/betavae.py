"""β-VAE: Higgins et al. 2017 (objective H) and Burgess et al. 2018 (objective B).

    H: recon + β·KL
    B: recon + γ·|KL − C|, with C annealed linearly from 0 to C_max over C_stop_iter iterations

The objectives themselves are the pure functions of losses.py; this file only plugs them into the
shared VAE step (methods/base.py). A plain VAE is H with β = 1.
"""

from methods.base import Compute, VAEMethod
from methods.losses import Objective
from model import build_model


class BetaVAE(VAEMethod):
    def __init__(self, args, nc: int, distribution: str, compute: Compute):
        super().__init__(args.objective, build_model(args.model, args.z_dim, nc), distribution, compute,
                         args.lr, (args.beta1, args.beta2))
        self.objective = Objective(args.objective, args.beta, args.gamma, args.C_max, args.C_stop_iter)

    def regularizer(self, total_kld, mu, logvar, z, step):
        return self.objective.penalty(total_kld, step), {}

    def scheduled(self, step: int) -> dict[str, float]:
        capacity = self.objective.target_capacity(step)
        return {} if capacity is None else {"C": capacity}
