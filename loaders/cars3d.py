"""Cars3D (Reed et al. 2015, "Deep visual analogy-making", NeurIPS): 183 car models rendered at 4 elevations
and 24 azimuths, 17,568 images.

Official files, from http://www.scottreed.info (the analogy data, cars folder), as disentanglement_lib reads
them: <dset_dir>/cars/*.mat, one per car (car_001_mesh.mat ...), each holding `im`, uint8
(128, 128, 3, 24, 4): height, width, colour, azimuth, elevation.  Each image is shrunk to 64×64 with
Pillow's Lanczos filter (the library's thumbnail with ANTIALIAS) and kept as uint8: 206 MiB in memory.
Cars are numbered in sorted file-name order (the library takes the directory's listing order, which the
file system decides).  Needs scipy (scikit-learn's dependency).
"""

from pathlib import Path

import numpy as np
from PIL import Image

from loaders.factor_grid import FactorGrid

FACTOR_NAMES = ("elevation", "azimuth", "object_type")
ELEVATIONS, AZIMUTHS = 4, 24
NUM_CARS = 183
FIX = "Put the 183 official car .mat files (http://www.scottreed.info, cars folder) there."


def _car_images(path: Path) -> np.ndarray:
    """One car's file -> uint8 (elevation, azimuth, 64, 64, 3)."""
    import scipy.io

    from loaders import DataError

    try:
        im = scipy.io.loadmat(path)["im"]
    except (KeyError, ValueError, OSError, TypeError) as err:
        raise DataError(f"{path}: not a Cars3D file with an 'im' array ({err}). {FIX}") from None
    if im.shape != (128, 128, 3, AZIMUTHS, ELEVATIONS) or im.dtype != np.uint8:
        raise DataError(f"{path}: 'im' is {im.dtype} {im.shape}, expected uint8 (128, 128, 3, {AZIMUTHS}, "
                        f"{ELEVATIONS}). {FIX}")
    out = np.empty((ELEVATIONS, AZIMUTHS, 64, 64, 3), dtype=np.uint8)
    for e in range(ELEVATIONS):
        for a in range(AZIMUTHS):
            picture = Image.fromarray(np.ascontiguousarray(im[:, :, :, a, e]))
            picture.thumbnail((64, 64), Image.LANCZOS)
            out[e, a] = np.asarray(picture)
    return out


def load_cars3d(folder: Path) -> FactorGrid:
    """Every car file under folder -> the (elevation, azimuth, car) grid in row-major order."""
    from loaders import DataError

    files = sorted(folder.glob("*.mat")) if folder.is_dir() else []
    if len(files) != NUM_CARS:
        raise DataError(f"cars3d: found {len(files)} .mat files in {folder}, expected {NUM_CARS}. {FIX}")
    grid = np.empty((ELEVATIONS, AZIMUTHS, len(files), 64, 64, 3), dtype=np.uint8)  # filled car by car
    for car, path in enumerate(files):
        grid[:, :, car] = _car_images(path)
    return FactorGrid(grid.reshape(-1, 64, 64, 3), FACTOR_NAMES, (ELEVATIONS, AZIMUTHS, len(files)), str(folder))
