"""Pictures of a model: reconstruction grids and latent traversals, as PNG and GIF.

Pure torch + Pillow (no torchvision, no ImageMagick). Everything decodes the
posterior *mean*, so drawing pictures never consumes the training RNG and a
resumed run stays bit-identical to an uninterrupted one. Files are encoded in
memory and written atomically (utils.atomic_write): a kill leaves the old file
or the new one, never a cut or empty one.
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from utils import atomic_write

TRAVERSE_LIMIT = 3.0  # each latent is swept over [-3, 3] ...
TRAVERSE_STEPS = 10  # ... in 10 evenly spaced values


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile images (N, C, H, W) into one image (C, H', W') with `nrow` images per row."""
    n, c, h, w = images.shape
    ncol = nrow
    nrows = (n + ncol - 1) // ncol
    grid = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_pil(grid: torch.Tensor) -> Image.Image:
    """(C, H, W) float in [0, 1] -> an 'L' or 'RGB' Pillow image."""
    array = (grid.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    if array.shape[0] == 1:
        return Image.fromarray(array[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), mode="RGB")


def _write_image(image: Image.Image, path: Path, **params) -> Path:
    """Encode in memory, then write atomically; the format follows the file's extension."""
    encoded = io.BytesIO()
    image.save(encoded, format=Image.registered_extensions()[Path(path).suffix.lower()], **params)
    atomic_write(path, lambda f: f.write(encoded.getvalue()))
    return Path(path)


def save_png(grid: torch.Tensor, path: Path) -> Path:
    return _write_image(to_pil(grid), path)


def save_gif(frames: list[torch.Tensor], path: Path, ms_per_frame: int = 200) -> Path:
    """Write frames (each (C, H, W) in [0, 1]) as a looping GIF."""
    images = [to_pil(f).convert("P") if f.shape[0] == 3 else to_pil(f) for f in frames]
    return _write_image(images[0], path, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)


@torch.no_grad()
def reconstruction_grid(model, x: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Originals over their reconstructions from the posterior mean: (C, H', W')."""
    x = x[:n]
    mu, _ = model.encode(x)
    recon = torch.sigmoid(model.decode(mu)).reshape(x.shape)
    return make_grid(torch.cat([x, recon]).float().cpu(), nrow=x.shape[0])


@torch.no_grad()
def traverse(model, image: torch.Tensor, order: list[int] | None = None) -> torch.Tensor:
    """Decode each latent swept over [-limit, limit] with the others at the image's mean.

    image (C, H, W) -> (rows, steps, C, H, W), one row per latent in `order`
    (default: 0..z_dim-1; pass latents sorted by KL to put the informative ones first, or
    a subset such as the top-k by KL: the other latents stay at the image's mean).
    """
    mu, _ = model.encode(image.unsqueeze(0))  # (1, z)
    z_dim = mu.shape[1]
    order = list(range(z_dim)) if order is None else order
    values = torch.linspace(-TRAVERSE_LIMIT, TRAVERSE_LIMIT, TRAVERSE_STEPS, device=mu.device)
    z = mu.repeat(len(order), TRAVERSE_STEPS, 1)  # (rows, steps, z)
    for row, latent in enumerate(order):
        z[row, :, latent] = values
    decoded = torch.sigmoid(model.decode(z.reshape(-1, z_dim)))  # (rows·steps, C, H, W)
    return decoded.reshape(len(order), TRAVERSE_STEPS, *image.shape).float().cpu()


def traversal_grid(rows: torch.Tensor) -> torch.Tensor:
    """rows (latents, steps, C, H, W) -> one grid (C, H', W'): a row per latent, a column per value."""
    return make_grid(rows.reshape(-1, *rows.shape[2:]), nrow=rows.shape[1])


def save_labelled_png(grid: torch.Tensor, labels: list[str], path: Path, margin: int = 84) -> Path:
    """Save a grid with one text label per row in a left margin (e.g. 'z3 KL 2.31').

    Rows are assumed evenly spaced, as make_grid lays them out.
    """
    image = to_pil(grid).convert("RGB")
    canvas = Image.new("RGB", (image.width + margin, image.height), "white")
    canvas.paste(image, (margin, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    row_height = image.height / max(len(labels), 1)
    for row, label in enumerate(labels):
        draw.text((4, int(row_height * (row + 0.5)) - 6), label, fill="black", font=font)
    return _write_image(canvas, path)


def save_traversal_gif(rows: torch.Tensor, path: Path) -> Path:
    """A GIF with a frame per value; each frame shows every latent side by side at that value."""
    return save_gif([make_grid(rows[:, s], nrow=rows.shape[0]) for s in range(rows.shape[1])], path)
