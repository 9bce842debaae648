"""Datasets: one table of facts, the dSprites and image-folder loaders, and the batch order.

The datasets with a full factor grid beside dSprites (Shapes3D, MPI3D toy/realistic/real, Cars3D, SmallNORB) are read
by loaders/ (one file per family, docs/datasets.md) into the same interface.

dSprites is held in memory bit-packed (737,280 × 64 × 8 bytes = 360 MiB, against
11.25 GiB as float32) and unpacked to float per batch, on whatever device the
batch is drawn on; its colour, noisy and scream variants (disentanglement_lib's,
loaders/dsprites_variants.py) read the same file and draw a colour, noise or a patch of
The Scream for every image of every batch. Image folders (CelebA, 3DChairs, or any folder with --dataset
folder) are decoded lazily by DataLoader workers, in grey (1 channel) or colour (3).
Both draw their batch indices from `BatchOrder`, a pure function of (seed, step), so a
resumed run sees exactly the batches it would have seen without the interruption.
`--subset N` trains on a seeded random subset of any of them (`Subset`).

`dataset_spec(args)` is the table entry with the run's --channels, --distribution and --subset
applied: what the model, the loss and the loader are built from.
"""

import struct
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loaders import DataError  # raised here and by every reader
from loaders.dsprites_variants import SCREAM_FILE, SCREAM_URL, DSpritesVariant, load_scream
from loaders.dsprites_variants import VARIANTS as DSPRITES_VARIANTS
from utils import atomic_write

DSPRITES_FILE = "dsprites-dataset/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_KEYS = ("imgs", "latents_classes")
DSPRITES_FIX = ("Delete it to have it generated again, or put the real file from "
                "https://github.com/deepmind/dsprites-dataset in its place.")
# Inflating the full dSprites npz (3 GB of pixels) takes 6.6 s on an AVX2-only AMD EPYC; load_dsprites keeps the
# bit-packed images beside it, in "<file>.packed.npz" (uncompressed: 394 MiB with the factors), read in 0.9 s.
PACKED_CACHE_SUFFIX = ".packed.npz"
PACKED_CACHE_VERSION = 1
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}
CHANNELS = (1, 3)  # --channels: greyscale or colour
DISTRIBUTIONS = ("bernoulli", "gaussian")  # --distribution: the decoder likelihoods of losses.reconstruction_loss
# The decoder likelihood of an image folder by its channels, unless --distribution says otherwise. It follows the
# reference's pairing (one-channel dSprites Bernoulli; colour CelebA and 3D Chairs Gaussian): Bernoulli
# cross-entropy is the usual likelihood of grey levels in [0, 1] (binary images, line art, MNIST-like data) and
# keeps the scale the published β values were set on; the squared error suits colour photographs. Grey
# photographs may train better with --distribution gaussian.
DISTRIBUTION_FOR_CHANNELS = {1: "bernoulli", 3: "gaussian"}
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # Pillow modes of one-channel images
HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # more than 8 bits per channel
DETECT_IMAGES = 32  # images whose mode decides the channels of --dataset folder


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the rest of the code needs to know about one dataset."""

    name: str  # the canonical (lower-case) --dataset value
    nc: int  # image channels (0: decided per run, by --channels or the images)
    distribution: str  # decoder likelihood: 'bernoulli' or 'gaussian' ('': by channels, DISTRIBUTION_FOR_CHANNELS)
    relpath: str  # file or folder under --dset_dir ('': --dset_dir itself)
    source: str  # where a user gets the data
    kind: str  # 'dsprites' (one npz), 'folder' (images found recursively), or a factor-grid loader in GRID_KINDS
    # Images whose traversals are drawn at every display step, by dataset index.
    traverse_indices: dict = field(default_factory=dict)
    subset: int | None = None  # --subset: train on this many images, drawn with subset_seed (None: all)
    subset_seed: int = 0
    # dSprites only: disentanglement_lib's variant whose observations draw pixels of their own ('color',
    # 'noisy', 'scream': loaders/dsprites_variants.py); '' for the plain images.
    variant: str = ""

    def path(self, dset_dir: str | Path) -> Path:
        return Path(dset_dir) / self.relpath


DATASETS: dict[str, DatasetSpec] = {
    "dsprites": DatasetSpec(
        name="dsprites",
        nc=1,
        distribution="bernoulli",
        relpath=DSPRITES_FILE,
        source="https://github.com/deepmind/dsprites-dataset (generated locally when missing)",
        kind="dsprites",
        traverse_indices={"fixed_square": 87040, "fixed_ellipse": 332800, "fixed_heart": 578560},
    ),
    # disentanglement_lib's color_dsprites, noisy_dsprites and scream_dsprites: the same file and factors, 3
    # channels, a colour (3 uniforms in [0.5, 1]), noise (64 × 64 × 3 uniforms) or a patch of The Scream
    # (--dset_dir/scream/scream.jpg) drawn for every observation.
    **{f"dsprites_{variant}": DatasetSpec(
        name=f"dsprites_{variant}",
        nc=3,
        distribution="bernoulli",  # disentanglement_lib's likelihood on every dataset
        relpath=DSPRITES_FILE,
        source="https://github.com/deepmind/dsprites-dataset (the dSprites file; generated locally when missing)"
        + (f", and The Scream at {SCREAM_FILE}: {SCREAM_URL}" if variant == "scream" else ""),
        kind="dsprites",
        traverse_indices={"fixed_square": 87040, "fixed_ellipse": 332800, "fixed_heart": 578560},
        variant=variant,
    ) for variant in DSPRITES_VARIANTS},
    "shapes3d": DatasetSpec(
        name="shapes3d",
        nc=3,
        distribution="bernoulli",  # disentanglement_lib's likelihood on every dataset
        relpath="3dshapes/3dshapes.h5",
        source="https://github.com/deepmind/3d-shapes (3dshapes.h5)",
        kind="shapes3d",
        traverse_indices={"fixed_img": 0, "fixed_img2": 239_999},
    ),
    **{f"mpi3d_{variant}": DatasetSpec(
        name=f"mpi3d_{variant}",
        nc=3,
        distribution="bernoulli",
        relpath=f"mpi3d_{variant}/mpi3d_{variant}.npz",
        source=f"https://github.com/rr-learning/disentanglement_dataset (mpi3d_{variant}.npz, 12.7 GB)",
        kind="mpi3d",
        traverse_indices={"fixed_img": 0, "fixed_img2": 518_420},
    ) for variant in ("toy", "realistic", "real")},
    "cars3d": DatasetSpec(
        name="cars3d",
        nc=3,
        distribution="bernoulli",
        relpath="cars",
        source="http://www.scottreed.info (the analogy data's cars folder: 183 .mat files)",
        kind="cars3d",
        traverse_indices={"fixed_img": 0, "fixed_img2": 8_784},
    ),
    "smallnorb": DatasetSpec(
        name="smallnorb",
        nc=1,
        distribution="bernoulli",
        relpath="small_norb",
        source="https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ (the six -dat, -cat, -info files, gunzipped)",
        kind="smallnorb",
        traverse_indices={"fixed_img": 0, "fixed_img2": 24_300},
    ),
    "celeba": DatasetSpec(
        name="celeba",
        nc=3,
        distribution="gaussian",
        relpath="CelebA",
        source="http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba.zip, unzipped)",
        kind="folder",
        traverse_indices={"fixed_img": 0},
    ),
    "3dchairs": DatasetSpec(
        name="3dchairs",
        nc=3,
        distribution="gaussian",
        relpath="3DChairs",
        source="https://www.di.ens.fr/willow/research/seeing3Dchairs/ (rendered_chairs.tar, unpacked)",
        kind="folder",
        traverse_indices={"fixed_img": 0},
    ),
    "folder": DatasetSpec(
        name="folder",
        nc=0,
        distribution="",
        relpath="",
        source="any folder of images, found recursively: pass it as --dset_dir",
        kind="folder",
        traverse_indices={"fixed_img": 0},
    ),
}


def dataset_spec(args) -> DatasetSpec:
    """DATASETS[args.dataset] with this run's --channels, --distribution and --subset (drawn with --seed) applied.

    A folder's channels, when --channels does not give them, are detected from its images."""
    spec = DATASETS[args.dataset]
    channels = getattr(args, "channels", None) or spec.nc or detect_channels(spec, spec.path(args.dset_dir))
    if spec.kind != "folder" and channels != spec.nc:
        label, count = {"dsprites": "dSprites"}.get(spec.name, spec.name), {1: "one channel"}.get(spec.nc, "3 channels")
        raise DataError(f"--channels {channels}: {label} images have {count}; leave --channels out or pass {spec.nc}.")
    distribution = getattr(args, "distribution", None) or spec.distribution or DISTRIBUTION_FOR_CHANNELS[channels]
    return replace(spec, nc=channels, distribution=distribution, subset=getattr(args, "subset", None),
                   subset_seed=args.seed)


# --------------------------------------------------------------------------- dSprites


class DSprites:
    """dSprites images, bit-packed in memory, plus its ground-truth factors.

    `get(indices)` returns uint8 images (B, 1, 64, 64) with values 0/1 on the
    device the packed array lives on. When the file holds the full factor grid in
    its canonical order, the ground-truth interface used by the metrics works:
    `factor_names`, `factor_sizes`, `sample_factors`, `images_for_factors`.
    """

    nc = 1
    in_memory = True  # batches are gathered by index, without DataLoader workers
    scale = 1.0  # uint8 value -> float in [0, 1]
    factor_names = ("shape", "scale", "orientation", "posX", "posY")
    factor_sizes = (3, 6, 40, 32, 32)  # colour (size 1) is not a factor

    def __init__(self, packed: torch.Tensor, latents_classes: np.ndarray):
        self.packed = packed  # (N, 64, 8) uint8, 8 pixels a byte, most significant bit first
        self.latents_classes = latents_classes  # (N, 6) int64
        self._shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
        # Row-major strides over (shape, scale, orientation, posX, posY).
        self._strides = np.cumprod((1,) + self.factor_sizes[::-1])[::-1][1:].copy()
        self.has_factors = _is_full_grid(latents_classes, self.factor_sizes)

    def __len__(self) -> int:
        return self.packed.shape[0]

    def to(self, device: torch.device) -> "DSprites":
        self.packed = self.packed.to(device)
        self._shifts = self._shifts.to(device)
        return self

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B,) -> uint8 images (B, 1, 64, 64) of 0/1."""
        # non_blocking: a blocking host-to-GPU copy would wait for all queued GPU work, every step.
        packed = self.packed[indices.to(self.packed.device, non_blocking=True)]  # (B, 64, 8)
        bits = (packed.unsqueeze(-1) >> self._shifts) & 1  # (B, 64, 8, 8)
        return bits.reshape(-1, 1, 64, 64)

    def sample_factors(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """(n, 5) int64 factor classes, each drawn uniformly."""
        return np.stack([rng.randint(size, size=n) for size in self.factor_sizes], axis=1).astype(np.int64)

    def indices_for_factors(self, factors: np.ndarray) -> torch.Tensor:
        """(n, 5) factor classes -> (n,) dataset indices of the images with those factors."""
        if not self.has_factors:
            raise DataError("this dSprites file does not hold the full factor grid in canonical order")
        return torch.from_numpy(np.asarray(factors, dtype=np.int64) @ self._strides)

    def factors_of(self, indices) -> np.ndarray:
        """(n,) dataset indices -> (n, 5) factor classes (colour, always 0, left out)."""
        return self.latents_classes[np.asarray(indices)][:, 1:]

    def images_for_factors(self, factors: np.ndarray) -> torch.Tensor:
        """(n, 5) factor classes -> float images (n, 1, 64, 64) in [0, 1]."""
        return self.get(self.indices_for_factors(factors)).float()


def _is_full_grid(latents_classes: np.ndarray, sizes: tuple[int, ...]) -> bool:
    """True when row i holds the factors of index i in row-major order (the real file's layout)."""
    if latents_classes.shape[0] != int(np.prod(sizes)):
        return False
    strides = np.cumprod((1,) + sizes[::-1])[::-1][1:]
    return bool(np.array_equal(latents_classes[:, 1:] @ strides, np.arange(latents_classes.shape[0])))


def packed_cache_path(path: Path) -> Path:
    """Where load_dsprites keeps the bit-packed copy of the dSprites file at `path`."""
    return path.with_name(path.name + PACKED_CACHE_SUFFIX)


def load_dsprites(path: Path, chunk: int = 1024) -> DSprites:
    """The dSprites npz at `path`, bit-packed: from its packed copy beside it when that copy was made from this
    very file (_source_stamp); else read from the npz, and the copy written for next time."""
    path = Path(path)
    stamp = _source_stamp(path)
    cached = _read_packed_cache(packed_cache_path(path), stamp)
    if cached is not None:
        return cached
    data = _read_dsprites_npz(path, chunk)
    _write_packed_cache(packed_cache_path(path), stamp, data)
    return data


def _source_stamp(path: Path) -> np.ndarray:
    """The cache's format version, the file's size and modification time (ns), and the CRC-32 of its two
    arrays from the zip's directory (read without inflating anything): a cache with another stamp is stale.
    (-1s when the file cannot be read as a zip: reading it then fails with the reader's message.)"""
    try:
        info = path.stat()
        with zipfile.ZipFile(path) as archive:
            crcs = [archive.getinfo(f"{key}.npy").CRC for key in DSPRITES_KEYS]
    except (OSError, KeyError, zipfile.BadZipFile):
        return np.full(5, -1, np.int64)
    return np.array([PACKED_CACHE_VERSION, info.st_size, info.st_mtime_ns, *crcs], np.int64)


def _read_packed_cache(cache: Path, stamp: np.ndarray) -> DSprites | None:
    """The DSprites in `cache` when its stamp is `stamp`, else None (missing, stale or unreadable)."""
    if stamp[0] < 0 or not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as arrays:
            if not np.array_equal(arrays["stamp"], stamp):
                return None
            packed, latents_classes = arrays["packed"], arrays["latents_classes"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        print(f"{cache}: unreadable ({err}); reading the dSprites file instead and writing it again",
              file=sys.stderr)
        return None
    if packed.ndim != 3 or packed.shape[1:] != (64, 8) or packed.dtype != np.uint8 or \
            latents_classes.shape != (packed.shape[0], 6):
        return None
    return DSprites(torch.from_numpy(packed), latents_classes)


def _write_packed_cache(cache: Path, stamp: np.ndarray, data: DSprites) -> None:
    """Keep the packed images beside the file (394 MiB for the full dSprites), written atomically; a
    folder that cannot take it only costs the next load its time again, and says so."""
    if stamp[0] < 0:
        return
    try:
        atomic_write(cache, lambda f: np.savez(f, stamp=stamp, packed=data.packed.numpy(),
                                               latents_classes=data.latents_classes))
    except OSError as err:
        print(f"could not keep the packed copy of the dSprites file at {cache} ({err}); each run will read the "
              f"file again (6.6 s for the full dSprites on a 2-core AVX2 machine)", file=sys.stderr)


def _read_dsprites_npz(path: Path, chunk: int) -> DSprites:
    """Read the dSprites npz without ever holding the 2.8 GiB of uint8 images at once.

    The `imgs` member is inflated straight from the zip in chunks, and each chunk
    is bit-packed; peak memory is the packed array plus one chunk. Chunks of 1,024
    images (4 MiB) load the full file in about 4 s here, against 7 s for 16,384: the
    allocator reuses a small chunk's memory, while each large one is mapped afresh.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            missing = [k for k in DSPRITES_KEYS if f"{k}.npy" not in members]
            if missing:
                raise DataError(f"{path} has no {', '.join(missing)} array; it is not a dSprites file. "
                                + DSPRITES_FIX)
            with archive.open("imgs.npy") as f:
                packed = _read_packed_images(f, path, chunk)
            with archive.open("latents_classes.npy") as f:
                latents_classes = np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise DataError(f"{path} is corrupted or truncated ({err}). {DSPRITES_FIX}") from None
    if latents_classes.shape != (packed.shape[0], 6):
        raise DataError(f"{path}: latents_classes has shape {latents_classes.shape}, "
                        f"expected ({packed.shape[0]}, 6) to match imgs. {DSPRITES_FIX}")
    return DSprites(torch.from_numpy(packed), latents_classes.astype(np.int64))


def _read_packed_images(f, path: Path, chunk: int) -> np.ndarray:
    """Stream an (N, 64, 64) uint8 .npy member into an (N, 64, 8) packed array."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise DataError(f"{path}: unsupported .npy version {version} for imgs. {DSPRITES_FIX}")
    shape, fortran_order, dtype = read_header[version](f)
    if len(shape) != 3 or shape[1:] != (64, 64) or dtype != np.uint8 or fortran_order or shape[0] == 0:
        raise DataError(f"{path}: imgs is {dtype} {shape}, expected uint8 (N, 64, 64) with N > 0 as in the real "
                        f"dSprites file. {DSPRITES_FIX}")
    packed = np.empty((shape[0], 64, 8), dtype=np.uint8)
    for start in range(0, shape[0], chunk):
        n = min(chunk, shape[0] - start)
        raw = f.read(n * 64 * 64)
        if len(raw) != n * 64 * 64:
            raise EOFError(f"imgs ends after {start + len(raw) // 4096} of {shape[0]} images")
        packed[start : start + n] = np.packbits(np.frombuffer(raw, np.uint8).reshape(n, 64, 64), axis=-1)
    return packed


def ensure_dsprites(path: Path) -> None:
    """Generate the dSprites file from its factor grid when it is not on disk."""
    if path.exists():
        return
    from loaders import dsprites_gen  # imported lazily: only needed the first time

    print(f"dSprites not found at {path}: generating it from the factor grid "
          "(a one-time step; the real file from https://github.com/deepmind/dsprites-dataset can replace it).")
    dsprites_gen.generate_dsprites(path)


# --------------------------------------------------------------------------- image folders


# What Pillow raises for a file it cannot decode (truncated, corrupt, not an image, absurdly large).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


class ImageFolder(torch.utils.data.Dataset):
    """All images under a folder, found recursively, as (channels, 64, 64): RGB (3) or grey (1).

    Works with the official CelebA layout (`img_align_celeba/*.jpg`) and flat
    folders alike; files without an image extension are ignored. Image files whose
    header Pillow cannot read are skipped and counted in one warning; grayscale,
    RGBA, palette and odd-sized images are converted. A file whose header is fine
    but whose data is damaged only fails when decoded: the next image in the folder
    takes its place (the same one every time, so runs stay reproducible), and such
    files are reported once and then at 10, 100, 1000... per loading process.

    Images are uint8 (scale 1/255). One of more than 8 bits per channel (16-bit PNG or TIFF, Pillow
    modes I;16 and I, or float F) is first scaled to [0, 1] by its real range (unit_range), never
    clipped to 8 bits as Pillow's own conversion does.
    """

    def __init__(self, root: Path, image_size: int = 64, channels: int = 3):
        if not root.is_dir():
            raise DataError(f"no image folder at {root}")
        candidates = _image_files(root)
        self.files, skipped = [], []
        for p in candidates:
            (self.files if _is_readable_image(p) else skipped).append(p)
        if skipped:
            examples = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
            warnings.warn(f"{root}: skipped {len(skipped)} file(s) that are not readable images ({examples}); "
                          "training uses the others. Delete or replace those files to silence this.", stacklevel=2)
        if not self.files:
            raise DataError(f"{root} contains no readable images ({', '.join(sorted(IMAGE_EXTENSIONS))}). "
                            "Put the dataset's images there, or point --dset_dir at the folder that holds them.")
        self.root = root
        self.image_size = image_size
        self.nc = channels
        self.scale = 1.0 / 255.0  # uint8 value -> float in [0, 1]
        self.undecodable: set[Path] = set()  # files found damaged past their header, in this process

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        # A file damaged past its header fails only here; the next image stands in for it
        # rather than kill a days-long run over one file.
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            if path in self.undecodable:
                continue
            try:
                return load_image(path, self.image_size, self.nc)
            except DECODE_ERRORS as err:
                self._report_undecodable(path, err)
        raise DataError(f"none of the {len(self.files)} images under {self.root} could be decoded: they are "
                        "damaged or truncated. Get the data again from its source.")

    def _report_undecodable(self, path: Path, err: Exception) -> None:
        self.undecodable.add(path)
        count = len(self.undecodable)
        if _is_power_of_ten(count):  # 1, 10, 100...: a handful of lines however many files are damaged
            warnings.warn(f"{self.root}: {count} image(s) could not be decoded so far, each replaced by the next "
                          f"image in the folder (latest: {path.name}: {err}). Replace or delete damaged files; "
                          f"the next report comes at {10 * count}.", stacklevel=3)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B,) -> uint8 images (B, C, 64, 64): the same call as DSprites.get."""
        return torch.stack([self[int(i)] for i in indices])


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def _image_files(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as err:
        raise DataError(f"cannot list the images under {root} ({err}); check the folder's permissions.") from None


def _image_mode(path: Path) -> str | None:
    """A cheap header check: Pillow identifies the format and mode without decoding pixels (None: unreadable)."""
    try:
        with Image.open(path) as img:
            return img.mode
    except DECODE_ERRORS:
        return None


def _is_readable_image(path: Path) -> bool:
    return _image_mode(path) is not None


def detect_channels(spec: DatasetSpec, root: Path) -> int:
    """1 when the folder's first images (DETECT_IMAGES of them, in sorted order) are all greyscale, else 3."""
    if not root.is_dir():
        raise missing_folder(spec, root)
    modes = []
    for path in _image_files(root):
        mode = _image_mode(path)
        if mode is not None:
            modes.append(mode)
        if len(modes) == DETECT_IMAGES:
            break
    channels = 1 if modes and all(mode in GREY_MODES for mode in modes) else 3
    print(f"{root}: {'greyscale' if channels == 1 else 'colour'} images, so {channels} channel"
          f"{'s' if channels == 3 else ''} (--channels sets it).")
    return channels


def unit_range(img: Image.Image) -> np.ndarray:
    """A one-channel image of more than 8 bits (mode I;16*, I or F) -> float32 (H, W) in [0, 1], scaled
    from its own minimum to its maximum (a constant image becomes 0).

    Such files rarely fill their nominal range: 12-bit sensors in 16-bit PNGs, depth and thermal maps,
    float TIFFs; their own range is the one that holds the picture. Pillow's own conversion to 8 bits
    instead clips every value above 255 to white.
    """
    values = np.asarray(img, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    return ((values - low) / (high - low) if high > low else np.zeros_like(values)).astype(np.float32)


def load_image(path: Path, size: int = 64, channels: int = 3) -> torch.Tensor:
    """Any Pillow-readable image -> uint8 (channels, size, size).

    Colour becomes grey by Pillow's luma (ITU-R 601) and grey becomes colour by repeating it; more than
    8 bits per channel are scaled by unit_range, resized in float, then rounded to 8 bits. Raises one of
    DECODE_ERRORS if the file is damaged."""
    with Image.open(path) as img:
        if img.mode in HIGH_BIT_MODES:
            grey = Image.fromarray(unit_range(img)).resize((size, size), Image.BILINEAR)  # mode F, in [0, 1]
            pixels = np.repeat(np.rint(np.asarray(grey) * 255)[None], channels, axis=0)  # (C, H, W)
        else:
            small = np.asarray(img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR))
            pixels = small[None] if channels == 1 else small.transpose(2, 0, 1)  # (C, H, W)
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C"))  # a writable copy


# --------------------------------------------------------------------------- subsets


class Subset:
    """A random subset of `size` images of a dataset (--subset), drawn with `seed`: the same interface.

    Image i of the subset is image indices[i] of `full`. The scores draw images by their factors from
    the whole dataset, so a subset has no factor interface of its own: score on `full`.
    """

    has_factors = False

    def __init__(self, full, size: int, seed: int):
        if size > len(full):
            raise DataError(f"--subset {size}: the dataset has only {len(full):,} images; pass at most that many, "
                            "or leave --subset out to use them all.")
        self.full, self.nc, self.scale = full, full.nc, full.scale
        generator = torch.Generator().manual_seed(seed)
        self.indices = torch.randperm(len(full), generator=generator)[:size].sort().values  # (size,)
        if hasattr(full, "training_batch"):  # a dSprites variant: new pixels for every training batch
            self.training_batch = lambda indices, seed, step: full.training_batch(self.indices[indices.cpu()],
                                                                                  seed, step)

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        return self.full.get(self.indices[indices.cpu()])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.full[int(self.indices[index])]

    def to(self, device: torch.device) -> "Subset":
        if hasattr(self.full, "to"):
            self.full = self.full.to(device)
        return self


# --------------------------------------------------------------------------- loading by name


def missing_folder(spec: DatasetSpec, path: Path) -> DataError:
    if spec.name == "folder":
        return DataError(f"--dataset folder: no folder at {path}. Pass the folder that holds the images as "
                         "--dset_dir.")
    return DataError(f"{spec.name}: expected its images under {path} (found nothing there). "
                     f"Get the data from {spec.source} and put the images in that folder, "
                     "or point --dset_dir at the folder that contains it.")


def load_dataset(spec: DatasetSpec, dset_dir: str | Path):
    """Return the in-memory (DSprites) or lazy (ImageFolder) dataset for a table entry (a Subset of it when
    the entry says so)."""
    path = spec.path(dset_dir)
    if spec.kind == "dsprites":
        ensure_dsprites(path)
        data = load_dsprites(path)
        if spec.variant:  # the same packed file, pixels drawn per observation
            scream = load_scream(Path(dset_dir) / SCREAM_FILE) if spec.variant == "scream" else None
            data = DSpritesVariant(data, spec.variant, scream)
    elif spec.kind in GRID_KINDS:
        data = load_grid(spec, path)
    elif not path.is_dir():
        raise missing_folder(spec, path)
    else:
        data = ImageFolder(path, channels=spec.nc or detect_channels(spec, path))
    return Subset(data, spec.subset, spec.subset_seed) if spec.subset else data


def load_grid(spec: DatasetSpec, path: Path):
    """A factor-grid dataset (loaders/): Shapes3D, MPI3D, Cars3D or SmallNORB."""
    if spec.kind == "shapes3d":
        from loaders.shapes3d import load_shapes3d
        return load_shapes3d(path)
    if spec.kind == "smallnorb":
        from loaders.smallnorb import load_smallnorb
        return load_smallnorb(path)
    if spec.kind == "mpi3d":
        from loaders.mpi3d import load_mpi3d
        return load_mpi3d(path, spec.name.removeprefix("mpi3d_"))
    from loaders.cars3d import load_cars3d
    return load_cars3d(path)


GRID_KINDS = ("shapes3d", "mpi3d", "cars3d", "smallnorb")


# --------------------------------------------------------------------------- batch order


class BatchOrder:
    """Shuffled, drop-last epochs whose order is a pure function of (seed, epoch).

    `indices(step)` gives the batch of step `step` (1-based, as the solver counts),
    so resuming at any step replays the same data order without saved sampler state.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int):
        if num_items < batch_size:
            raise DataError(f"the dataset has {num_items} images, fewer than --batch_size {batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.per_epoch = num_items // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step - 1, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=generator)
        return self._perm[position * self.batch_size : (position + 1) * self.batch_size]

    def from_step(self, step: int):
        """Iterate batches of indices for step, step + 1, ... (a DataLoader batch_sampler)."""
        while True:
            yield self.indices(step).tolist()
            step += 1


def batches(data, order: BatchOrder, start_step: int, device: torch.device, num_workers: int = 0):
    """Yield float batches (B, C, 64, 64) in [0, 1] on `device`, starting at `start_step`.

    In-memory data is gathered by index directly (no worker processes, no per-image
    collation); folder data is decoded by DataLoader workers in the same order. A dSprites
    variant renders each batch with colours, noise or patches drawn from (seed, step) (`training_batch`),
    so those draws too are the same after a resume.
    """
    if getattr(getattr(data, "full", data), "in_memory", False):  # in memory, a subset of it too
        training_batch = getattr(data, "training_batch", None)
        if training_batch is not None:  # a dSprites variant: its draws come from (seed, step)
            for step in range(start_step, 2**62):
                yield training_batch(order.indices(step), order.seed, step).to(device, non_blocking=True)
            return
        for step in range(start_step, 2**62):
            x = data.get(order.indices(step)).to(device, non_blocking=True).float()
            yield x if data.scale == 1.0 else x.mul_(data.scale)  # uint8 0..255 (Shapes3D, MPI3D, Cars3D) -> [0, 1]
        return
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=order.from_step(start_step),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # Its own generator: starting workers would otherwise draw from the global RNG and
        # shift the sampling noise of a resumed run.
        generator=torch.Generator().manual_seed(order.seed),
    )
    for x in loader:
        yield x.to(device, non_blocking=True).float().mul_(data.scale)
