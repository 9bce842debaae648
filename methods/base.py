"""The method interface: what the Solver, the pictures, the evaluation and the checkpoints ask of a method.

A method owns its networks, its optimisers, its losses and one training step. Everything else
in the project talks to it only through `Method`:

    stats = method.train_step(x, step)     # one update on a batch; a dict of detached tensors
    method.stat_sizes()                     # the layout of those stats (1: a scalar, z_dim: one per latent)
    method.encoder.encode(x)                # the representation the scores use: (codes, logvar or None)
    method.reconstruct(x), method.traverse(image, order)   # the pictures
    method.networks, method.optimizers      # what a checkpoint stores (model_states / optim_states keys)

`VAEMethod` implements all of it for the VAE family (β-VAE H and B, β-TCVAE, DIP-VAE, and the VAE
half of FactorVAE): each of those only says what it adds to the loss.
"""

from dataclasses import dataclass

import torch
from torch import nn

from methods.losses import kl_divergence, reconstruction_loss
from utils import autocast

TRAVERSE_LIMIT = 3.0  # a traversal sweeps each latent over [-3, 3] ...
TRAVERSE_STEPS = 10  # ... in 10 evenly spaced values


@dataclass(frozen=True)
class Compute:
    """How the networks run: the device, the forward precision and the speed options of main.py."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None  # None: plain fp32
    channels_last: bool = False  # NHWC convolutions: the same arithmetic in another order
    compile: bool = False  # torch.compile the training forward

    def autocast(self):
        return autocast(self.device, self.autocast_dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory layout the weights were given, so convolutions need no reorders."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def compiled(self, fn):
        """fn, compiled when --compile is on. fallback_random keeps eager's random stream (the same ε for a
        seed, so compiling changes rounding only); on a GPU, CUDA graphs remove per-kernel launch cost."""
        if not self.compile:
            return fn
        return torch.compile(fn, options={"fallback_random": True, "triton.cudagraphs": self.device.type == "cuda"})

    def adam(self, params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
        # fused: one kernel per step instead of a dozen per tensor; the same update up to rounding.
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=self.device.type in ("cpu", "cuda"))


class Method:
    """The interface. Subclasses set the attributes in __init__ and implement train_step."""

    name: str  # the --objective value
    z_dim: int
    networks: dict[str, nn.Module]  # checkpoint model_states keys -> networks
    optimizers: dict[str, torch.optim.Optimizer]  # checkpoint optim_states keys -> optimisers
    # Loss terms whose NaN or inf stops training: stat name -> how the error message names it.
    watched: dict[str, str] = {}
    iterative = True  # False for baselines fitted once (PCA, ICA): see fit()
    # Stats with one value per latent: lists in the records even at z_dim 1, where their size is 1 too.
    per_latent_stats: tuple[str, ...] = ()
    fitted = False  # a non-iterative method that has been fitted (restored from its checkpoint)

    def stat_sizes(self) -> dict[str, int]:
        """The stats train_step returns, in record order: name -> 1 (a scalar) or z_dim (one per latent)."""
        raise NotImplementedError

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One update on a batch x (B, C, 64, 64) in [0, 1]; the stats, detached and not synced."""
        raise NotImplementedError

    def scheduled(self, step: int) -> dict[str, float]:
        """Values fixed by the schedule rather than measured (objective B's target capacity C)."""
        return {}

    def fit(self, data) -> None:
        """Non-iterative methods (iterative = False) learn here, once, from the whole dataset."""
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The representation the scores use: a module with `z_dim` and `encode(x) -> (codes, logvar or None)`."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor | None:
        """Reconstructions (B, C, H, W) in [0, 1] of images x, or None for a method that cannot reconstruct."""
        return None

    def traverse(self, image: torch.Tensor, order: list[int]) -> torch.Tensor:
        """image (C, H, W) -> (len(order), steps, C, H, W) in [0, 1]: one row per latent in `order`, swept
        over its range with the other latents held at the image's code."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared plumbing

    def train(self, mode: bool = True) -> "Method":
        for net in self.networks.values():
            net.train(mode)
        return self

    def eval(self) -> "Method":
        return self.train(False)

    def parameters(self):
        for net in self.networks.values():
            yield from net.parameters()

    def extra_state(self) -> dict:
        """State beyond networks and optimisers that exact resume needs (saved under `method_state`)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


class VAEMethod(Method):
    """A VAE trained by one Adam on recon + KL-based objective. Subclasses define `regularizer`.

    Stats, in record order: recon_loss, total_kld, mean_kld, loss (scalars), then kld, mu and var per
    latent (batch means of the per-latent KL, posterior mean and posterior variance), then whatever
    `regularizer` adds (scalars).
    """

    watched = {"recon_loss": "reconstruction", "total_kld": "KL"}
    needs_z = False  # True: the regularizer needs the sampled z (β-TCVAE, FactorVAE)
    extra_stats: tuple[str, ...] = ()  # names of the regularizer's extra scalar stats
    per_latent_stats = ("kld", "mu", "var")

    def __init__(self, name: str, vae: nn.Module, distribution: str, compute: Compute,
                 lr: float, betas: tuple[float, float]):
        self.name, self.vae, self.distribution, self.compute = name, compute.place(vae), distribution, compute
        self.z_dim = vae.z_dim
        self.networks = {"net": self.vae}
        self.optimizers = {"optim": compute.adam(self.vae.parameters(), lr, betas)}
        # Only the training forward is compiled; self.vae stays the plain module that pictures,
        # evaluation and checkpoints use.
        self.forward = compute.compiled(self.vae)

    def regularizer(self, total_kld, mu, logvar, z, step: int) -> tuple[torch.Tensor, dict]:
        """(the loss terms beyond reconstruction, extra scalar stats). mu, logvar, z: (B, z_dim) fp32."""
        raise NotImplementedError

    def stat_sizes(self) -> dict[str, int]:
        z = self.z_dim
        sizes = {"recon_loss": 1, "total_kld": 1, "mean_kld": 1, "loss": 1} | dict.fromkeys(self.per_latent_stats, z)
        return sizes | dict.fromkeys(self.extra_stats, 1)

    def vae_loss(self, x: torch.Tensor, step: int):
        """The forward pass and the loss: (loss, stats, z). Shared by single- and two-optimiser methods."""
        x = self.compute.layout(x)
        with self.compute.autocast():
            if self.needs_z:
                x_logits, mu, logvar, z = self.forward(x, return_z=True)
            else:
                (x_logits, mu, logvar), z = self.forward(x), None
        # Losses in fp32 whatever the forward precision: the sums over 4096 pixels need it.
        x_logits, mu, logvar = x_logits.float(), mu.float(), logvar.float()
        z = z.float() if z is not None else None
        recon = reconstruction_loss(x, x_logits, self.distribution)
        total_kld, dim_kld, mean_kld = kl_divergence(mu, logvar)
        penalty, extra = self.regularizer(total_kld, mu, logvar, z, step)
        loss = recon + penalty
        stats = {"recon_loss": recon, "total_kld": total_kld, "mean_kld": mean_kld, "loss": loss,
                 "kld": dim_kld, "mu": mu.mean(0), "var": logvar.exp().mean(0), **extra}
        return loss, stats, z

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        loss, stats, _ = self.vae_loss(x, step)
        optimizer = self.optimizers["optim"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {k: v.detach() for k, v in stats.items()}

    @property
    def encoder(self) -> nn.Module:
        return self.vae

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.vae.encode(x)
        return torch.sigmoid(self.vae.decode(mu)).reshape(x.shape)

    def traverse(self, image: torch.Tensor, order: list[int]) -> torch.Tensor:
        return traverse_vae(self.vae, image, order)


@torch.no_grad()
def traverse_vae(vae: nn.Module, image: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Decode each latent in `order` swept over [-limit, limit], the others at the image's posterior mean.

    image (C, H, W) -> (rows, steps, C, H, W), one row per latent in `order` (the Solver passes
    them sorted by KL, informative first). Images only: drawing them is the monitoring side's job.
    """
    mu, _ = vae.encode(image.unsqueeze(0))  # (1, z)
    z_dim = mu.shape[1]
    values = torch.linspace(-TRAVERSE_LIMIT, TRAVERSE_LIMIT, TRAVERSE_STEPS, device=mu.device)
    z = mu.repeat(len(order), TRAVERSE_STEPS, 1)  # (rows, steps, z)
    for row, latent in enumerate(order):
        z[row, :, latent] = values
    decoded = torch.sigmoid(vae.decode(z.reshape(-1, z_dim)))  # (rows·steps, C, H, W)
    return decoded.reshape(len(order), TRAVERSE_STEPS, *image.shape).float().cpu()
