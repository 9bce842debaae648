"""The shared form of the datasets with a full grid of factors (Shapes3D, MPI3D, Cars3D): one uint8
image per combination of factor values, in row-major order of the factors, as their official files
store them (Cars3D is put in that order when read).

Images stay uint8 and channels-last, as stored: (N, 64, 64, C).  That is 12 KiB an image, a quarter of
the float32 disentanglement_lib converts them to.  Where the file stores the array uncompressed (an
.npz written by np.savez) it is memory-mapped instead of read, so only the pages in use take memory.
"""

import zipfile

import numpy as np
import torch

from loaders import DataError


def row_major_strides(sizes: tuple[int, ...]) -> np.ndarray:
    """(F,) strides of a row-major grid of these sizes: index = factors @ strides."""
    return np.cumprod((1,) + tuple(sizes)[::-1])[::-1][1:].copy()


class FactorGrid:
    """Images of a full factor grid plus the ground-truth interface the scores use.

    `get(indices)` gives uint8 images (B, C, 64, 64); `factor_names`, `factor_sizes`, `sample_factors`,
    `indices_for_factors` and `factors_of` serve the scores and the latent report."""

    in_memory = True  # batches are gathered by index, without DataLoader workers
    has_factors = True
    scale = 1.0 / 255.0  # uint8 value -> float in [0, 1]

    def __init__(self, images: np.ndarray, factor_names: tuple[str, ...], factor_sizes: tuple[int, ...],
                 source: str):
        expected = int(np.prod(factor_sizes))
        if images.ndim != 4 or images.shape[0] != expected or images.shape[1:3] != (64, 64) \
                or images.dtype != np.uint8:
            raise DataError(f"{source}: images are {images.dtype} {images.shape}, expected uint8 "
                            f"({expected}, 64, 64, C): one 64×64 image for each of the "
                            f"{' × '.join(map(str, factor_sizes))} factor combinations. Get the file again.")
        self.images = images  # (N, 64, 64, C) uint8, a numpy array or a read-only memmap
        self.nc = images.shape[3]
        self.factor_names, self.factor_sizes = tuple(factor_names), tuple(factor_sizes)
        self._grid_sizes = self.factor_sizes  # the grid's axes (SmallNORB's include the instance)
        self._strides = row_major_strides(self.factor_sizes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B,) -> uint8 images (B, C, 64, 64) on the CPU."""
        picked = self.images[np.asarray(torch.as_tensor(indices).cpu())]  # (B, 64, 64, C), a copy
        return torch.from_numpy(np.ascontiguousarray(picked.transpose(0, 3, 1, 2)))

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """(n, F) int64 factor values, each drawn uniformly, factor by factor (disentanglement_lib's order)."""
        return np.stack([rng.randint(size, size=n) for size in self.factor_sizes], axis=1).astype(np.int64)

    def indices_for_factors(self, factors: np.ndarray) -> torch.Tensor:
        """(n, F) factor values -> (n,) image indices."""
        return torch.from_numpy(np.asarray(factors, dtype=np.int64) @ self._strides)

    def images_for_factors(self, factors: np.ndarray) -> torch.Tensor:
        """(n, F) factor values -> float images (n, C, 64, 64) in [0, 1] (metrics.GroundTruth)."""
        return self.get(self.indices_for_factors(factors)).float() * self.scale

    def factors_of(self, indices) -> np.ndarray:
        """(n,) image indices -> (n, F) factor values."""
        indices = np.asarray(indices, dtype=np.int64)
        return np.stack([(indices // s) % n for s, n in zip(self._strides, self._grid_sizes, strict=True)], axis=1)


def npz_member(path, name: str, fix: str) -> np.ndarray:
    """Array `name` of an .npz: memory-mapped when stored uncompressed (np.savez), else read (np.savez_compressed).

    An uncompressed member is a plain .npy file inside the zip: after its local header come the .npy header
    and the raw array, so np.memmap can point at it."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as f:
                    return np.lib.format.read_array(f, allow_pickle=False)
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)  # the local file header: name and extra lengths at bytes 26..29
                raw.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                         + int.from_bytes(local[28:30], "little"))
                version = np.lib.format.read_magic(raw)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy version {version} of '{name}'")
                shape, fortran, dtype = read_header(raw)
                offset = raw.tell()
    except KeyError:
        raise DataError(f"{path} has no '{name}' array. {fix}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npz file ({err}). {fix}") from None
    if fortran or dtype.hasobject:
        raise DataError(f"{path}: '{name}' is stored {'in Fortran order' if fortran else 'as objects'}. {fix}")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
