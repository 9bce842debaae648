"""Procedural dSprites: writes a file laid out like DeepMind's
`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz` (Matthey et al. 2017).

The real file cannot be downloaded everywhere, so this module draws the same
737,280 binary 64×64 sprites from their six factors. The geometry was measured on
real frames (see shared/data/dsprites_reference/README.md); this renderer matches
them with a mean IoU of about 0.999.

Conventions (continuous pixel coordinates, pixel i spans [i, i + 1), y points down):
- a pixel is on when its centre lies strictly inside the shape; no anti-aliasing;
- the anchor is (16 + 32·posX, 16 + 32·posY);
- the shape is scaled by `scale` and rotated counter-clockwise on screen by
  `orientation` about the anchor; orientation 0 and 2π are both in the grid and
  give the same image, as in the real file.

    python dsprites_gen.py --dset_dir data    # data/dsprites-dataset/dsprites_ndarray_...npz
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import os
import secrets
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
IMG_SIZE = 64
N_IMAGES = math.prod(FACTOR_SIZES)  # 737,280

# The real file's latent values, one table per factor (indexed by class).
LATENT_VALUES = (
    np.array([1.0]),
    np.array([1.0, 2.0, 3.0]),  # square, ellipse, heart
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40),  # both ends present: class 0 and 39 look the same
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)

SQUARE, ELLIPSE, HEART = 0, 1, 2

# Geometry at scale 1, in pixels.
SQUARE_HALF_SIDE = 9.6
ELLIPSE_SEMI_AXES = (12.77, 7.21)  # along x, along y before rotation
HEART_STRETCH = (0.6, 0.6625)  # applied to the classic heart curve's x and y
HEART_SHIFT_UP = 1.44  # the curve's origin sits this far above the anchor

# Anchor = ANCHOR_MIN + ANCHOR_SPAN * pos, pos = class / (n_pos - 1).
ANCHOR_MIN, ANCHOR_SPAN, N_POS = 16, 32, 32

# Resolution of the heart's radius table, in pseudo-angle steps (see _heart_radius).
_HEART_TABLE_SIZE = 1 << 16
# Window rows evaluated per numpy call: small enough for the temporaries to stay in cache.
_ROWS_PER_STEP = 32
# zlib level for the zip members. np.savez_compressed uses the default (6), but deflating
# dominates the run time: for the full file level 3 takes about 11 s of CPU against 20 s,
# for 35 MB against 19 MB (the real file is 26 MB).
COMPRESS_LEVEL = 3
# The metadata entry that marks a file as made here (the real file's metadata has no such key); its
# value, GENERATOR, also appears in older generated files' description, so is_generated finds both.
GENERATOR_KEY, GENERATOR = "generated_by", "dsprites_gen.py"


# --------------------------------------------------------------------------- factors


def default_path(dset_dir: str | os.PathLike) -> Path:
    """Where the training code looks for dSprites under --dset_dir."""
    return Path(dset_dir) / "dsprites-dataset" / FILENAME


def latent_values_for(classes: np.ndarray) -> np.ndarray:
    """(n, 6) int factor classes -> (n, 6) float64 values, as in the real file's latents_values."""
    classes = _check_classes(classes)
    return np.stack([table[classes[:, i]] for i, table in enumerate(LATENT_VALUES)], axis=1)


def _check_classes(classes: np.ndarray) -> np.ndarray:
    """Validate (n, 6) factor classes against FACTOR_SIZES; returns them as int64."""
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] != 6 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"expected (n, 6) integer factor classes, got {classes.dtype} {classes.shape}")
    if len(classes) and ((classes < 0).any() or (classes >= np.array(FACTOR_SIZES)).any()):
        raise ValueError(f"factor classes out of range for sizes {FACTOR_SIZES}")
    return classes.astype(np.int64, copy=False)


def _latents_classes(combos: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(shape, scale, orientation) triples -> (len(combos) * 1024, 6) classes, posY fastest."""
    pos_x, pos_y = np.meshgrid(np.arange(N_POS), np.arange(N_POS), indexing="ij")
    block = np.zeros((N_POS * N_POS, 6), np.int64)
    block[:, 4], block[:, 5] = pos_x.ravel(), pos_y.ravel()
    blocks = []
    for combo in combos:
        b = block.copy()
        b[:, 1:4] = combo
        blocks.append(b)
    return np.concatenate(blocks) if blocks else block[:0]


def _all_combos() -> list[tuple[int, int, int]]:
    """Every (shape, scale, orientation), in the real file's row-major order."""
    return list(itertools.product(*(range(n) for n in FACTOR_SIZES[1:4])))


# --------------------------------------------------------------------------- geometry


def _pixel_offset(k: np.ndarray) -> np.ndarray:
    """Offset of a pixel centre from the anchor along one axis, from k = 31·pixel − 32·pos.

    (pixel + 0.5) − (16 + 32·pos/31) = k/31 − 15.5. Both render() and the generator go
    through this one formula, so they compute bit-identical offsets and images.
    """
    return k / (N_POS - 1) - (ANCHOR_MIN - 0.5)


def _lattice_k(pixel: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Integer lattice index of a pixel's offset from the anchor of position class `pos`."""
    return (N_POS - 1) * pixel - ANCHOR_SPAN * pos


def _inside(shape: int, scale: float, theta: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Whether the pixel centres at offsets (dx, dy) from the anchor are inside the sprite.

    dx and dy broadcast against each other; the result has their broadcast shape.
    """
    # Undo the rotation and scale: the screen rotation, counter-clockwise with y down,
    # maps the shape's own (u, v) to (u·cos + v·sin, −u·sin + v·cos).
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    u = dx * cos - dy * sin
    v = dx * sin + dy * cos
    if shape == SQUARE:
        return np.maximum(np.abs(u), np.abs(v)) < SQUARE_HALF_SIDE
    if shape == ELLIPSE:
        a, b = ELLIPSE_SEMI_AXES
        return (u / a) ** 2 + (v / b) ** 2 < 1.0
    if shape == HEART:
        return _inside_heart(u, v + HEART_SHIFT_UP)
    raise ValueError(f"unknown shape class {shape}")


def _pseudo_angle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A stand-in for atan2(y, x) in [0, 4): monotone in the angle, from x / (|x| + |y|).

    Unlike atan2, basic IEEE arithmetic rounds the same way in every array shape and
    SIMD path, which keeps render() and the generator bit-identical.
    """
    a = x / np.maximum(np.abs(x) + np.abs(y), 1e-300)  # 0 / tiny at the origin
    return np.where(y >= 0, 1.0 - a, 3.0 + a)


def _heart_curve(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points (x, y) of the heart's outline at scale 1, about the curve's own origin (y down)."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x = HEART_STRETCH[0] * 16 * np.sin(t) ** 3
    # Minus sign: the classic curve has its lobes up in maths axes, and screen y points down.
    y = -HEART_STRETCH[1] * (13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return x, y


@functools.cache
def _heart_radius() -> np.ndarray:
    """(_HEART_TABLE_SIZE + 1,) radius of the heart at evenly spaced pseudo-angles.

    The heart is star-shaped about the curve's origin, so a point is inside exactly
    when it is nearer the origin than the curve in its direction.
    """
    x, y = _heart_curve(1 << 18)
    angle = _pseudo_angle(x, y)
    order = np.argsort(angle)
    grid = np.linspace(0.0, 4.0, _HEART_TABLE_SIZE + 1)
    return np.interp(grid, angle[order], np.hypot(x, y)[order], period=4.0)


def _inside_heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test for (x, y) in the unscaled heart curve's frame (y down, tip at +y)."""
    radius = _heart_radius()
    f = _pseudo_angle(x, y) * (_HEART_TABLE_SIZE / 4.0)
    i = np.minimum(f.astype(np.int64), _HEART_TABLE_SIZE - 1)
    w = f - i
    edge = radius[i] * (1.0 - w) + radius[i + 1] * w  # linear between table entries
    return x * x + y * y < edge * edge


# --------------------------------------------------------------------------- rendering


def render(latents_classes: np.ndarray) -> np.ndarray:
    """(n, 6) int factor classes -> (n, 64, 64) uint8 images of 0/1."""
    classes = _check_classes(latents_classes)
    out = np.zeros((len(classes), IMG_SIZE, IMG_SIZE), np.uint8)
    pixel = np.arange(IMG_SIZE)
    combos, group = np.unique(classes[:, 1:4], axis=0, return_inverse=True)
    for g, (shape, scale_c, orient_c) in enumerate(combos):
        rows = np.flatnonzero(group.ravel() == g)
        dx = _pixel_offset(_lattice_k(pixel[None, :], classes[rows, 4:5]))  # (m, 64) along x
        dy = _pixel_offset(_lattice_k(pixel[None, :], classes[rows, 5:6]))  # (m, 64) along y
        scale, theta = LATENT_VALUES[2][scale_c], LATENT_VALUES[3][orient_c]
        out[rows] = _inside(int(shape), scale, theta, dx[:, None, :], dy[:, :, None])
    return out


@functools.cache
def _outline(shape: int) -> np.ndarray:
    """(2, m) points on the shape's boundary at scale 1, in its own frame relative to the anchor.

    Only used to bound where the rotated shape can reach (its extreme points lie on these).
    """
    if shape == SQUARE:
        return SQUARE_HALF_SIDE * np.array([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    t = np.linspace(0.0, 2 * np.pi, 4096, endpoint=False)
    if shape == ELLIPSE:
        return np.stack([ELLIPSE_SEMI_AXES[0] * np.cos(t), ELLIPSE_SEMI_AXES[1] * np.sin(t)])
    x, y = _heart_curve(4096)
    return np.stack([x, y - HEART_SHIFT_UP])


def _window(shape: int, scale: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice indices k (along x, along y) of a box around the rotated, scaled shape, with a pixel to spare."""
    u, v = _outline(shape) * scale
    cos, sin = math.cos(theta), math.sin(theta)
    x, y = u * cos + v * sin, -u * sin + v * cos  # screen offsets from the anchor
    ranges = []
    for lo, hi in ((x.min(), x.max()), (y.min(), y.max())):
        # offset = k/31 − 15.5  <=>  k = 31·(offset + 15.5)
        k_lo = math.floor((N_POS - 1) * (lo - 1.0 + ANCHOR_MIN - 0.5))
        k_hi = math.ceil((N_POS - 1) * (hi + 1.0 + ANCHOR_MIN - 0.5))
        ranges.append(np.arange(k_lo, k_hi + 1))
    return ranges[0], ranges[1]


@functools.cache
def _position_lattice() -> np.ndarray:
    """(32 pos, 64 pixel) lattice index k of every pixel for every anchor position."""
    return _lattice_k(np.arange(IMG_SIZE)[None, :], np.arange(N_POS)[:, None])


def _lattice_to_window(k_window: np.ndarray) -> np.ndarray:
    """(32 pos, 64 pixel) index into a window padded with one zero row/column at the end."""
    k = _position_lattice() - k_window[0]
    return np.where((k >= 0) & (k < len(k_window)), k, len(k_window))


def _render_combo(shape: int, scale_c: int, orient_c: int) -> np.ndarray:
    """All 32×32 positions of one (shape, scale, orientation) -> (1024, 64, 64) uint8, posY fastest.

    Every offset from an anchor is k/31 − 15.5 for an integer k, so the sprite is
    evaluated once on that lattice, in a box just large enough to hold it, and the
    1024 images are gathered from it.
    """
    scale, theta = LATENT_VALUES[2][scale_c], LATENT_VALUES[3][orient_c]
    kx, ky = _window(shape, scale, theta)
    dx, dy = _pixel_offset(kx), _pixel_offset(ky)
    window = np.zeros((len(ky) + 1, len(kx) + 1), np.uint8)  # [y, x]; the last row/column stays 0
    for start in range(0, len(ky), _ROWS_PER_STEP):  # a few rows at a time keeps temporaries in cache
        rows = slice(start, min(start + _ROWS_PER_STEP, len(ky)))
        window[rows, :-1] = _inside(shape, scale, theta, dx[None, :], dy[rows, None])

    # out[posX, posY, y, x] = window[row(posY, y), col(posX, x)], as two cheap takes:
    cols = np.take(window, _lattice_to_window(kx), axis=1)  # (Ly + 1, 32 posX, 64 x)
    cols = np.ascontiguousarray(cols.transpose(1, 0, 2))  # (32 posX, Ly + 1, 64 x)
    imgs = np.take(cols, _lattice_to_window(ky), axis=1)  # (32 posX, 32 posY, 64 y, 64 x)
    return imgs.reshape(N_POS * N_POS, IMG_SIZE, IMG_SIZE)


# --------------------------------------------------------------------------- file writing


def _metadata() -> dict:
    """A metadata dict shaped like the real file's."""
    return {
        "title": "dSprites dataset (procedural regeneration)",
        "description": (
            "Disentanglement test Sprites dataset, regenerated procedurally by dsprites_gen.py. "
            "Binary 64x64 images of 2D shapes from 6 latent factors (color, shape, scale, "
            "orientation, posX, posY); every combination is present once, in row-major order "
            "over the factors, so an index maps back to its exact latent values. "
            "Original: Matthey et al. 2017, https://github.com/deepmind/dsprites-dataset."
        ),
        "version": 1,
        "latents_names": FACTOR_NAMES,
        "latents_sizes": np.array(FACTOR_SIZES, dtype=np.int64),
        "latents_possible_values": dict(zip(FACTOR_NAMES, (v.copy() for v in LATENT_VALUES), strict=True)),
        GENERATOR_KEY: GENERATOR,  # an extra key: the real file's keys, shapes and dtypes stay as they are
    }


def is_generated(path: str | os.PathLike) -> bool | None:
    """True for a file written by this generator, False for another dSprites file (the real one), None when
    the file cannot be read as an npz with a metadata entry. Reads the metadata entry's bytes without
    unpickling them (a data file is not trusted to run code): the generator's name is stored there as text."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("metadata.npy") as f:
            return GENERATOR.encode() in f.read()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def _write_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, array, allow_pickle=array.dtype == object)


def _write_images(archive: zipfile.ZipFile, combos: Sequence[tuple[int, int, int]], progress: bool) -> None:
    """Stream the imgs member one (shape, scale, orientation) block at a time."""
    n = len(combos) * N_POS * N_POS
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, IMG_SIZE, IMG_SIZE)}
    start = time.perf_counter()
    with archive.open("imgs.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)  # the version np.save picks for this header
        for i, block in enumerate(_blocks(combos)):
            f.write(block)  # zlib releases the GIL: compression overlaps the next render
            if progress and (i + 1) % max(1, len(combos) // 10) == 0:
                print(f"  {(i + 1) * N_POS * N_POS:>7,}/{n:,} images  {time.perf_counter() - start:5.1f} s",
                      file=sys.stderr, flush=True)


def _blocks(combos: Sequence[tuple[int, int, int]]) -> Iterator[np.ndarray]:
    """Rendered blocks in order; the next block renders in a worker thread while one is written."""
    if not combos:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_render_combo, *combos[0])
        for nxt in combos[1:]:
            block = pending.result()
            pending = pool.submit(_render_combo, *nxt)
            yield block
        yield pending.result()


def generate_dsprites(path: str | os.PathLike, progress: bool = True, *,
                      _combos: Sequence[tuple[int, int, int]] | None = None) -> None:
    """Write the full procedural dSprites npz at `path`, atomically.

    Keys as in the real file: imgs uint8 (737280, 64, 64), latents_values float64 (737280, 6),
    latents_classes int64 (737280, 6) and a pickled metadata dict (load with allow_pickle=True), which
    also names this generator (is_generated). Images are streamed into the compressed member, so peak
    memory stays under 200 MB. `_combos` restricts the file to some (shape, scale, orientation) triples,
    for tests.

    The file is written under a temporary name beside the target and renamed at the end, so the loader
    never finds a partial file. An interruption (Ctrl-C, SIGTERM) removes the temporary file before the
    process stops; one left by a process that was killed outright (SIGKILL, power loss) is removed by the
    next generation into the same folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    combos = _all_combos() if _combos is None else [tuple(int(c) for c in combo) for combo in _combos]
    classes = _latents_classes(combos)
    tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with _terminate_as_exception():  # outermost: the temporary file is gone before SIGTERM ends the process
        try:
            with zipfile.ZipFile(tmp, "x", zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as archive:
                _write_array(archive, "metadata", np.array(_metadata(), dtype=object))
                _write_images(archive, combos, progress)
                _write_array(archive, "latents_classes", classes)
                _write_array(archive, "latents_values", latent_values_for(classes))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _temporary_prefix(path: Path) -> str:
    """Temporary files for `path` are named .<name>.<pid>.<random>.tmp beside it."""
    return f".{path.name}."


def sweep_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of generations of `path` whose process no longer runs (killed outright);
    a temporary file of a generation still running (another process) is left alone. Returns those removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f"{_temporary_prefix(path)}*.tmp"):
        pid = tmp.name[len(_temporary_prefix(path)):].split(".", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


class _Terminated(BaseException):
    """SIGTERM arrived during a generation (BaseException, like KeyboardInterrupt: nothing should catch it)."""


@contextlib.contextmanager
def _terminate_as_exception():
    """Within the block, SIGTERM unwinds the stack like Ctrl-C does (so `finally` clauses remove the temporary
    file); afterwards the signal is delivered again to the handler that was in place, so the process ends as
    it would have. Only the main thread can handle signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:  # SIGTERM is ignored: leave it so
        yield
        return

    def terminate(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)  # default: the process ends by SIGTERM; a handler runs
        raise SystemExit(128 + signal.SIGTERM) from None  # a handler that returned: stop all the same
    finally:
        if signal.getsignal(signal.SIGTERM) is terminate:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a procedural dSprites npz laid out like the real file.")
    parser.add_argument("--dset_dir", default="data", help="writes DSET_DIR/dsprites-dataset/" + FILENAME)
    parser.add_argument("--out", help="write to this path instead")
    args = parser.parse_args(argv)
    path = Path(args.out) if args.out else default_path(args.dset_dir)
    print(f"generating {N_IMAGES:,} dSprites images into {path}", flush=True)
    start = time.perf_counter()
    generate_dsprites(path)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB) in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
