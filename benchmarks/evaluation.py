"""Encoding speed of the evaluation: the dense encoder against SparseEncoder, on the same dSprites batches.

    python eval_bench.py                          # this CPU as it is
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python eval_bench.py   # as on an AVX2-only CPU

The disentanglement protocol encodes every one of dSprites' 737,280 images once (evaluate.CodeCache), in
dataset order and batches of 1,024, several batches at once in threads with one torch thread each
(evaluate.map_batches). This script times that on `--batches` batches spread over the dataset: images/s
of the dense encoder (the model's own encode, channels-last) and of SparseEncoder, in fp32, and in bf16
autocast where the CPU runs bf16 natively, each both one batch at a time with all torch threads
("sequential") and as the evaluation runs it ("threaded"). Rounds are interleaved, so that other load on
the machine hits every encoder alike; each speed is the median over rounds, and each ratio the median of
the per-round ratios to the sequential dense fp32 encoder of the same round. It also prints the largest
difference between the sparse and the dense codes (float rounding, ~1e-6).
"""

import argparse
import copy
import importlib.util
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dataset import DATASETS, load_dataset
from evaluation.evaluate import map_batches
from evaluation.sparse_encoder import SparseEncoder
from model import MODELS, build_model


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def native_bf16() -> tuple[bool, str]:
    """Whether bf16 runs natively here, and why (the rule --precision auto follows)."""
    from hardware import precision
    return precision.cpu_native_bf16(precision.cpu_facts())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dset_dir", default="data", help="folder holding dSprites (generated there when missing)")
    p.add_argument("--model", default="B", choices=sorted(MODELS))
    p.add_argument("--checkpoint", default=None, help="a checkpoint to take the weights from (default: random weights)")
    p.add_argument("--batches", type=int, default=12, help="batches timed per encoder and round")
    p.add_argument("--batch_size", type=int, default=1024, help="the evaluation's batch size")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--baseline_sparse", default=None,
                   help="another sparse_encoder.py to time beside this one, e.g. an earlier version from "
                        "`git show <commit>:sparse_encoder.py > /tmp/old_sparse_encoder.py`")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    native, why = native_bf16()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
          f" (ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}); "
          f"{torch.get_num_threads()} torch threads (threaded: as many batches at once, one torch thread each)")
    print(f"bf16 native: {'yes' if native else 'no'} ({why})")

    data = load_dataset(DATASETS["dsprites"], args.dset_dir)
    torch.manual_seed(0)
    model = build_model(args.model, 10, 1)
    if args.checkpoint:
        from storage.checkpoint import load_checkpoint
        model.load_state_dict(load_checkpoint(Path(args.checkpoint))["model_states"]["net"])
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    sparse = SparseEncoder(model)
    starts = torch.linspace(0, len(data) - args.batch_size, args.batches).long().tolist()
    batches = [data.get(torch.arange(s, s + args.batch_size)) for s in starts]  # uint8, as CodeCache reads them

    def dense(images):
        with torch.no_grad():
            return model.encode(images.float().contiguous(memory_format=torch.channels_last))[0]

    precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if native else [])
    kinds = [("dense", dense), ("sparse", sparse)]
    if args.baseline_sparse:
        spec = importlib.util.spec_from_file_location("baseline_sparse_encoder", args.baseline_sparse)
        baseline_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline_module)
        kinds.append(("baseline", baseline_module.SparseEncoder(model)))
    encoders = {f"{kind} {name}": (fn, dtype) for name, dtype in precisions for kind, fn in kinds}
    with torch.no_grad():
        for name, dtype in precisions:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                gap = max(float((sparse(b) - dense(b).float()).abs().max()) for b in batches)
            print(f"largest |sparse - dense| code difference, {name}: {gap:.2g}")

    modes = {"sequential": lambda fn, batches: list(map(fn, batches)),
             "threaded": lambda fn, batches: list(map_batches(fn, batches, torch.device("cpu")))}
    runs = {f"{name} {mode}": (fn, dtype, run) for name, (fn, dtype) in encoders.items() for mode, run in modes.items()}
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds + 1):  # the first round warms up (oneDNN primitives, numba, tables)
        for name, (fn, dtype, run) in runs.items():

            def encode(images, fn=fn, dtype=dtype):  # autocast and no_grad hold per thread
                with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    return fn(images)

            start = time.perf_counter()
            run(encode, batches)
            speeds[name].append(len(batches) * args.batch_size / (time.perf_counter() - start))
    images = len(batches) * args.batch_size
    print(f"\n{images:,} images ({args.batches} batches of {args.batch_size:,} in dataset order), "
          f"{args.rounds} rounds, model {args.model}")
    print(f"{'encoder':<24} {'images/s':>10} {'range':>19}  {'× dense fp32 sequential':>23}")
    baseline = speeds["dense fp32 sequential"][1:]
    for name, values in speeds.items():
        values = values[1:]
        ratio = statistics.median(v / b for v, b in zip(values, baseline, strict=True))
        print(f"{name:<24} {statistics.median(values):>10,.0f} {min(values):>9,.0f}–{max(values):<9,.0f}"
              f"  {ratio:>22.2f}×")
    pairs = [("sparse bf16 threaded", "sparse fp32 threaded"), ("sparse fp32 threaded", "sparse fp32 sequential")]
    pairs += [(f"sparse {p} {m}", f"baseline {p} sequential") for p, _ in precisions for m in modes]
    for other, name in pairs:
        if other in speeds and name in speeds:
            ratio = statistics.median(a / b for a, b in zip(speeds[other][1:], speeds[name][1:], strict=True))
            print(f"{other} / {name}: {ratio:.2f}×")
    full = len(data) / statistics.median(speeds["sparse fp32 threaded"][1:])
    print(f"all {len(data):,} dSprites images at the sparse fp32 threaded speed: {full:.1f} s")


if __name__ == "__main__":
    main()
