"""Pictures of a model: reconstruction grids and latent traversals, as PNG and GIF.

Pure torch + Pillow (no torchvision, no ImageMagick). Everything decodes the
posterior *mean*, so drawing pictures never consumes the training RNG and a
resumed run stays bit-identical to an uninterrupted one. Files are encoded in
memory and written atomically (utils.atomic_write): a kill leaves the old file
or the new one, never a cut or empty one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from monitoring.records import Logger
from utils import atomic_write

if TYPE_CHECKING:
    from methods import Method


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


def save_traversal_gif(rows: torch.Tensor, path: Path, labels: list[str] | None = None, ms_per_frame: int = 200,
                       header: int = 14) -> Path:
    """A GIF with a frame per value; each frame shows every latent side by side at that value, each
    under its label (e.g. 'z3') when labels are given. rows: (latents, steps, C, H, W)."""
    frames = [to_pil(make_grid(rows[:, s], nrow=rows.shape[0])) for s in range(rows.shape[1])]
    if labels:
        column = frames[0].width / len(labels)  # make_grid spaces the images evenly
        white = 255 if frames[0].mode == "L" else (255, 255, 255)
        labelled = []
        for frame in frames:
            canvas = Image.new(frame.mode, (frame.width, frame.height + header), white)
            canvas.paste(frame, (0, header))
            draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
            for i, label in enumerate(labels):
                draw.text((int(column * i) + 4, 1), label, fill=0 if frame.mode == "L" else (0, 0, 0), font=font)
            labelled.append(canvas)
        frames = labelled
    images = [f.convert("P") if f.mode == "RGB" else f for f in frames]
    return _write_image(images[0], path, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)


class OutputWriter:
    """Writes reconstruction grids and traversals under `pictures_dir`/<iter>/.

    Traversals show the `top_latents` most informative latents (by KL; all when 0), so a model with
    hundreds of latents still gets pictures of a readable size.
    """

    def __init__(self, pictures_dir: Path, data, traverse_indices: dict, device: torch.device, seed: int,
                 save_files: bool = True, top_latents: int = 10):
        self.pictures_dir, self.data, self.device, self.seed = Path(pictures_dir), data, device, seed
        self.save_files = save_files  # --save_output False: pictures go to the loggers only
        self.top_latents = top_latents
        # Indices beyond a small dataset (tests, subsets) are skipped rather than crash.
        self.traverse_indices = {k: i for k, i in traverse_indices.items() if i < len(data)}

    def image(self, index: int) -> torch.Tensor:
        """One dataset image as float (C, 64, 64) on the device."""
        return self.data.get(torch.tensor([index])).to(self.device).float()[0] * self.data.scale

    def latents(self, z_dim: int, kld: list[float] | None) -> list[int]:
        """The latents to traverse: by decreasing KL when known, at most top_latents of them."""
        order = kl_order(kld) if kld else list(range(z_dim))
        return order[: self.top_latents] if self.top_latents else order

    def write(self, step: int, method: Method, x: torch.Tensor, kld: list[float] | None, logger: Logger) -> Path:
        """Reconstructions and one traversal per image; rows sorted by KL and labelled with it."""
        order = self.latents(method.z_dim, kld)
        labels = [f"z{i} KL {kld[i]:.2f}" if kld else f"z{i}" for i in order]
        folder = self.pictures_dir / str(step)
        reconstruction = method.reconstruct(x[:8])
        if reconstruction is not None:
            grid = make_grid(torch.cat([x[:8], reconstruction]).float().cpu(), nrow=len(reconstruction))
            logger.images(step, "reconstruction", grid)
            if self.save_files:
                save_png(grid, folder / "reconstruction.png")
        # The random image is drawn from its own generator so pictures never shift the training RNG.
        pick = torch.Generator().manual_seed(self.seed * 7919 + step)
        keys = dict(self.traverse_indices, random_img=int(torch.randint(len(self.data), (1,), generator=pick)))
        for key, index in keys.items():
            rows = method.traverse(self.image(index), order)  # (latents, steps, C, H, W)
            grid = traversal_grid(rows)
            logger.images(step, f"traverse_{key}", grid)
            if self.save_files:
                save_labelled_png(grid, labels, folder / f"traverse_{key}.png")
                save_traversal_gif(rows, folder / f"traverse_{key}.gif", [f"z{i}" for i in order])
        return folder


def kl_order(kld: list[float]) -> list[int]:
    """Latent indices by decreasing KL: the informative latents first in traversals."""
    return sorted(range(len(kld)), key=lambda i: -kld[i])
