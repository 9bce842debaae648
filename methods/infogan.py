"""InfoGAN: Chen et al. 2016, "Interpretable Representation Learning by Information Maximizing GANs".

A generator G(c, n) turns codes c, uniform on [-1, 1]^Z (Z = --z_dim, 10 like the VAEs), and optional
noise n (--noise_dim, 0 by default; uniform on [-1, 1] as in openai/InfoGAN) into images. A
discriminator D tells data from G's images; a recognition head Q on D's body estimates c from an image,
and the mutual information I(c; G(c, n)) is kept high through its lower bound H(c) − E[−log Q(c|G)]:

    discriminator: −E log D(x) − E log(1 − D(G(c, n))) + λ·E[−log Q(c | G(c, n))]
    generator + Q: −E log D(G(c, n)) + λ·E[−log Q(c | G(c, n))]     (λ: --lambda_mi)

Q(c|x) is a factored Gaussian with unit standard deviation around Q's estimate (openai/InfoGAN's
fixed-std continuous codes). Each iteration updates the discriminator first, then the generator and Q
on fresh codes against the updated discriminator, as openai/InfoGAN's trainer does.

Optimisers (openai/InfoGAN's run scripts and trainer, info_reg_coeff 1.0): "optim" is Adam with
lr 1e-3, betas (0.5, 0.999) over G and Q's own layers (--lr 1e-3 --beta1 0.5 --beta2 0.999, as
scripts/run_dsprites_infogan.sh passes them; the table holds them as InfoGAN's own defaults for when those
flags default per method); "optim_discriminator"
is Adam with lr 2e-4, betas (0.5, 0.999) over D's body and head (--lr_D, --beta1_D, --beta2_D). The
shared body learns from both D's loss and the information term, as in openai/InfoGAN, where Q's
layers live with D's; here Q's own layers step with the generator. Checkpoint keys: model_states
"net" (G, with its fixed noise) and "discriminator" (body, D head, Q head); optim_states "optim",
"optim_discriminator".

Architecture (leaky ReLU slope 0.1 as in InfoGAN's appendix; batch norm after every hidden layer but
D's first, as DCGAN does; PyTorch's default initialisation):

    body (B, nc, 64, 64) -> 4×4 stride-2 convs of 64, 128, 256, 256, 256 -> (B, 256, 2, 2)
    D head: 2×2 conv to 1 logit, D = sigmoid(logit) -> (B,)
    Q head: 2×2 conv to 128 -> (B, 128, 1, 1), then 1×1 conv to the Z code estimates -> (B, Z)
    G: (c, n) as (B, Z + noise, 1, 1) -> 1×1 up-convs of 256, 256 -> 4×4 up-convs of 128 (to 4×4),
       64 (8×8), 64 (16×16), 32 (32×32) and nc (64×64), tanh

Images are in [-1, 1] inside the networks (tanh's range); data, pictures and reconstructions are
in [0, 1] outside.

What the scores of an InfoGAN measure (the scoring protocol sees only `encoder.encode(x)`):

- The representation is Q's estimate of the codes of a *real* image. Q is trained on generated images
  only, so its estimate is as good as G's images resemble the data: where G never draws some part of
  the data (mode dropping, e.g. a shape or a range of positions it does not produce), Q extrapolates,
  and the factors there score as uncaptured.
- The prior's range: codes are drawn from [-1, 1]; Q's estimates of real images may fall outside. The
  scores use the estimates as they are; reconstructions and traversals clamp them to [-1, 1], the only
  codes G was trained on, and traversals sweep each code over that whole range.
- Noise: with --noise_dim > 0, whatever the noise carries is not in the code, so no score sees it;
  pictures hold the noise at one fixed draw (stored with the generator), so a reconstruction G(Q(x), n)
  shows only what the codes carry.
- Batch norm: in evaluation, Q's body normalises with running averages gathered in training over
  real and generated batches; its codes then do not depend on the rest of the batch.
- GAN training varies more from seed to seed than VAE training: compare distributions over seeds.
"""

import torch
from torch import nn

from hardware.fast_conv import ConvTranspose2d
from methods.base import TRAVERSE_STEPS, Compute, Method
from methods.losses import gan_discriminator_loss, gan_generator_loss, info_gan_code_loss, uniform_code_entropy

LEAK = 0.1  # InfoGAN's appendix: leaky ReLU with leak 0.1 in the discriminator


def uniform(shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on [-1, 1]: the prior of the codes and of the noise."""
    return torch.rand(shape, device=device, generator=generator) * 2 - 1


class Generator(nn.Module):
    """(codes (B, Z), noise (B, N)) -> images (B, nc, 64, 64) in [-1, 1]."""

    def __init__(self, z_dim: int, noise_dim: int, nc: int):
        super().__init__()
        self.z_dim, self.noise_dim = z_dim, noise_dim
        # One noise draw for pictures and reconstructions, kept in the checkpoint ((0,) without noise).
        self.register_buffer("fixed_noise", uniform((noise_dim,), "cpu"))

        def up(c_in: int, c_out: int, *conv) -> list[nn.Module]:
            return [ConvTranspose2d(c_in, c_out, *conv, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]

        self.net = nn.Sequential(
            *up(z_dim + noise_dim, 256, 1),  # (B, 256, 1, 1)
            *up(256, 256, 1),  # (B, 256, 1, 1)
            *up(256, 128, 4),  # (B, 128, 4, 4)
            *up(128, 64, 4, 2, 1),  # (B, 64, 8, 8)
            *up(64, 64, 4, 2, 1),  # (B, 64, 16, 16)
            *up(64, 32, 4, 2, 1),  # (B, 32, 32, 32)
            ConvTranspose2d(32, nc, 4, 2, 1),  # (B, nc, 64, 64)
            nn.Tanh(),
        )

    def forward(self, codes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([codes, noise], dim=1)[:, :, None, None])


class Discriminator(nn.Module):
    """images (B, nc, 64, 64) in [-1, 1] -> (D's logits (B,), Q's code estimates (B, Z))."""

    def __init__(self, z_dim: int, nc: int):
        super().__init__()

        def down(c_in: int, c_out: int, norm: bool = True) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)
            return [conv, nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAK)] if norm else [conv, nn.LeakyReLU(LEAK)]

        self.body = nn.Sequential(
            *down(nc, 64, norm=False),  # (B, 64, 32, 32)
            *down(64, 128),  # (B, 128, 16, 16)
            *down(128, 256),  # (B, 256, 8, 8)
            *down(256, 256),  # (B, 256, 4, 4)
            *down(256, 256),  # (B, 256, 2, 2)
        )
        self.d_head = nn.Conv2d(256, 1, 2)  # (B, 1, 1, 1): the logit of D
        self.q_head = nn.Sequential(
            nn.Conv2d(256, 128, 2, bias=False),  # (B, 128, 1, 1)
            nn.BatchNorm2d(128),
            nn.LeakyReLU(LEAK),
            nn.Conv2d(128, z_dim, 1),  # (B, Z, 1, 1): the mean of Q(c | x)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, 256, 2, 2)
        return self.d_head(h).flatten(), self.q_head(h).flatten(1)


class CodeEstimator(nn.Module):
    """The representation the scores use: encode(x in [0, 1]) -> (Q's code estimate (B, Z), None)."""

    def __init__(self, discriminator: Discriminator, z_dim: int):
        super().__init__()
        self.discriminator, self.z_dim = discriminator, z_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.discriminator(x * 2 - 1)[1], None


class InfoGAN(Method):
    watched = {"d_loss": "discriminator", "g_loss": "generator", "code_loss": "mutual-information"}

    def __init__(self, args, nc: int, distribution: str, compute: Compute):
        del distribution  # a GAN has no decoder likelihood
        self.name, self.z_dim, self.compute = args.objective, args.z_dim, compute
        self.lambda_mi = args.lambda_mi
        self.generator = compute.place(Generator(args.z_dim, args.noise_dim, nc))
        self.discriminator = compute.place(Discriminator(args.z_dim, nc))
        self.networks = {"net": self.generator, "discriminator": self.discriminator}
        self.g_params = [*self.generator.parameters(), *self.discriminator.q_head.parameters()]
        self.d_params = [*self.discriminator.body.parameters(), *self.discriminator.d_head.parameters()]
        self.optimizers = {
            "optim": compute.adam(self.g_params, args.lr, (args.beta1, args.beta2)),
            "optim_discriminator": compute.adam(self.d_params, args.lr_D, (args.beta1_D, args.beta2_D)),
        }
        self.code_estimator = CodeEstimator(self.discriminator, args.z_dim)
        self.code_entropy = uniform_code_entropy(args.z_dim)

    def stat_sizes(self) -> dict[str, int]:
        # loss: the generator step's whole loss; g_loss: its adversarial part; code_loss: E[−log Q(c|G)];
        # mi: the lower bound H(c) − code_loss; d_real, d_fake: D's mean output on data and on G's images.
        return dict.fromkeys(("loss", "d_loss", "g_loss", "code_loss", "mi", "d_real", "d_fake"), 1)

    def latents(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.compute.device
        return uniform((batch, self.z_dim), device), uniform((batch, self.generator.noise_dim), device)

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        real = self.compute.layout(x * 2 - 1)  # (B, C, 64, 64) in tanh's range
        batch = real.shape[0]
        # 1. Discriminator and shared body: data against G's images, plus the information term.
        codes, noise = self.latents(batch)
        with self.compute.autocast():
            with torch.no_grad():
                fake = self.generator(codes, noise)
            real_logits, _ = self.discriminator(real)
            fake_logits, estimate = self.discriminator(fake)
        d_loss = (gan_discriminator_loss(real_logits.float(), fake_logits.float())
                  + self.lambda_mi * info_gan_code_loss(estimate.float(), codes))
        optimizer = self.optimizers["optim_discriminator"]
        optimizer.zero_grad(set_to_none=True)
        d_loss.backward(inputs=self.d_params)  # Q's own layers are not updated here
        optimizer.step()
        # 2. Generator and Q on fresh codes, against the updated discriminator.
        codes, noise = self.latents(batch)
        with self.compute.autocast():
            fake_logits_g, estimate = self.discriminator(self.generator(codes, noise))
        g_loss = gan_generator_loss(fake_logits_g.float())
        code_loss = info_gan_code_loss(estimate.float(), codes)
        loss = g_loss + self.lambda_mi * code_loss
        optimizer = self.optimizers["optim"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self.g_params)  # D's body and head are not updated here
        optimizer.step()
        stats = {"loss": loss, "d_loss": d_loss, "g_loss": g_loss, "code_loss": code_loss,
                 "mi": self.code_entropy - code_loss, "d_real": torch.sigmoid(real_logits.float()).mean(),
                 "d_fake": torch.sigmoid(fake_logits.float()).mean()}
        return {k: v.detach() for k, v in stats.items()}

    @property
    def encoder(self) -> nn.Module:
        return self.code_estimator

    @torch.no_grad()
    def generate(self, codes: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, Z) -> images (B, nc, 64, 64) in [0, 1]; codes clamped to the prior's [-1, 1]; the fixed
        noise unless `noise` is given."""
        if noise is None:
            noise = self.generator.fixed_noise.expand(len(codes), -1)
        images = self.generator(codes.clamp(-1, 1), noise)
        return ((images + 1) / 2).float()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """G(Q(x), fixed noise): what the code estimate of each image carries."""
        return self.generate(self.code_estimator.encode(x)[0].float()).reshape(x.shape)

    @torch.no_grad()
    def traverse(self, image: torch.Tensor, order: list[int]) -> torch.Tensor:
        """One row per code in `order`, swept over the prior's [-1, 1]; the others at Q's estimate of the
        image (clamped to [-1, 1]); the noise fixed. -> (rows, steps, C, H, W) in [0, 1] on the CPU."""
        code = self.code_estimator.encode(image.unsqueeze(0))[0].float().clamp(-1, 1)  # (1, Z)
        values = torch.linspace(-1, 1, TRAVERSE_STEPS, device=code.device)
        codes = code.repeat(len(order), TRAVERSE_STEPS, 1)  # (rows, steps, Z)
        for row, latent in enumerate(order):
            codes[row, :, latent] = values
        images = self.generate(codes.reshape(-1, self.z_dim))  # (rows·steps, C, H, W)
        return images.reshape(len(order), TRAVERSE_STEPS, *image.shape).cpu()
