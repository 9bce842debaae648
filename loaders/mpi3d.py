"""MPI3D (Gondal et al. 2019, "On the transfer of inductive bias from simulation to the real world: a new
disentanglement dataset", NeurIPS): toy, realistic and real, the same 7 factors and 1,036,800 images each
(6 object colours, 6 shapes, 2 sizes, 3 camera heights, 3 background colours, 40 × 40 arm positions).
disentanglement_lib's mpi3d.py describes the first toy release, 4 colours and 4 shapes (460,800 images):
a file of that size is read with those sizes.

Official files, from https://github.com/rr-learning/disentanglement_dataset (as disentanglement_lib
reads them):  <dset_dir>/mpi3d_toy/mpi3d_toy.npz, <dset_dir>/mpi3d_realistic/mpi3d_realistic.npz,
<dset_dir>/mpi3d_real/mpi3d_real.npz, each holding `images`, uint8 (1036800, 64, 64, 3), in row-major order
of the factors below.  An array stored uncompressed (np.savez) is memory-mapped (factor_grid.npz_member):
12.7 GB on disk, only the pages read in memory; a compressed one is read into memory (12.7 GB).
"""

from pathlib import Path

import numpy as np

from loaders.factor_grid import FactorGrid, npz_member

FACTOR_NAMES = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                "horizontal_axis", "vertical_axis")
FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)
FIRST_TOY_SIZES = (4, 4, 2, 3, 3, 40, 40)  # the first mpi3d_toy release, as disentanglement_lib describes it
VARIANTS = ("toy", "realistic", "real")


def relpath(variant: str) -> str:
    return f"mpi3d_{variant}/mpi3d_{variant}.npz"


def load_mpi3d(path: Path, variant: str) -> FactorGrid:
    fix = (f"Put the official mpi3d_{variant}.npz from https://github.com/rr-learning/disentanglement_dataset at "
           f"{path}.")
    if not path.is_file():
        from loaders import DataError

        raise DataError(f"mpi3d_{variant}: no file at {path}. {fix}")
    images = npz_member(path, "images", fix)
    sizes = FIRST_TOY_SIZES if len(images) == int(np.prod(FIRST_TOY_SIZES)) else FACTOR_SIZES
    return FactorGrid(images, FACTOR_NAMES, sizes, str(path))
