"""The dSprites variants of disentanglement_lib (Locatello et al. 2019, `data/ground_truth/dsprites.py`):
the same file and the same five factors (shape, scale, orientation, posX, posY), but each *observation*
draws pixels of its own, so one set of factors gives a new image at every draw. Colour is not a factor.

    color   the binary sprite on 3 channels, multiplied by one colour per observation:
            random_state.uniform(0.5, 1, [n, 1, 1, 3]) (the background stays black)
    noisy   the binary sprite on 3 channels plus noise, clipped: min(image + noise, 1) with
            noise = random_state.uniform(0, 1, [n, 64, 64, 3]) (the sprite stays white)
    scream  a 64 × 64 patch of Munch's The Scream (shrunk to fit 350 × 274), mixed half and half with a
            colour, inverted where the sprite is; per image, in this order: the patch's row
            randint(0, height - 64), its column randint(0, width - 64), the colour uniform(0, 1, size=3).
            The picture is read from <dset_dir>/scream/scream.jpg (SCREAM_FILE), where the library's
            download script puts https://upload.wikimedia.org/wikipedia/commons/f/f4/The_Scream.jpg.

The library draws these from the random state that drew the factors, right after them: its
`sample(n, rs)` is `sample_factors(n, rs)` then `sample_observations_from_factors(factors, rs)`, and the
latter draws nothing before the colour, the noise or the patches (dSprites' one-valued colour factor is
drawn with randint(1), which leaves the state alone). Three sources of draws, one way of composing them:

- `observe_chunks(indices, rs)`: the library's draws from a numpy RandomState, in its order and its calls
  (float64, then float32 images), for the scores, so they see the pixels the library would render.
- `training_batch(indices, seed, step)`: new draws for every training batch, from a generator that is a
  pure function of (seed, step): a resumed run draws exactly what the uninterrupted run drew, with no state
  in the checkpoint, on any device (drawn on the CPU, composed where the images are).
- `get(indices)`: one fixed observation per image, drawn from a generator of the image's index: pictures,
  fitting PCA and ICA, anything that asks for "image i" and wants the same pixels every time.

The dSprites images stay bit-packed (the base dataset's `get` gives uint8 0/1); the variants add no memory
beyond one batch of float pixels (and scream's picture, 2.3 MB as float64).
"""

from pathlib import Path

import numpy as np
import torch

VARIANTS = ("color", "noisy", "scream")
COLOUR_LOW = 0.5  # colour: uniform(0.5, 1) per channel
# Tags that keep the three sources of draws apart (SeedSequence entropy words).
TRAIN_TAG, FIXED_TAG = 0x7A11, 0xF1BED
REPLAY_CHUNK = 256  # observations rendered at a time when replaying the library's draws (12 MiB of float32)
SCREAM_FILE = "scream/scream.jpg"  # under --dset_dir, as disentanglement_lib's dlib_download_data puts it
SCREAM_URL = "https://upload.wikimedia.org/wikipedia/commons/f/f4/The_Scream.jpg"
SCREAM_SIZE = (350, 274)  # the library's thumbnail((350, 274, 3)): at most 350 wide and 274 high


def load_scream(path: Path) -> np.ndarray:
    """The Scream as the library holds it: thumbnail((350, 274)) (Pillow's default filter), then
    np.array(image) * 1. / 255.: float64 (height, width, 3) in [0, 1]."""
    from PIL import Image

    from loaders import DataError

    fix = (f"Put The Scream there: {SCREAM_URL} (what disentanglement_lib's dlib_download_data fetches), or "
           "any picture of at least 65 × 65 pixels.")
    if not path.is_file():
        raise DataError(f"dsprites_scream: no picture at {path}. {fix}")
    try:
        with Image.open(path) as image:
            image.thumbnail(SCREAM_SIZE)  # first, as the library does: a JPEG is then decoded at a reduced scale
            scream = np.array(image if image.mode == "RGB" else image.convert("RGB")) * 1. / 255.
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"dsprites_scream: {path} is not a readable image ({err}). {fix}") from None
    if scream.shape[0] <= 64 or scream.shape[1] <= 64:
        raise DataError(f"dsprites_scream: {path} is {scream.shape[1]} × {scream.shape[0]} once shrunk; the "
                        f"64 × 64 patches need at least 65 × 65. {fix}")
    return scream


def library_draws(variant: str, rng: np.random.RandomState, n: int, picture: tuple[int, int] = (0, 0)) -> tuple:
    """What the library's sample_observations_from_factors draws for n observations, with its own calls and
    in its order: colour (n, 3) or noise (n, 3, 64, 64) (channels first, as this project's images), float32;
    for scream, per image the patch's row and column (in a picture of `picture` = (height, width)) and a
    colour: (rows (n,), columns (n,), colours (n, 3) float64)."""
    if variant == "color":
        return (rng.uniform(COLOUR_LOW, 1, [n, 1, 1, 3]).reshape(n, 3).astype(np.float32),)
    if variant == "noisy":
        noise = rng.uniform(0, 1, [n, 64, 64, 3])
        return (np.ascontiguousarray(noise.transpose(0, 3, 1, 2), dtype=np.float32),)
    rows, columns, colours = np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 3))
    for i in range(n):
        rows[i] = rng.randint(0, picture[0] - 64)
        columns[i] = rng.randint(0, picture[1] - 64)
        colours[i] = rng.uniform(0, 1, size=3)
    return rows, columns, colours


def fresh_draws(variant: str, generator: np.random.Generator, n: int, picture: tuple[int, int] = (0, 0)) -> tuple:
    """The same distributions from a numpy Generator (training, fixed images); colour and noise float32."""
    if variant == "color":
        return ((COLOUR_LOW + (1 - COLOUR_LOW) * generator.random((n, 3))).astype(np.float32),)
    if variant == "noisy":
        return (generator.random((n, 3, 64, 64), dtype=np.float32),)
    return (generator.integers(0, picture[0] - 64, n), generator.integers(0, picture[1] - 64, n),
            generator.random((n, 3)))


def compose(variant: str, sprites: torch.Tensor, draws: tuple, scream: torch.Tensor | None = None) -> torch.Tensor:
    """Binary sprites (n, 1, 64, 64) of 0/1 (any dtype, any device) and their draws -> float32 images
    (n, 3, 64, 64) on the sprites' device.

    color: sprite × colour; noisy: min(sprite + noise, 1), i.e. 1 on the sprite and the noise elsewhere
    (noise in [0, 1)), computed as max(noise, sprite). Both equal the library's float64 arithmetic rounded to
    float32: its products and clipped sums are exact, so only the draws' own rounding to float32 remains,
    done on the CPU before the pixels go to any device. scream (`scream`: the picture, float64 (H, W, 3) on
    the sprites' device): (patch + colour) / 2, and 1 minus that on the sprite, in float64 as the library
    computes it, then float32."""
    device = sprites.device
    if variant == "scream":
        rows, columns, colours = (torch.from_numpy(np.asarray(d)).to(device) for d in draws)
        offsets = torch.arange(64, device=device)
        patches = scream[(rows[:, None] + offsets)[:, :, None], (columns[:, None] + offsets)[:, None, :]]
        background = (patches + colours[:, None, None, :].to(torch.float64)) / 2.  # (n, 64, 64, 3)
        on = sprites[:, 0, :, :, None].bool()
        return torch.where(on, 1 - background, background).permute(0, 3, 1, 2).float().contiguous()
    values = torch.from_numpy(draws[0]).to(device, non_blocking=True)
    mask = sprites.to(torch.float32)
    if variant == "color":
        return mask * values.view(-1, 3, 1, 1)
    return torch.maximum(values, mask)  # mask (n, 1, 64, 64) broadcast over the 3 channels


def _unsigned(value: int) -> int:
    return int(value) % 2**64  # SeedSequence takes non-negative words; --seed may be negative


class DSpritesVariant:
    """A dSprites variant over a dSprites dataset `base` (dataset.DSprites, or any object with its interface:
    `get(indices)` -> uint8 (B, 1, 64, 64) of 0/1, and for the scores the factor interface).

    Float images (scale 1.0), 3 channels; the factors are the base's. `scream`: the picture (load_scream),
    for the scream variant only."""

    nc = 3
    in_memory = True  # batches are gathered by index, without DataLoader workers
    scale = 1.0  # images are float in [0, 1] already

    def __init__(self, base, variant: str, scream: np.ndarray | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"unknown dSprites variant {variant!r}; one of {VARIANTS}")
        if (variant == "scream") != (scream is not None):
            raise ValueError("the scream variant, and only it, takes the picture (load_scream)")
        self.base, self.variant = base, variant
        self.scream = None if scream is None else torch.from_numpy(np.asarray(scream, dtype=np.float64))
        self.picture = (0, 0) if scream is None else tuple(scream.shape[:2])  # (height, width)
        self.factor_names, self.factor_sizes = base.factor_names, base.factor_sizes
        self.has_factors = getattr(base, "has_factors", False)
        if hasattr(base, "latents_classes"):
            self.latents_classes = base.latents_classes  # the file's identity (evaluation provenance)

    def __len__(self) -> int:
        return len(self.base)

    def to(self, device: torch.device) -> "DSpritesVariant":
        if hasattr(self.base, "to"):
            self.base = self.base.to(device)
        if self.scream is not None:
            self.scream = self.scream.to(device)
        return self

    # ------------------------------------------------------------------ images

    def sprites(self, indices) -> torch.Tensor:
        """The binary dSprites images (B, 1, 64, 64), uint8 0/1, on the base's device."""
        return self.base.get(torch.as_tensor(indices))

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B,) -> float32 (B, 3, 64, 64): each image with the colour, noise or patch of its own
        index (the same every call, in every run)."""
        indices = torch.as_tensor(indices)
        draws = [fresh_draws(self.variant, np.random.default_rng([FIXED_TAG, _unsigned(i)]), 1, self.picture)
                 for i in indices.tolist()] or [fresh_draws(self.variant, np.random.default_rng(0), 0, self.picture)]
        return self._compose(indices, tuple(np.concatenate(field) for field in zip(*draws, strict=True)))

    def _compose(self, indices, draws: tuple) -> torch.Tensor:
        return compose(self.variant, self.sprites(indices), draws, self.scream)

    def training_batch(self, indices: torch.Tensor, seed: int, step: int) -> torch.Tensor:
        """The batch of training step `step` (1-based): float32 (B, 3, 64, 64) with colours, noise or patches
        drawn from a generator of (seed, step) alone, so a resumed run draws them again exactly."""
        generator = np.random.default_rng([TRAIN_TAG, _unsigned(seed), _unsigned(step)])
        return self._compose(indices, fresh_draws(self.variant, generator, len(indices), self.picture))

    def observe_chunks(self, indices, rng: np.random.RandomState, chunk: int = REPLAY_CHUNK):
        """Images of `indices` (n,) with the library's draws from `rng` for one call of
        sample_observations_from_factors on n observations: float32 (k, 3, 64, 64) chunks of at most
        `chunk` images, in order. The library draws all n at once; numpy's legacy uniform fills its output
        one number after the other, so drawing the rows chunk by chunk takes the same numbers (checked by
        tests/test_dsprites_variants.py) without holding n × 12,288 float64 (10,000 images: 983 MB)."""
        indices = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), chunk):
            part = indices[start:start + chunk]
            yield self._compose(torch.from_numpy(part), library_draws(self.variant, rng, len(part), self.picture))

    # ------------------------------------------------------------------ factors (the base's)

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        return self.base.sample_factors(n, rng)

    def indices_for_factors(self, factors: np.ndarray) -> torch.Tensor:
        return self.base.indices_for_factors(factors)

    def factors_of(self, indices) -> np.ndarray:
        if hasattr(self.base, "factors_of"):
            return self.base.factors_of(indices)
        return self.base.latents_classes[np.asarray(indices)][:, 1:]
