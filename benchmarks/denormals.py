"""Training speed of a trained model, with subnormal floats kept and flushed to zero (utils.flush_denormals).

    python -m benchmarks.denormals                                # the shipped VAE and B, three CPU kinds
    python -m benchmarks.denormals --checkpoints pretrained/dsprites_VAE/last --caps native --rounds 3

A fresh model trains at one speed; after some thousands of iterations the same model, on the same
machine, trained at half of it. Adam's first moment of a weight whose gradient has gone to zero
shrinks by beta1 every step, down through the subnormal range, and x86 CPUs take microcode assists on
every multiply-add with a subnormal operand. main.py flushes them (FTZ and DAZ on every torch thread).

For each checkpoint (its weights and Adam state, resumed as a training run resumes them) and each
instruction-set setting, three configurations, each in its own process, train on dSprites batches:
`kept` (torch's default: subnormals computed exactly), `flushed` (what main.py does) and `fresh`
(the same architecture, objective and precision with new weights: the speed before any training).
The checkpoint's count of subnormal values is printed beside it. The caps emulate other kinds of CPU
on this one by limiting the instruction sets oneDNN and ATen use (benchmarks/training.py's CAPS);
they do not emulate another CPU's microcode, whose cost per subnormal differs (AMD's is said to be
smaller): the ratios are this CPU's. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "DENORMALS_RESULT "
VARIANTS = ("kept", "flushed", "fresh")
CAP_NAMES = ("native", "avx512bf16", "avx2")
DEFAULT_CHECKPOINTS = "pretrained/dsprites_VAE/last,pretrained/dsprites_B_gamma100/last"


def count_subnormals(checkpoint: dict) -> tuple[int, int]:
    """(subnormal values, all values) over the float tensors of the weights and the optimiser states."""
    found = total = 0
    stack = [checkpoint.get("model_states", {}), checkpoint.get("optim_states", {})]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif torch.is_tensor(item) and item.is_floating_point():
            # From the bits (exponent 0, mantissa not): float comparisons read subnormals as 0 where the
            # process already flushes them (denormals-are-zero), as every process that trained does.
            bits = item.detach().float().contiguous().view(torch.int32)
            found += int((((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)).sum())
            total += item.numel()
    return found, total


# --------------------------------------------------------------------------- the worker side


def worker(job: dict) -> dict:
    """Train `iters` steps after `warmup` from job's checkpoint (or fresh weights); return it/s."""
    import main as train_main
    from benchmarks.training import time_loop
    from dataset import dataset_spec, load_dataset
    from hardware.precision import PRECISIONS, native_bf16
    from methods import Compute, build_method
    from storage.checkpoint import load_checkpoint, restore
    from utils import flush_denormals, keep_freed_memory

    torch.set_num_threads(job["threads"])
    keep_freed_memory()  # as in training (main.build_solver)
    if job["variant"] == "flushed":
        flush_denormals()
    path = Path(job["checkpoint"])
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    args = argparse.Namespace(**config)
    precision = config["precision_used"]
    if precision == "bf16" and not native_bf16(torch.device("cpu"))[0]:
        precision = "fp32"  # emulated bf16 would time the emulation, as --precision auto never runs it
    method = build_method(args, config["nc"], config["decoder_distribution"],
                          Compute(torch.device("cpu"), PRECISIONS[precision], config["channels_last"]))
    if job["variant"] != "fresh":
        restore(checkpoint, path, method)  # weights, Adam moments and step counts, as a resumed run has them
    data = load_dataset(dataset_spec(train_main.parse_args(["--dataset", "dsprites", "--dset_dir", job["dset_dir"]])),
                        job["dset_dir"])
    generator = torch.Generator().manual_seed(0)
    images = [data.get(torch.randint(len(data), (config["batch_size"],), generator=generator)).float()
              for _ in range(job["warmup"] + job["iters"])]  # (B, 1, 64, 64) each, drawn before timing
    batches = iter(images)
    step = [int(checkpoint["iter"])]

    def train_step() -> float:  # time_loop's step: seconds spent waiting for data (none: drawn already)
        step[0] += 1
        method.train_step(next(batches), step[0])
        return 0.0

    timed = time_loop(train_step, job["warmup"], job["iters"], sync=lambda: None)
    return {"it_s": timed["it_s"], "precision": precision}


# --------------------------------------------------------------------------- the parent side


def run_worker(job: dict) -> dict:
    from benchmarks.training import CAPS

    env = dict(os.environ, **CAPS.get(job["cap"], {}))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.denormals", "--worker", json.dumps(job)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"{job['variant']} {job['checkpoint']} ({job['cap']}) failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-4000:]}")


def parse_caps(text: str) -> list[str]:
    caps = [c for c in text.split(",") if c]
    bad = [c for c in caps if c not in CAP_NAMES]
    if bad or not caps:
        raise argparse.ArgumentTypeError(f"--caps {text!r}: use a comma-separated list from {', '.join(CAP_NAMES)}")
    return caps


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.training import BenchHelpFormatter  # the docstring as description, every default shown

    p = argparse.ArgumentParser(description=__doc__, formatter_class=BenchHelpFormatter)
    p.add_argument("--checkpoints", default=DEFAULT_CHECKPOINTS,
                   help="comma-separated dSprites checkpoints (with their Adam state)")
    p.add_argument("--caps", default=",".join(CAP_NAMES), type=parse_caps,
                   help="instruction-set settings, from native, avx512bf16, avx2")
    p.add_argument("--iters", type=int, default=60, help="timed iterations per configuration")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every configuration this many times, interleaved; report the median")
    p.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    p.add_argument("--dset_dir", default="data", help="where the dSprites file is")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    from dataset import DATASETS, ensure_dsprites
    from storage.checkpoint import CheckpointError, load_checkpoint
    from utils import cpu_model

    checkpoints = [c for c in args.checkpoints.split(",") if c]
    counts = {}
    for path in checkpoints:
        try:
            checkpoint = load_checkpoint(Path(path))
        except (CheckpointError, OSError) as err:
            parser.error(f"--checkpoints: {err}")
        config = checkpoint.get("config") or {}
        if config.get("dataset") != "dsprites" or "optim_states" not in checkpoint:
            parser.error(f"--checkpoints: {path} is not a dSprites training checkpoint with its Adam state "
                         "(config dataset 'dsprites' and optim_states); pick one from pretrained/*/last.")
        counts[path] = (count_subnormals(checkpoint), int(checkpoint["iter"]), config)
    ensure_dsprites(DATASETS["dsprites"].path(args.dset_dir))  # generated the first time, as training would
    results: dict[tuple[str, str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        for path in checkpoints:
            for cap in args.caps:
                for variant in VARIANTS:
                    print(f"round {round_ + 1}/{args.rounds}: {path} {cap} {variant} ...", file=sys.stderr, flush=True)
                    job = {"checkpoint": path, "cap": "" if cap == "native" else cap, "variant": variant,
                           "iters": args.iters, "warmup": args.warmup, "threads": args.threads,
                           "dset_dir": args.dset_dir}
                    results.setdefault((path, cap, variant), []).append(run_worker(job))
    median = {key: sorted(r["it_s"] for r in v)[(len(v) - 1) // 2] for key, v in results.items()}
    print("| checkpoint | iteration | subnormal values | CPU | kept it/s | flushed it/s | fresh it/s "
          "| flushed / kept | flushed / fresh |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in checkpoints:
        (found, total), iteration, config = counts[path]
        for cap in args.caps:
            kept, flushed, fresh = (median[(path, cap, v)] for v in VARIANTS)
            precision = results[(path, cap, "kept")][0]["precision"]
            print(f"| {path} ({config['objective']}, model {config['model']}, {precision}) "
                  f"| {iteration:,} | {found:,} of {total:,} | {cap} | {kept:.2f} | {flushed:.2f} | {fresh:.2f} "
                  f"| {flushed / kept:.2f}× | {flushed / fresh:.2f}× |")
    print(f"\n- Batch of the checkpoint's run; {args.iters} timed iterations after {args.warmup}; {args.threads} torch "
          f"thread(s); median of {args.rounds} round(s)"
          + (": " + "; ".join(f"{Path(p).parent.name} {c} {v} " + ", ".join(f"{x['it_s']:.2f}" for x in r)
                              for (p, c, v), r in results.items()) if args.rounds > 1 else "") + ".")
    print(f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}. Caps: "
          "avx512bf16 = oneDNN without AMX; avx2 = oneDNN, ATen and MKL at AVX2 (benchmarks/training.py CAPS).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
