"""Shapes3D (Burgess & Kim 2018, introduced with FactorVAE by Kim & Mnih 2018): 480,000 rendered scenes of
one object in a room, 6 factors.

Official file, from https://github.com/deepmind/3d-shapes (the storage bucket it links):
<dset_dir>/3dshapes/3dshapes.h5, HDF5 with `images` uint8 (480000, 64, 64, 3) and `labels` float64
(480000, 6), in row-major order of the factors below (disentanglement_lib relies on the same order).
HDF5 may store the array in compressed chunks, so the images are read into memory, not mapped: 5.5 GiB
as uint8 (disentanglement_lib holds them as float32, 22 GiB).  Needs h5py.
"""

from pathlib import Path

import numpy as np

from loaders.factor_grid import FactorGrid, row_major_strides

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
READ_CHUNK = 10_000  # images per read from the file: bounds the memory beyond the array itself
FIX = "Put the official 3dshapes.h5 from https://github.com/deepmind/3d-shapes there."


def _check_labels(labels: np.ndarray, path: Path) -> None:
    """Each label column must hold its factor's number of values, laid out row-major as the images are."""
    from loaders import DataError

    if labels.shape != (int(np.prod(FACTOR_SIZES)), len(FACTOR_SIZES)):
        raise DataError(f"{path}: labels have shape {labels.shape}, expected ({int(np.prod(FACTOR_SIZES))}, "
                        f"{len(FACTOR_SIZES)}). {FIX}")
    classes = np.stack([np.unique(column, return_inverse=True)[1].ravel() for column in labels.T], axis=1)
    if not np.array_equal(classes @ row_major_strides(FACTOR_SIZES), np.arange(len(labels))):
        raise DataError(f"{path}: the labels are not the full factor grid in row-major order "
                        f"({' × '.join(map(str, FACTOR_SIZES))}). {FIX}")


def load_shapes3d(path: Path) -> FactorGrid:
    from loaders import DataError

    if not path.is_file():
        raise DataError(f"shapes3d: no file at {path}. {FIX}")
    try:
        import h5py
    except ImportError:
        raise DataError("shapes3d needs h5py to read 3dshapes.h5: pip install h5py (requirements.txt lists it)") \
            from None
    try:
        with h5py.File(path, "r") as f:
            if "images" not in f or "labels" not in f:
                raise DataError(f"{path} has no 'images' and 'labels' datasets; it is not 3dshapes.h5. {FIX}")
            stored, labels = f["images"], f["labels"][()]
            _check_labels(labels, path)
            if stored.dtype != np.uint8 or stored.shape != (len(labels), 64, 64, 3):
                raise DataError(f"{path}: images are {stored.dtype} {stored.shape}, expected uint8 "
                                f"({len(labels)}, 64, 64, 3). {FIX}")
            images = np.empty(stored.shape, dtype=np.uint8)
            for start in range(0, len(images), READ_CHUNK):
                rows = np.s_[start:min(start + READ_CHUNK, len(images))]
                stored.read_direct(images, rows, rows)
    except OSError as err:
        raise DataError(f"{path} is not a readable HDF5 file ({err}). {FIX}") from None
    return FactorGrid(images, FACTOR_NAMES, FACTOR_SIZES, str(path))
