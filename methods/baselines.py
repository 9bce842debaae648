"""PCA and ICA: the linear baselines that disentanglement papers score beside the VAEs.

Higgins et al. 2017 report PCA and ICA among the BetaVAE-score baselines on dSprites. Both are fitted
once, with scikit-learn, on the flattened images (nc·64·64 pixels in [0, 1]) and give z_dim codes:

- PCA: the z_dim leading principal components, whitened (sklearn PCA(whiten=True), randomized SVD
  seeded by --seed), so every code has unit variance over the fitting images.
- ICA: FastICA (logcosh contrast, seeded by --seed) on those whitened principal scores: exactly the
  whitening FastICA itself does (projection on the leading z_dim principal directions), with the
  first step done by randomized PCA instead of a full SVD of every pixel. Codes have unit variance.

Either way the model is linear: codes = (x − mean)·Wᵀ + b, images = offset + codes·M (clamped to
[0, 1] for pictures), held as buffers of one small module (checkpoint key model_states "net"; no
optimiser). The scores use these codes through `encoder.encode(x) -> (codes, None)`.

The fit uses a random subset of --fit_images images (50,000 by default), drawn with --seed: the data
as float32 takes 50,000 × 4,096 × 4 B = 0.8 GB for one channel (2.5 GB for colour) and scikit-learn
centres a copy, while the sampling error of z_dim = 10 leading components of a 4,096-dimensional
covariance at 50,000 images is already far below the differences the scores resolve. All of dSprites
(737,280 images) would take 12 GB. Pass a larger --fit_images to use more.
"""

import time

import numpy as np
import torch
from torch import nn

from methods.base import TRAVERSE_LIMIT, TRAVERSE_STEPS, Compute, Method

READ_CHUNK = 4096  # images read per call while collecting the fitting data


class LinearCodes(nn.Module):
    """codes = (x − mean)·weightᵀ + bias; images = offset + codes·mixing. All fitted tensors are buffers."""

    def __init__(self, z_dim: int, nc: int, image_size: int = 64):
        super().__init__()
        self.z_dim, self.shape = z_dim, (nc, image_size, image_size)
        pixels = nc * image_size * image_size
        self.register_buffer("mean", torch.zeros(pixels))  # (D,)
        self.register_buffer("weight", torch.zeros(z_dim, pixels))  # (Z, D)
        self.register_buffer("bias", torch.zeros(z_dim))  # (Z,)
        self.register_buffer("mixing", torch.zeros(z_dim, pixels))  # (Z, D)
        self.register_buffer("offset", torch.zeros(pixels))  # (D,)
        self.register_buffer("fitted", torch.tensor(False))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """x (B, C, 64, 64) in [0, 1] -> (codes (B, Z), None)."""
        return (x.reshape(len(x), -1).float() - self.mean) @ self.weight.T + self.bias, None

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, Z) -> images (B, C, 64, 64), clamped to [0, 1]."""
        return (self.offset + codes @ self.mixing).reshape(len(codes), *self.shape).clamp(0, 1)

    @torch.no_grad()
    def set(self, **arrays: np.ndarray) -> None:
        for name, value in arrays.items():
            getattr(self, name).copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))
        self.fitted.fill_(True)


def fitting_images(data, count: int, seed: int) -> np.ndarray:
    """A random subset of `count` images (all when fewer), flattened: (n, C·64·64) float32 in [0, 1].

    Drawn from a generator of its own, so fitting leaves the run's RNG alone; sorted, so an in-memory
    dataset is read in order."""
    count = min(count, len(data))
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    rows = None
    for start in range(0, count, READ_CHUNK):
        chunk = indices[start : start + READ_CHUNK]
        x = (data.get(chunk).float() * data.scale).reshape(len(chunk), -1).cpu().numpy()
        if rows is None:
            rows = np.empty((count, x.shape[1]), np.float32)
        rows[start : start + len(chunk)] = x
    return rows


class LinearBaseline(Method):
    """A linear code fitted once (iterative = False): PCA or ICA, see the subclasses."""

    iterative = False
    watched: dict[str, str] = {}

    def __init__(self, args, nc: int, distribution: str, compute: Compute):
        del distribution  # a linear code has no likelihood
        self.name, self.z_dim, self.compute = args.objective, args.z_dim, compute
        self.fit_images, self.seed = args.fit_images, args.seed
        self.net = LinearCodes(args.z_dim, nc).to(compute.device)
        self.networks, self.optimizers = {"net": self.net}, {}

    @property
    def fitted(self) -> bool:
        return bool(self.net.fitted)

    def stat_sizes(self) -> dict[str, int]:
        return {}

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        raise RuntimeError(f"{self.name} is fitted once (fit), not trained by steps")

    def parameters(self):
        yield from self.net.buffers()  # the fitted tensors: what the non-finite check inspects

    def extra_state(self) -> dict:
        return {"fit_images": self.fit_images, "seed": self.seed} if self.fitted else {}

    def load_extra_state(self, state: dict) -> None:
        # A run resumed with another --fit_images or --seed (--resume_with_changes True) fits again.
        if self.fitted and state and (state.get("fit_images"), state.get("seed")) != (self.fit_images, self.seed):
            self.net.fitted.fill_(False)
            self.refit_reason = (f"The checkpoint's {self.name} was fitted with --fit_images {state.get('fit_images')}"
                                 f" and --seed {state.get('seed')}; fitting again with {self.fit_images} and "
                                 f"{self.seed}.")

    def fit(self, data) -> None:
        if getattr(self, "refit_reason", None):
            print(self.refit_reason)
        start = time.perf_counter()
        images = fitting_images(data, self.fit_images, self.seed)
        if len(images) <= self.z_dim:
            raise ValueError(f"--z_dim {self.z_dim} components need more than {len(images)} images; "
                             "use a larger --fit_images or dataset, or a smaller --z_dim")
        self.net.set(**self.solve(images))
        print(f"Fitted {self.name} with {self.z_dim} components on {len(images):,} of {len(data):,} images "
              f"(a random subset drawn with --seed {self.seed}) in {time.perf_counter() - start:.1f} s.")

    def solve(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images (n, D) -> the LinearCodes buffers: mean, weight, bias, mixing, offset."""
        raise NotImplementedError

    def whitened_pca(self, images: np.ndarray):
        from sklearn.decomposition import PCA  # scikit-learn is only imported when a baseline is fitted

        pca = PCA(n_components=self.z_dim, whiten=True, svd_solver="randomized", random_state=self.seed)
        scores = pca.fit_transform(images)  # (n, Z), unit variance
        scale = np.sqrt(pca.explained_variance_)[:, None]  # (Z, 1)
        return pca, scores, pca.components_ / scale, pca.components_ * scale  # W (Z, D), M (Z, D)

    @property
    def encoder(self) -> nn.Module:
        return self.net

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.decode(self.net.encode(x)[0]).reshape(x.shape)

    @torch.no_grad()
    def traverse(self, image: torch.Tensor, order: list[int]) -> torch.Tensor:
        """Each code in `order` swept over [-3, 3] (codes have unit variance), the others at the image's."""
        code = self.net.encode(image.unsqueeze(0))[0]  # (1, Z)
        values = torch.linspace(-TRAVERSE_LIMIT, TRAVERSE_LIMIT, TRAVERSE_STEPS, device=code.device)
        codes = code.repeat(len(order), TRAVERSE_STEPS, 1)  # (rows, steps, Z)
        for row, latent in enumerate(order):
            codes[row, :, latent] = values
        images = self.net.decode(codes.reshape(-1, self.z_dim))
        return images.reshape(len(order), TRAVERSE_STEPS, *image.shape).float().cpu()


class PCABaseline(LinearBaseline):
    def solve(self, images):
        pca, _, weight, mixing = self.whitened_pca(images)
        return {"mean": pca.mean_, "weight": weight, "bias": np.zeros(self.z_dim), "mixing": mixing,
                "offset": pca.mean_}


class ICABaseline(LinearBaseline):
    def solve(self, images):
        from sklearn.decomposition import FastICA

        pca, scores, pca_weight, pca_mixing = self.whitened_pca(images)
        ica = FastICA(n_components=self.z_dim, whiten="unit-variance", random_state=self.seed).fit(scores)
        # sources = (scores − ica.mean_)·unmixingᵀ and scores = sources·mixing_ᵀ + ica.mean_, composed with PCA.
        unmixing = ica.components_  # (Z, Z)
        return {"mean": pca.mean_, "weight": unmixing @ pca_weight, "bias": -ica.mean_ @ unmixing.T,
                "mixing": ica.mixing_.T @ pca_mixing, "offset": pca.mean_ + ica.mean_ @ pca_mixing}
