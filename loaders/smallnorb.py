"""SmallNORB (LeCun et al. 2004, "Learning methods for generic object recognition with invariance to pose and
lighting", CVPR): 50 toys in 5 categories, 10 instances each, photographed at 9 elevations, 18 azimuths and 6
lightings, 48,600 stereo pairs of 96×96 greyscale images.

Official files, from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ (gunzipped), as disentanglement_lib
reads them: <dset_dir>/small_norb/smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat and
smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat, in NORB's binary matrix format (not MATLAB's):
an int32 magic number naming the element type, the number of dimensions, at least 3 int32 sizes, the data.
`dat` is uint8 (24300, 2, 96, 96), `cat` int32 (24300,), `info` int32 (24300, 4): instance, elevation,
azimuth (0, 2, ..., 34), lighting.

As in disentanglement_lib: the first image of each pair, shrunk to 64×64 with Pillow's Lanczos filter; the
factors are category, elevation, azimuth / 2 and lighting, and the instance is not a factor but drawn at
random for each image (``observe``), which consumes random numbers between the factor draws.  (The library
resizes in Pillow's 32-bit integer mode, which keeps the filter's overshoot beyond 0..255; here the result is
clipped to 8 bits, so a few edge pixels differ by a few levels.)  Held as uint8: 190 MiB.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loaders.factor_grid import FactorGrid, row_major_strides

CHUNKS = ("5x46789x9x18x6x2x96x96-training", "5x01235x9x18x6x2x96x96-testing")
FACTOR_NAMES = ("category", "elevation", "azimuth", "lighting")
FACTOR_SIZES = (5, 9, 18, 6)
INSTANCES = 10
# NORB's magic numbers -> element type (the byte matrix is unsigned, as the format defines).
ELEMENT_TYPES = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32, 0x1E3D4C51: np.float32, 0x1E3D4C53: np.float64,
                 0x1E3D4C56: np.int16}
FIX = "Put the six official files from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ there, gunzipped."


def matrix_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """A NORB binary matrix file's (element type, dimensions, byte offset of the data)."""
    from loaders import DataError

    try:
        header = np.fromfile(path, dtype="<i4", count=5)
    except OSError as err:
        raise DataError(f"smallnorb: cannot read {path} ({err}). {FIX}") from None
    if len(header) < 5 or int(header[0]) not in ELEMENT_TYPES or not 0 < header[1] <= 8:
        raise DataError(f"{path} is not a NORB binary matrix (magic number {header[:1]}). {FIX}")
    ndim = int(header[1])
    dims = tuple(int(d) for d in np.fromfile(path, dtype="<i4", count=max(3, ndim), offset=8)[:ndim])
    dtype = np.dtype(ELEMENT_TYPES[int(header[0])]).newbyteorder("<")
    offset = 8 + 4 * max(3, ndim)
    if path.stat().st_size != offset + int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path}: {path.stat().st_size} bytes, not the {dims} array its header announces "
                        f"(truncated?). {FIX}")
    return dtype, dims, offset


def read_matrix(path: Path) -> np.ndarray:
    """A whole NORB binary matrix file -> array (for the small `cat` and `info` files)."""
    dtype, dims, offset = matrix_header(path)
    return np.fromfile(path, dtype=dtype, count=int(np.prod(dims)), offset=offset).reshape(dims)


def left_images(path: Path, chunk: int = 1000) -> np.ndarray:
    """The `dat` file's first image of each pair, shrunk to uint8 (n, 64, 64), read `chunk` pairs at a time
    (plain reads, not a memory map: the 447 MB file then never sits in this process's memory)."""
    from loaders import DataError

    dtype, dims, offset = matrix_header(path)
    if len(dims) != 4 or dims[1:] != (2, 96, 96) or dtype != np.uint8:
        raise DataError(f"{path}: {dtype} {dims}, expected uint8 (n, 2, 96, 96). {FIX}")
    images = np.empty((dims[0], 64, 64), dtype=np.uint8)
    pair = 2 * 96 * 96
    for start in range(0, dims[0], chunk):
        count = min(chunk, dims[0] - start)
        pairs = np.fromfile(path, dtype=np.uint8, count=count * pair, offset=offset + start * pair)
        for i, left in enumerate(pairs.reshape(count, 2, 96, 96)[:, 0]):
            images[start + i] = np.asarray(Image.fromarray(left).resize((64, 64), Image.LANCZOS))
    return images


def _chunk(folder: Path, chunk: str):
    """One chunk -> (left images uint8 (n, 64, 64), full factors (n, 5): category, elevation, azimuth / 2,
    lighting, instance)."""
    from loaders import DataError

    paths = {kind: folder / f"smallnorb-{chunk}-{kind}.mat" for kind in ("dat", "cat", "info")}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"smallnorb: {', '.join(missing)} not found in {folder}. {FIX}")
    images = left_images(paths["dat"])
    cat, info = read_matrix(paths["cat"]), read_matrix(paths["info"])
    n = len(images)
    if cat.shape != (n,) or info.shape != (n, 4):
        raise DataError(f"{folder}: {chunk} holds {n} images, cat {cat.shape}, info {info.shape}; expected "
                        f"({n},) and ({n}, 4). {FIX}")
    instance, elevation, azimuth, lighting = np.asarray(info, dtype=np.int64).T
    factors = np.stack([np.asarray(cat, dtype=np.int64), elevation, azimuth // 2, lighting, instance], axis=1)
    return images, factors


class SmallNORB(FactorGrid):
    """FactorGrid over (category, elevation, azimuth, lighting, instance), with the instance an observation
    drawn per image (``observe``), not a factor: `factor_sizes` and `sample_factors` cover the four factors."""

    def __init__(self, images: np.ndarray, source: str):
        super().__init__(images, FACTOR_NAMES + ("instance",), FACTOR_SIZES + (INSTANCES,), source)
        self.factor_names, self.factor_sizes = FACTOR_NAMES, FACTOR_SIZES

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        return np.stack([rng.randint(size, size=n) for size in FACTOR_SIZES], axis=1).astype(np.int64)

    def observe(self, factors: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        """(n, 4) factors -> (n, 5) rows with the instance drawn as the library draws it: randint(10, size=n)."""
        return np.column_stack([factors, rng.randint(INSTANCES, size=len(factors))]).astype(np.int64)

    def indices_for_factors(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape[1] != len(FACTOR_SIZES) + 1:
            raise ValueError("SmallNORB needs each image's instance too: draw rows with metrics.observe")
        return super().indices_for_factors(rows)

    def factors_of(self, indices) -> np.ndarray:
        return super().factors_of(indices)[:, :len(FACTOR_SIZES)]


def load_smallnorb(folder: Path) -> SmallNORB:
    """Both chunks -> every image at its place in the (category, elevation, azimuth, lighting, instance) grid."""
    from loaders import DataError

    if not folder.is_dir():
        raise DataError(f"smallnorb: no folder at {folder}. {FIX}")
    sizes = FACTOR_SIZES + (INSTANCES,)
    grid = np.zeros((int(np.prod(sizes)), 64, 64, 1), dtype=np.uint8)
    seen = np.zeros(len(grid), dtype=np.int64)
    for chunk in CHUNKS:
        images, factors = _chunk(folder, chunk)
        if (factors < 0).any() or (factors >= np.array(sizes)).any():
            raise DataError(f"{folder}: {chunk} has factor values outside {sizes}. {FIX}")
        index = factors @ row_major_strides(sizes)
        grid[index, :, :, 0] = images
        np.add.at(seen, index, 1)
    if not (seen == 1).all():
        raise DataError(f"{folder}: the two chunks do not hold each of the {len(grid):,} combinations of category, "
                        f"instance, elevation, azimuth and lighting exactly once. {FIX}")
    return SmallNORB(grid, str(folder))
