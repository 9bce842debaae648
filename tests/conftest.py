"""Shared fixtures: small datasets written to temporary folders, and the repository paths."""

import contextlib
import fcntl
import os
import signal
import sys
import tempfile
from pathlib import Path

# The suite runs in one worker per core (scripts/test.sh), so one torch thread each, set before torch starts
# OpenMP: two-thread workers would wait on each other's cores, and a run that saw busy cores would pick its own
# thread count (hardware/threads.py), so that two runs a test compares might compute in different orders.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# --precision auto times fp32 against bf16 once per setting and caches the choice in the user's cache folder
# (hardware/calibrate.py); the tests, and the runs they start, keep theirs in a folder of their own.
os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="betavae-test-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from dataset import DSPRITES_FILE  # noqa: E402

# A shell starts background jobs (`pytest &`) with SIGINT ignored, and children inherit that, so the
# tests that press Ctrl-C on a child (dSprites generation, the visdom server) would see it ignored.
# Python's own handler is reset to the default in every child it starts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def write_dsprites_npz(path: Path, n: int = 256, seed: int = 0) -> np.ndarray:
    """A small dSprites-format file (random squares) for loader and training tests."""
    rng = np.random.RandomState(seed)
    imgs = np.zeros((n, 64, 64), np.uint8)
    for i in range(n):
        x, y, s = rng.randint(0, 48), rng.randint(0, 48), rng.randint(4, 16)
        imgs[i, y : y + s, x : x + s] = 1
    classes = np.zeros((n, 6), np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=classes.astype(np.float64))
    return imgs


@pytest.fixture
def tiny_dsprites(tmp_path) -> Path:
    """A --dset_dir holding a 256-image dSprites-format file."""
    dset_dir = tmp_path / "data"
    write_dsprites_npz(dset_dir / DSPRITES_FILE)
    return dset_dir


def run_args(tmp_path: Path, dset_dir: Path, *extra: str) -> list[str]:
    """A short CPU run writing everything under tmp_path."""
    return ["--dset_dir", str(dset_dir), "--output_dir", str(tmp_path / "outputs"),
            "--ckpt_dir", str(tmp_path / "checkpoints"), "--viz_on", "False", "--cuda", "False",
            "--batch_size", "16", *extra]


def shared_folder(tmp_path_factory, worker_id) -> Path:
    """This test session's folder, the same for every pytest-xdist worker (.../pytest-N above .../popen-gwK)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@contextlib.contextmanager
def session_lock(tmp_path_factory, worker_id, name: str):
    """Held by one pytest-xdist worker at a time, for work that the first does and the others then reuse."""
    with open(shared_folder(tmp_path_factory, worker_id) / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


@pytest.fixture(scope="session", autouse=True)
def numba_kernels(tmp_path_factory, worker_id) -> None:
    """Compile the evaluation's numba kernels (gbt, the sparse encoder) once, before any test: on a fresh clone
    that takes about a minute on 2 cores, and every worker, and every training run a test starts, that needed
    them before numba's cache in __pycache__ existed would compile them again. The first worker compiles under
    a lock; the others then load the cache (a second or two)."""
    from evaluation import gbt, sparse_encoder

    with session_lock(tmp_path_factory, worker_id, "numba"):
        gbt.warm_up()
        sparse_encoder.warm_up()


@pytest.fixture(scope="session")
def full_dsprites(tmp_path_factory, worker_id) -> Path:
    """A --dset_dir with the full generated dSprites file (737,280 images), made once per test session: under
    pytest-xdist the workers share it (the first makes it, under a lock, in the session's folder above theirs),
    which saves each further worker the 10 to 20 s of generating it."""
    from loaders import dsprites_gen

    dset_dir = shared_folder(tmp_path_factory, worker_id) / "full_dsprites" / "data"
    with session_lock(tmp_path_factory, worker_id, "full_dsprites"):
        if not (dset_dir / DSPRITES_FILE).exists():  # generate_dsprites writes atomically
            dsprites_gen.generate_dsprites(dset_dir / DSPRITES_FILE, progress=False)
    return dset_dir


@pytest.fixture
def server(tmp_path):
    """A real visdom server on a free localhost port (test_visdom.Server), stopped afterwards."""
    pytest.importorskip("visdom", reason="visdom is not installed (see requirements-visdom.txt)")
    from test_visdom import Server

    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def assert_equal(a, b, where: str = "checkpoint") -> None:
    """Nested dicts, lists and tensors equal bit for bit (tensors with torch.equal); names the first difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def one_thread():
    """One torch thread for the test: bit-for-bit comparisons, and in-process runs timed as subprocesses are."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinySprites:
    """A dSprites-like data set of 60 images with factors: a square of 3 sizes at 4 × 5 positions. The same
    interface as dataset.DSprites (uint8 images, latents_classes with a leading colour column)."""

    nc, scale, has_factors = 1, 1.0, True
    factor_names, factor_sizes = ("size", "posX", "posY"), (3, 4, 5)

    def __init__(self):
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in self.factor_sizes], indexing="ij"), -1).reshape(-1, 3)
        self.latents_classes = np.concatenate([np.zeros((len(grid), 1), np.int64), grid], axis=1)
        self.images = torch.zeros(len(grid), 1, 64, 64, dtype=torch.uint8)
        for i, (size, x, y) in enumerate(grid):
            side, top, left = 4 + 4 * size, 6 + 11 * y, 6 + 11 * x
            self.images[i, 0, top:top + side, left:left + side] = 1
        self.strides = np.array([20, 5, 1])
        self.got = 0  # images handed out by get()

    def __len__(self):
        return len(self.images)

    def get(self, indices):
        self.got += len(indices)
        return self.images[torch.as_tensor(indices)]

    def sample_factors(self, n, rng):
        return np.stack([rng.randint(s, size=n) for s in self.factor_sizes], axis=1).astype(np.int64)

    def indices_for_factors(self, factors):
        return torch.from_numpy(np.asarray(factors, dtype=np.int64) @ self.strides)
