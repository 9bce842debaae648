"""FactorVAE: Kim & Mnih 2018, "Disentangling by Factorising", as disentanglement_lib trains it.

    VAE:           recon + KL + γ·TC,    TC = E[logit_0(z) − logit_1(z)]
    discriminator: −(½·E log D(z) + ½·E log(1 − D(z̃)))

A discriminator (six dense layers of 1,000 units, LeakyReLU 0.2, two logits) tells samples z of q(z)
(class 0) from z̃, the same batch with every latent shuffled independently across the batch (class 1),
a sample of Π_l q(z_l). Its logit difference estimates log q(z) / Π_l q(z_l), whose mean is the total
correlation that the VAE is penalised for (disentanglement_lib methods/unsupervised/vae.py, FactorVAE;
shared/architectures.py, fc_discriminator).

Which update uses what, exactly as there: one forward pass gives z, D(z) and D(z̃); from it the VAE's
Adam minimises recon + KL + γ·TC over the encoder and decoder (TC's gradient reaches the encoder
through z, the discriminator's weights are the ones before this step's update), and the
discriminator's Adam minimises its loss over the discriminator alone (z is not updated by it). Both
step together. Two departures of the paper from this, not taken: it permutes a second batch, and it
updates the two networks one after the other.

disentanglement_lib passes its global step to both optimisers, so as written its step counter grows by
two per update: its 300,000 training steps are 150,000 updates of each network. Here an iteration is
one update of each; pass --max_iter 1.5e5 to match their number of updates.
"""

import torch
from torch import nn

from methods.base import Compute, VAEMethod
from methods.losses import discriminator_accuracy, factor_vae_discriminator_loss, factor_vae_tc, permute_dims
from model import build_model


class Discriminator(nn.Module):
    """disentanglement_lib's fc_discriminator: z (B, Z) -> logits (B, 2); class 0 is "from q(z)"."""

    def __init__(self, z_dim: int, hidden: int = 1000, layers: int = 6):
        super().__init__()
        widths = [z_dim] + [hidden] * layers
        body = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            body += [nn.Linear(width_in, width_out), nn.LeakyReLU(0.2)]  # (B, 1000)
        self.net = nn.Sequential(*body, nn.Linear(hidden, 2))  # (B, 2)
        for m in self.modules():  # TensorFlow's dense-layer defaults, as disentanglement_lib trains with
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class FactorVAE(VAEMethod):
    """Networks: "net" (the VAE), "discriminator"; optimisers: "optim" (VAE), "optim_discriminator"."""

    needs_z = True
    extra_stats = ("tc", "d_loss", "d_accuracy")
    watched = VAEMethod.watched | {"tc": "total-correlation", "d_loss": "discriminator"}

    def __init__(self, args, nc: int, distribution: str, compute: Compute):
        super().__init__(args.objective, build_model(args.model, args.z_dim, nc), distribution, compute,
                         args.lr, (args.beta1, args.beta2))
        self.gamma = args.gamma
        self.discriminator = compute.place(Discriminator(args.z_dim))
        self.networks["discriminator"] = self.discriminator
        self.optimizers["optim_discriminator"] = compute.adam(self.discriminator.parameters(), args.lr_D,
                                                              (args.beta1_D, args.beta2_D))

    def regularizer(self, total_kld, mu, logvar, z, step):
        # The discriminator runs in fp32: its loss and the TC estimate are differences of logits.
        logits_z = self.discriminator(z)  # (B, 2), with gradient to the encoder through z
        logits_permuted = self.discriminator(permute_dims(z.detach()))  # (B, 2)
        tc = factor_vae_tc(logits_z)
        d_loss = factor_vae_discriminator_loss(logits_z, logits_permuted)
        extra = {"tc": tc, "d_loss": d_loss, "d_accuracy": discriminator_accuracy(logits_z, logits_permuted)}
        return total_kld + self.gamma * tc, extra

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        loss, stats, _ = self.vae_loss(x, step)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        # Each loss updates only its own network: gradients go to the `inputs` named, nowhere else.
        loss.backward(inputs=list(self.vae.parameters()), retain_graph=True)
        stats["d_loss"].backward(inputs=list(self.discriminator.parameters()))
        self.optimizers["optim"].step()
        self.optimizers["optim_discriminator"].step()
        return {k: v.detach() for k, v in stats.items()}
