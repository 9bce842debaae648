"""Small helpers shared by the entry point, the solver and the scripts."""

import argparse
import ctypes
import math
import os
import platform
import random
import stat
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

_TRUE = {"yes", "true", "t", "y", "1"}
_FALSE = {"no", "false", "f", "n", "0"}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward-pass precision of --precision: autocast to dtype, or plain fp32 for None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of unmapping them.

    glibc serves a large block with a fresh mmap and unmaps it at free once the block passes a
    threshold that glibc itself moves as the program runs. A training step allocates and frees the
    same activations (8 MiB for a 64×32×32×32 map) every iteration, so whether they stay mapped
    depended on what the process had done before: measured under the AVX2 cap, 0 or 8,000 page
    faults per step, 1.94× or 1.65× the reference pipeline's speed. Fixed thresholds (32 MiB, the
    largest glibc accepts, for mmap; 1 GiB of free heap top before memory goes back to the OS) make
    every run keep its working set. Returns False where the C library is not glibc (nothing changes).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def flush_denormals() -> bool:
    """Make this process's CPU arithmetic treat subnormal floats (below 1.2e-38) as zero, on every torch thread.

    Adam's first moments of units whose gradient has gone to zero decay by beta1 every step into the
    subnormal range, where each multiply-add takes microcode tens of times longer. Resumed from the shipped
    VAE (one thread, AVX-512 without AMX): 5.1 it/s with them, 11.3 flushed, 12.1 for a fresh model; 2.3× under
    the AVX2 cap (`python -m benchmarks.denormals`, docs/performance.md). No value that small changes a loss,
    a step or a score.

    The flag (FTZ and DAZ in the x86 MXCSR register) is per thread; a thread starts with its creator's. Threads
    made from now on inherit it from this one; the OpenMP threads torch has made already get it by running
    torch.set_flush_denormal once in a parallel region of torch's own libgomp. Returns False where the CPU has no
    such mode (nothing changes); where torch's OpenMP runtime is not libgomp (macOS), only threads made from now
    on are covered.
    """
    if not torch.set_flush_denormal(True):
        return False
    try:
        loaded = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                  if "libgomp" in line.rsplit("/", 1)[-1]}
    except OSError:  # no /proc (macOS)
        return True
    if not loaded:
        return True
    # Other wheels (scikit-learn) bring libgomps of their own, with their own threads: torch's first.
    torch_lib = str(Path(torch.__file__).parent / "lib")
    path = min(loaded, key=lambda p: (not p.startswith(torch_lib), p))
    try:
        gomp = ctypes.CDLL(path)  # the loaded library itself: dlopen of a loaded path returns it
    except OSError:
        return True

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def on_each_thread(_data):
        torch.set_flush_denormal(True)

    # GOMP_parallel(fn, data, num_threads, flags): fn runs on the calling thread and num_threads - 1 pool threads.
    threads = max(torch.get_num_threads(), os.cpu_count() or 1)
    gomp.GOMP_parallel(on_each_thread, None, ctypes.c_uint(threads), ctypes.c_uint(0))
    return True


def str2bool(value: str) -> bool:
    """argparse type for the reference's boolean flags (`--train False`, `--viz_on no`)."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (yes/no, true/false, t/f, y/n, 1/0), got {value!r}")


def iter_count(value: str) -> int:
    """argparse type for iteration counts: accepts `1500`, `1e5` and `1.5e6`, returns an int."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of iterations such as 1000 or 1.5e6, got {value!r}") from None
    if not np.isfinite(number) or number != int(number):
        raise argparse.ArgumentTypeError(f"expected a whole number of iterations, got {value!r}")
    return int(number)


def positive(kind):
    """Wrap an argparse type so that zero, negative and non-finite values are rejected."""

    def parse(value: str):
        number = kind(value)
        if not (number > 0 and math.isfinite(number)):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}")
        return number

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(kind):
    """Wrap an argparse type so that negative and non-finite values are rejected."""

    def parse(value: str):
        number = kind(value)
        if not (number >= 0 and math.isfinite(number)):
            raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value!r}")
        return number

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def port_number(value: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value!r}")
    return port


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches (Python, NumPy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(want_cuda: bool) -> torch.device:
    """The one place that chooses the device: CUDA when asked for and present, else CPU."""
    return torch.device("cuda" if want_cuda and torch.cuda.is_available() else "cpu")


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write a file so that readers see either the old or the complete new content.

    `write(fileobj)` fills a temporary file in the same folder; it is flushed and
    fsynced, then renamed over `path` (a rename within one filesystem is atomic).
    On any failure the temporary file is removed and the old `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have, so
        # results stay readable by the group as the umask allows (or keep the mode of the file replaced).
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _mode_for(path: Path) -> int:
    """The permission bits of the file at `path`, or those a new file gets under this process's umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for a moment, in every thread)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temporary files that atomic_write left in `folder` when its process was killed.

    A SIGKILL or power loss mid-write leaves one `.<name>.<random>.tmp` file and never a damaged
    target. Call this only while no other process writes into `folder`; returns how many were removed.
    """
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass  # gone already, or not ours to remove; the next sweep tries again
    return removed


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself; not every platform can open a folder, so it is best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(folder: str | os.PathLike, flag: str) -> None:
    """Create `folder` and prove a file can be written, synced and removed there, before any work is done.

    Raises OSError naming the folder and the flag that chose it.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot write in {folder} ({err.strerror}); check its permissions and free "
                                 f"space, or choose another folder with {flag}") from None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_facts() -> dict:
    """What a run trained on: stored in its config (result cards quote it), not compared on resume."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "torch": str(torch.__version__)}  # a plain str: checkpoints load with weights_only
