"""Sizes that would exhaust memory: checked before the first iteration, so a run fails in seconds, not hours.

Estimates, measured on CPU in fp32 (`--model H` and `B`, one channel): a training step holds about
0.75 MiB of activations and gradients per image of the batch (counted here as 1 MiB), and the
networks with their gradients and Adam moments about 12 KiB per latent (the 256 -> 2·z_dim
encoder head and the z_dim -> 256 decoder input, four copies of each weight). An evaluation keeps a
code and a log-variance for every image of the dataset, in host memory, at any --eval_scale (its
cache is allocated whole): 8 bytes per image and latent. A size whose estimate exceeds the memory
available is an error;
one above half of it, or an evaluation over 100 latents (its time grows with z_dim: DCI's trees
and the latent report go over every latent), is a warning with the estimate.
"""

from pathlib import Path

import torch

MIB = 2**20
TRAIN_BYTES_PER_IMAGE = MIB
BYTES_PER_LATENT = 12 * 2**10
EVAL_BYTES_PER_CODE = 8  # fp32 code and fp32 log-variance
MANY_LATENTS = 100


class SizeError(Exception):
    """A size that cannot fit in memory; the message names the flag, the estimate and what to do."""


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes this process can still allocate on `device` (None: the host's memory; unknown: None)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 2**10)
    except OSError:
        pass
    try:  # a container's own limit (cgroup v2), lower than the machine's
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            limits.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_sizes(args, images: int, available: int | None, host: int | None = None) -> list[str]:
    """Raise SizeError for sizes that cannot fit; return warnings for the risky ones.

    images: the whole dataset's (an evaluation scores a --subset on all of it). available: the bytes free
    where training runs (the GPU's, or the host's); host: the host's, where evaluation keeps its codes
    (default: available)."""
    warnings = []
    train = args.batch_size * TRAIN_BYTES_PER_IMAGE + args.z_dim * BYTES_PER_LATENT if args.train else 0
    evaluate = images * args.z_dim * EVAL_BYTES_PER_CODE if args.eval_metrics or args.eval_step else 0
    host = available if host is None else host
    for need, free, what, fix in (
            (train, available, f"training at --batch_size {args.batch_size} and --z_dim {args.z_dim}",
             "lower --batch_size (or --z_dim)"),
            (evaluate, host, f"evaluation's codes ({images:,} images × --z_dim {args.z_dim} × 8 bytes)",
             "lower --z_dim, or leave out --eval_metrics/--eval_step")):
        if free is None:
            continue
        if need > free:
            raise SizeError(f"{what} needs about {_gb(need)} of memory, and {_gb(free)} is available; {fix}. "
                            "Nothing was trained or written.")
        if need > free / 2:
            warnings.append(f"{what} needs about {_gb(need)} of the {_gb(free)} of memory available.")
    if evaluate and args.z_dim > MANY_LATENTS:
        warnings.append(f"--z_dim {args.z_dim}: each evaluation holds about {_gb(evaluate)} of codes, and its time "
                        "grows with z_dim (DCI's trees and the latent report go over every latent; --z_dim 1000 "
                        "took minutes at --eval_scale 0.02 on 2 cores).")
    return warnings


def is_out_of_memory(err: BaseException) -> bool:
    """Whether err is an allocation that failed: torch's (CPU or GPU) or Python's own."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def memory_advice(args) -> str:
    return (f"out of memory at --batch_size {args.batch_size} and --z_dim {args.z_dim}; lower --batch_size (or "
            "--z_dim) and run the same command again: training resumes from the last checkpoint, if one was saved")

