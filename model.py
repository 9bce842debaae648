"""The VAE architectures: Higgins et al. 2017 (H), Burgess et al. 2018 (B) and disentanglement_lib's (DLIB).

All three take 64×64 images with `nc` channels and return decoder *logits*: the
reconstruction loss (methods/losses.py) applies the sigmoid itself, which is both
numerically safer and what the published loss values assume.

The Sequential layouts (and so the state_dict keys `encoder.<i>.weight`,
`decoder.<i>.bias`, ...) match the 1Konny/Beta-VAE reference, so its
checkpoints load into these modules unchanged. DLIB is the convolutional encoder and decoder
of disentanglement_lib's study (Locatello et al. 2019), which the methods compared there
(FactorVAE, β-TCVAE, DIP-VAE) default to.
"""

import torch
from torch import nn

from hardware.fast_conv import ConvTranspose2d


class View(nn.Module):
    """Reshape inside an nn.Sequential (it has no parameters, so keys are unaffected)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*self.shape)


def reparametrize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = μ + σ·ε with σ = exp(logvar / 2) and ε ~ N(0, I); shapes (B, z_dim)."""
    std = torch.exp(0.5 * logvar)
    return mu + std * torch.randn_like(std)


class BetaVAE(nn.Module):
    """Shared forward pass; subclasses only define `self.encoder` and `self.decoder`."""

    def __init__(self, z_dim: int, nc: int):
        super().__init__()
        self.z_dim = z_dim
        self.nc = nc

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, nc, 64, 64) -> μ (B, z_dim), logσ² (B, z_dim)."""
        stats = self.encoder(x)  # (B, 2·z_dim)
        return stats[:, : self.z_dim], stats[:, self.z_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) -> logits (B, nc, 64, 64)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, return_z: bool = False):
        """x (B, nc, 64, 64) -> logits (B, nc, 64, 64), μ, logσ² (B, z_dim), and the sampled z when asked."""
        mu, logvar = self.encode(x)
        z = reparametrize(mu, logvar)
        x_logits = self.decode(z).reshape(x.shape)
        return (x_logits, mu, logvar, z) if return_z else (x_logits, mu, logvar)

    def init_weights(self) -> None:
        """Kaiming-normal weights and zero biases, as the reference initialises."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class BetaVAE_H(BetaVAE):
    """Higgins et al. 2017: four stride-2 convs, a 4×4 conv to 256, linear to 2·z."""

    def __init__(self, z_dim: int = 10, nc: int = 1):
        super().__init__(z_dim, nc)
        self.encoder = nn.Sequential(
            nn.Conv2d(nc, 32, 4, 2, 1),  # 0: (B, 32, 32, 32)
            nn.ReLU(True),
            nn.Conv2d(32, 32, 4, 2, 1),  # 2: (B, 32, 16, 16)
            nn.ReLU(True),
            nn.Conv2d(32, 64, 4, 2, 1),  # 4: (B, 64, 8, 8)
            nn.ReLU(True),
            nn.Conv2d(64, 64, 4, 2, 1),  # 6: (B, 64, 4, 4)
            nn.ReLU(True),
            nn.Conv2d(64, 256, 4, 1),  # 8: (B, 256, 1, 1)
            nn.ReLU(True),
            View(-1, 256),  # 10: (B, 256)
            nn.Linear(256, 2 * z_dim),  # 11: (B, 2·z)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, 256),  # 0: (B, 256)
            View(-1, 256, 1, 1),  # 1: (B, 256, 1, 1)
            nn.ReLU(True),
            ConvTranspose2d(256, 64, 4),  # 3: (B, 64, 4, 4)
            nn.ReLU(True),
            ConvTranspose2d(64, 64, 4, 2, 1),  # 5: (B, 64, 8, 8)
            nn.ReLU(True),
            ConvTranspose2d(64, 32, 4, 2, 1),  # 7: (B, 32, 16, 16)
            nn.ReLU(True),
            ConvTranspose2d(32, 32, 4, 2, 1),  # 9: (B, 32, 32, 32)
            nn.ReLU(True),
            ConvTranspose2d(32, nc, 4, 2, 1),  # 11: (B, nc, 64, 64)
        )
        self.init_weights()


class BetaVAE_B(BetaVAE):
    """Burgess et al. 2018: four stride-2 convs of 32, then 512 -> 256 -> 256 -> 2·z."""

    def __init__(self, z_dim: int = 10, nc: int = 1):
        super().__init__(z_dim, nc)
        self.encoder = nn.Sequential(
            nn.Conv2d(nc, 32, 4, 2, 1),  # 0: (B, 32, 32, 32)
            nn.ReLU(True),
            nn.Conv2d(32, 32, 4, 2, 1),  # 2: (B, 32, 16, 16)
            nn.ReLU(True),
            nn.Conv2d(32, 32, 4, 2, 1),  # 4: (B, 32, 8, 8)
            nn.ReLU(True),
            nn.Conv2d(32, 32, 4, 2, 1),  # 6: (B, 32, 4, 4)
            nn.ReLU(True),
            View(-1, 32 * 4 * 4),  # 8: (B, 512)
            nn.Linear(32 * 4 * 4, 256),  # 9: (B, 256)
            nn.ReLU(True),
            nn.Linear(256, 256),  # 11: (B, 256)
            nn.ReLU(True),
            nn.Linear(256, 2 * z_dim),  # 13: (B, 2·z)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, 256),  # 0: (B, 256)
            nn.ReLU(True),
            nn.Linear(256, 256),  # 2: (B, 256)
            nn.ReLU(True),
            nn.Linear(256, 32 * 4 * 4),  # 4: (B, 512)
            nn.ReLU(True),
            View(-1, 32, 4, 4),  # 6: (B, 32, 4, 4)
            ConvTranspose2d(32, 32, 4, 2, 1),  # 7: (B, 32, 8, 8)
            nn.ReLU(True),
            ConvTranspose2d(32, 32, 4, 2, 1),  # 9: (B, 32, 16, 16)
            nn.ReLU(True),
            ConvTranspose2d(32, 32, 4, 2, 1),  # 11: (B, 32, 32, 32)
            nn.ReLU(True),
            ConvTranspose2d(32, nc, 4, 2, 1),  # 13: (B, nc, 64, 64)
        )
        self.init_weights()


class BetaVAE_DLIB(BetaVAE):
    """disentanglement_lib's conv_encoder and deconv_decoder (its study's architecture for every method).

    Encoder: 4×4 convs of 32 and 32, then 2×2 convs of 64 and 64, all stride 2, a dense layer of 256,
    and dense layers to the means and to the log-variances (one Linear here, its two halves initialised
    as the two layers are). Decoder: dense 256, dense 1024 reshaped to 64×4×4, then 4×4 up-convs of 64,
    32, 32 and nc, stride 2. ReLU after every hidden layer. TensorFlow's "same" padding is 1 on each side
    for the 4×4 stride-2 layers and none for the 2×2 ones. Weights are Glorot-uniform and biases zero,
    the TensorFlow defaults that disentanglement_lib trains with. (TensorFlow flattens 64×4×4 maps in
    height-width-channel order, here channel-height-width: a fixed permutation of the dense weights.)
    """

    def __init__(self, z_dim: int = 10, nc: int = 1):
        super().__init__(z_dim, nc)
        self.encoder = nn.Sequential(
            nn.Conv2d(nc, 32, 4, 2, 1),  # 0: (B, 32, 32, 32)
            nn.ReLU(True),
            nn.Conv2d(32, 32, 4, 2, 1),  # 2: (B, 32, 16, 16)
            nn.ReLU(True),
            nn.Conv2d(32, 64, 2, 2),  # 4: (B, 64, 8, 8)
            nn.ReLU(True),
            nn.Conv2d(64, 64, 2, 2),  # 6: (B, 64, 4, 4)
            nn.ReLU(True),
            View(-1, 64 * 4 * 4),  # 8: (B, 1024)
            nn.Linear(64 * 4 * 4, 256),  # 9: (B, 256)
            nn.ReLU(True),
            nn.Linear(256, 2 * z_dim),  # 11: (B, 2·z): means, then log-variances
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, 256),  # 0: (B, 256)
            nn.ReLU(True),
            nn.Linear(256, 64 * 4 * 4),  # 2: (B, 1024)
            nn.ReLU(True),
            View(-1, 64, 4, 4),  # 4: (B, 64, 4, 4)
            ConvTranspose2d(64, 64, 4, 2, 1),  # 5: (B, 64, 8, 8)
            nn.ReLU(True),
            ConvTranspose2d(64, 32, 4, 2, 1),  # 7: (B, 32, 16, 16)
            nn.ReLU(True),
            ConvTranspose2d(32, 32, 4, 2, 1),  # 9: (B, 32, 32, 32)
            nn.ReLU(True),
            ConvTranspose2d(32, nc, 4, 2, 1),  # 11: (B, nc, 64, 64)
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Glorot-uniform weights and zero biases; the means' and log-variances' halves of the last encoder
        layer each as the separate 256 -> z_dim layer it stands for."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        last = self.encoder[11].weight  # (2·z, 256)
        for half in (last[: self.z_dim], last[self.z_dim :]):
            nn.init.xavier_uniform_(half)


# The registry behind `--model`: names are what the reference's command line uses.
MODELS: dict[str, type[BetaVAE]] = {"H": BetaVAE_H, "B": BetaVAE_B, "DLIB": BetaVAE_DLIB}


def build_model(name: str, z_dim: int, nc: int) -> BetaVAE:
    return MODELS[name](z_dim=z_dim, nc=nc)
