"""Training throughput and memory: this pipeline against the reference's, on the same machine.

    python bench.py                      # dSprites B (ours and the reference pipeline), CelebA-shaped H
    python bench.py --configs ref-B,B,B:fp32,B:compile --iters 100
    python bench.py --threads 1 --rounds 3   # a shared machine: one thread each, median of 3 rounds
    python bench.py --quick              # a smoke test: a few iterations on small generated data

Every configuration runs in its own Python process, so its peak resident memory is its own
and one configuration's caches cannot help or hurt another. Each process trains for
`--warmup` iterations (timed apart: it includes one-off costs such as torch.compile), then for
`--iters` timed iterations, and reports:

- it/s and images/s over the timed iterations;
- GFLOP/s: FLOPs of one training step (forward + backward, counted by
  torch.utils.flop_counter.FlopCounterMode) times it/s;
- peak RSS: the process's resident high-water mark (ru_maxrss), data loading included;
- page faults/it: minor page faults per timed iteration. Thousands mean the C allocator hands
  the step's large tensors back to the OS and maps them again every step, which costs time;
- data wait: the share of the timed wall time spent waiting for the next batch.

Configurations (`NAME[:option+option...]`). Options fp32, bf16, nchw, channels_last, compile
override main.py's defaults for B and H (default precision: auto); `unfused` uses Adam's
per-tensor step instead of the fused one; `torchconv` runs the transposed convs as torch.nn's
instead of fast_conv's. A cap runs the configuration, ref-B included, with the instruction set
capped as on another kind of CPU, and its ratio is to ref-B under the same cap:
`avx2` as on an AVX2-only CPU (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2); `avx512bf16` as on a CPU with AVX512-BF16 but no AMX, such as AMD
Zen 4 and 5 or Intel Cooper Lake (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16: oneDNN without AMX).
- `ref-B`: the reference pipeline (1Konny/Beta-VAE) on the same model B, batch and machine:
  a float32 (N, 1, 64, 64) tensor of dSprites images, a DataLoader with batch_size=64,
  shuffle=True, num_workers=2, pin_memory, drop_last=True indexing one image at a time,
  fp32 everywhere, the reference's loss and step.
- `B`: this pipeline on dSprites, objective and model B (main.py's build_solver and
  Solver.train_step, bit-packed images gathered by index; main.py's defaults unless options say).
- `H`: this pipeline on a CelebA-shaped folder (generated random 64×64 RGB JPEGs, decoded by
  the usual DataLoader workers), objective and model H.

For each instruction-set setting used (native, and each cap a configuration names), the
bench first prints what it runs on: the CPU model, the instruction set torch's kernels use,
oneDNN's cap, the threads, whether bf16 is native (what --precision auto decides), and the fp32
matrix-product peak (a 2048×2048 product, median of 5): the ceiling that a training step's
GFLOP/s is compared with in the `% peak` column.

    python bench.py --configs ref-B,B,ref-B:avx512bf16,B:avx512bf16,ref-B:avx2,B:avx2   # three CPU kinds

`--layers` times, instead, each transposed conv of the decoders alone, forward and backward at
batch 64 under the precision `auto` picks, as torch.nn's layer and as fast_conv's, natively and
under the AVX2 cap: the figures behind fast_conv's kernel choices.

    python bench.py --layers
"""

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import main as train_main
from dataset import DATASETS, batches, ensure_dsprites
from hardware import fast_conv
from methods.losses import Objective, kl_divergence, reconstruction_loss
from model import build_model
from utils import autocast, cpu_model, keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]  # the repository
RESULT_TAG = "BENCH_RESULT "
BATCH = 64
FULL_DSPRITES = 737_280
FULL_FLOAT32_GIB = FULL_DSPRITES * 64 * 64 * 4 / 2**30  # the reference's in-memory copy: 11.25 GiB
# Options map to main.py flags; what is not named keeps main.py's default.
OPTIONS = {"fp32": ["--precision", "fp32"], "bf16": ["--precision", "bf16"], "nchw": ["--channels_last", "False"],
           "channels_last": ["--channels_last", "True"], "compile": ["--compile", "True"]}
# Other kinds of CPU, emulated on this one by capping the instruction sets the libraries may use.
CAPS = {
    # AVX2 only: oneDNN (convolutions), ATen (torch's own kernels) and MKL (fp32 matrix products).
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    # AVX-512 with AVX512-BF16 and no AMX (AMD Zen 4/5, Intel Cooper Lake): oneDNN stops below AMX.
    "avx512bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
}
BENCH_OPTIONS = ("unfused", "torchconv", *CAPS)  # handled by the bench itself, not by main.py flags
COLUMNS = ("config", "device", "options", "it/s", "images/s", "GFLOP/step", "GFLOP/s", "% peak", "peak RSS",
           "page faults/it", "data wait", "warm-up s", "× ref")


@dataclass
class Job:
    """What one worker process measures; sent to it as JSON."""

    config: str  # ref-B, B or H
    options: list[str]
    device: str
    iters: int
    warmup: int
    dset_dir: str  # holds dsprites-dataset/... and CelebA/
    ref_subset: int  # images in the reference's float32 tensor
    workdir: str  # scratch space for the run's outputs and checkpoints
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0: torch's default


# --------------------------------------------------------------------------- the worker side


def peak_rss_mib() -> float:
    """This process's resident high-water mark (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_loop(step, warmup: int, iters: int, sync) -> dict:
    """Run `step` (returns seconds spent waiting for data) warmup + iters times; time the last iters."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - start
    waited = 0.0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(iters):
        waited += step()
    sync()
    elapsed = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"it_s": iters / elapsed, "data_wait": waited / elapsed, "warmup_s": warm, "faults": faults / iters}


def count_step_flops(step) -> int:
    """FLOPs of one training step (forward + backward, as torch's flop counter sees them): step() runs one."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def run_ours(job: Job) -> dict:
    """Train with main.py's own objects: the same data path, model preparation and train_step."""
    dataset, model = ("dsprites", "B") if job.config == "B" else ("celeba", "H")
    argv = ["--dataset", dataset, "--dset_dir", job.dset_dir, "--model", model, "--objective", model,
            "--batch_size", str(BATCH), "--cuda", str(job.device == "cuda"), "--seed", str(job.seed),
            "--viz_on", "False", "--save_output", "False", "--viz_name", "bench",
            "--output_dir", f"{job.workdir}/outputs", "--ckpt_dir", f"{job.workdir}/checkpoints"]
    for option in job.options:
        argv += OPTIONS.get(option, [])
    args = train_main.parse_args(argv)
    solver = train_main.build_solver(args)
    if "unfused" in job.options:  # the per-tensor Adam step, for comparing with the fused default
        fused = solver.method.optimizers["optim"]
        solver.method.optimizers["optim"] = torch.optim.Adam(fused.param_groups[0]["params"], lr=args.lr,
                                                              betas=(args.beta1, args.beta2), fused=False)
    if "torchconv" in job.options:  # torch.nn's transposed-conv kernels, for comparing with fast_conv's
        layers = [m for net in solver.method.networks.values() for m in net.modules()]
        for layer in (m for m in layers if isinstance(m, fast_conv.ConvTranspose2d)):
            layer.forward = functools.partial(nn.ConvTranspose2d.forward, layer)
    stream = batches(solver.data, solver.order, 1, solver.device, solver.num_workers)

    # The body of Solver.train without its periodic actions (pictures, checkpoints), which
    # run every thousands of iterations and are not part of the per-step cost.
    def step() -> float:
        start = time.perf_counter()
        x = next(stream)
        waited = time.perf_counter() - start
        solver.step += 1
        solver.train_step(x)
        return waited

    result = time_loop(step, job.warmup, job.iters, device_sync(solver.device))
    x = next(stream)
    result["flops"] = count_step_flops(lambda: solver.method.train_step(x, solver.step + 1))
    precision = solver.checkpointer.config["precision_used"]
    result["options"] = "+".join([precision] + ["channels_last"] * args.channels_last + ["compile"] * args.compile
                                 + ["unfused"] * ("unfused" in job.options)
                                 + ["torch.nn convT"] * ("torchconv" in job.options)
                                 + [f"{cap_of(job.options)} cap"] * bool(cap_of(job.options)))
    stream.close()
    return result


class FloatImages:
    """The reference's CustomTensorDataset: one float32 image per __getitem__."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, index):
        return self.images[index]

    def __len__(self) -> int:
        return self.images.shape[0]


def run_reference(job: Job) -> dict:
    """The reference's pipeline and step, on our model B: float32 tensor, DataLoader, fp32."""
    torch.manual_seed(job.seed)
    device = torch.device(job.device)
    # The reference's loading code, np.load then a float32 tensor, converting only the subset: the
    # way it reads the file also sets up the allocator its training steps then run with.
    imgs = np.load(DATASETS["dsprites"].path(job.dset_dir), encoding="bytes")["imgs"]  # (N, 64, 64) uint8
    subset = torch.randperm(len(imgs))[: job.ref_subset].numpy()
    images = torch.from_numpy(imgs[subset]).unsqueeze(1).float()  # (n, 1, 64, 64) float32
    del imgs
    loader = torch.utils.data.DataLoader(FloatImages(images), batch_size=BATCH, shuffle=True, num_workers=2,
                                         pin_memory=device.type == "cuda",  # pinning is a no-op without a GPU
                                         drop_last=True)
    model = build_model("B", 10, 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))
    objective = Objective("B", gamma=1000, C_max=25, C_stop_iter=1e5)
    batches_ = iter(loader)
    count = [0]

    def step() -> float:
        start = time.perf_counter()
        x = next(batches_).to(device)
        waited = time.perf_counter() - start
        count[0] += 1
        x_recon, mu, logvar = model(x)
        recon = reconstruction_loss(x, x_recon, "bernoulli")
        total_kld, _, _ = kl_divergence(mu, logvar)
        loss = objective(recon, total_kld, count[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return waited

    result = time_loop(step, job.warmup, job.iters, device_sync(device))
    result["flops"] = count_step_flops(step)
    result["options"] = "fp32, DataLoader×2" + (f", {cap_of(job.options)} cap" if cap_of(job.options) else "")
    result["images"] = len(images)
    return result


# The decoders' transposed convs (C_in, C_out, input side): model B's four on dSprites, then the
# last layer of H (and of every model) on colour images.
DECODER_LAYERS = [(32, 32, 4), (32, 32, 8), (32, 32, 16), (32, 1, 32), (32, 3, 32)]


def time_layer(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, dtype, calls: int) -> tuple[float, float]:
    """Seconds per forward and per backward of `layer` on x, over `calls` calls, under autocast to `dtype`."""
    forward_s = backward_s = 0.0
    for _ in range(calls):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            y = layer(x)
        middle = time.perf_counter()
        y.backward(grad.to(y.dtype))
        backward_s += time.perf_counter() - middle
        forward_s += middle - start
    return forward_s / calls, backward_s / calls


def time_layers(job: Job) -> dict:
    """{"precision": ..., "layers": [[label, nn fwd ms, ours fwd ms, nn bwd ms, ours bwd ms], ...]}.

    Each figure is the median of 4 rounds of `job.iters` calls, torch.nn's layer and ours alternating
    round by round, after a warm-up round."""
    from hardware import precision

    keep_freed_memory()  # as in training (main.build_solver)
    choice = precision.choose("auto", torch.device("cpu"))
    torch.manual_seed(job.seed)
    rows = []
    for c_in, c_out, side in DECODER_LAYERS:
        ours = fast_conv.ConvTranspose2d(c_in, c_out, 4, 2, 1).to(memory_format=torch.channels_last)
        theirs = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1).to(memory_format=torch.channels_last)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(BATCH, c_in, side, side).to(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(BATCH, c_out, 2 * side, 2 * side).to(memory_format=torch.channels_last)
        times = {"nn": [], "ours": []}
        for round_ in range(5):
            for name, layer in (("nn", theirs), ("ours", ours)):
                timed = time_layer(layer, x, grad, choice.dtype, job.iters if round_ else 2)
                if round_:  # round 0 warms up
                    times[name].append(timed)
        median = {name: sorted(t, key=sum)[len(t) // 2] for name, t in times.items()}
        rows.append([f"{c_in} -> {c_out}, {side}×{side} -> {2 * side}×{2 * side}"]
                    + [1000 * median[name][part] for part in (0, 1) for name in ("nn", "ours")])
    return {"precision": choice.name, "layers": rows}


def report_layers(args, scratch: str) -> None:
    """Print the per-layer table, natively and under the AVX2 cap."""
    print("| layer (C_in -> C_out, size) | CPU | precision | torch.nn forward | ours | torch.nn backward | ours "
          "| × (forward + backward) |")
    print("|---|---|---|---|---|---|---|---|")
    for options in ([], ["avx2"]):
        job = Job("layers", options, "cpu", args.iters, 0, "", 0, tempfile.mkdtemp(dir=scratch), threads=args.threads)
        result = run_worker(job)
        for label, nn_fwd, our_fwd, nn_bwd, our_bwd in result["layers"]:
            ratio = (nn_fwd + nn_bwd) / (our_fwd + our_bwd)
            print(f"| {label} | {'AVX2 cap' if options else 'native'} | {result['precision']} | {nn_fwd:.2f} ms "
                  f"| {our_fwd:.2f} ms | {nn_bwd:.2f} ms | {our_bwd:.2f} ms | {ratio:.2f}× |")
    print(f"\n- Batch {BATCH}, channels_last; each figure is the median of 4 rounds of {args.iters} calls.")
    print(f"- Machine: {machine(args.threads)}.")


def device_sync(device):
    """A function that waits for the device's queued work (timing GPU work needs it)."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def fp32_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an fp32 size×size matrix product, median of `repeats`: this machine's practical ceiling."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / sorted(times)[repeats // 2] / 1e9


def hardware(threads: int) -> dict:
    """What this process runs on, as --precision auto sees it (a worker reports it under its own caps)."""
    from hardware import precision

    native, why = precision.native_bf16(torch.device("cpu"))
    return {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"), "threads": threads or torch.get_num_threads(),
            "native_bf16": native, "why": why, "fp32_peak_gflops": fp32_matmul_peak()}


def worker(job: Job) -> None:
    if job.threads:
        torch.set_num_threads(job.threads)
    if job.config == "hardware":
        print(RESULT_TAG + json.dumps(hardware(job.threads)), flush=True)
        return
    if job.config == "layers":
        print(RESULT_TAG + json.dumps(time_layers(job)), flush=True)
        return
    run = run_reference if job.config == "ref-B" else run_ours
    result = run(job)
    result["peak_rss_mib"] = peak_rss_mib()
    if job.device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- the parent side


def write_small_dsprites(path: Path, n: int, seed: int = 0) -> None:
    """A dSprites-format file of n random squares: per-step cost does not depend on N or content."""
    rng = np.random.RandomState(seed)
    imgs = np.zeros((n, 64, 64), np.uint8)
    for i in range(n):
        x, y, s = rng.randint(0, 48, size=2).tolist() + [int(rng.randint(4, 16))]
        imgs[i, y : y + s, x : x + s] = 1
    classes = np.zeros((n, 6), np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=classes.astype(np.float64))


def write_jpeg_folder(folder: Path, n: int, seed: int = 0) -> None:
    """n random-noise 64×64 RGB JPEGs: CelebA's shape, and a decode cost at least as high as faces'."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        pixels = rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def prepare_data(args, scratch: Path) -> tuple[str, list[str]]:
    """A --dset_dir holding a dSprites file and a CelebA-shaped folder; returns it and table notes."""
    dset_dir = scratch / "data"
    dsprites = DATASETS["dsprites"].relpath
    full = Path(args.dset_dir) / dsprites
    if args.quick:
        write_small_dsprites(dset_dir / dsprites, 2048)
        notes = ["dSprites: a generated 2,048-image file (--quick); peak RSS is not the full-data figure."]
    else:
        ensure_dsprites(full)  # generates the file the first time, as a training run would
        (dset_dir / dsprites).parent.mkdir(parents=True)
        (dset_dir / dsprites).symlink_to(full.resolve())
        notes = [f"dSprites: the full {FULL_DSPRITES:,}-image file ({full}), loaded as training loads it."]
    write_jpeg_folder(dset_dir / "CelebA" / "img_align_celeba", 256 if args.quick else 1024)
    notes.append("H: a folder of random 64×64 RGB JPEGs in CelebA's layout, decoded by 2 DataLoader workers.")
    return str(dset_dir), notes


def run_worker(job: Job) -> dict:
    """Run one configuration in a fresh process and return its result."""
    command = [sys.executable, "-m", "benchmarks.training", "--worker", json.dumps(asdict(job))]
    env = dict(os.environ, **CAPS.get(cap_of(job.options), {}))
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"{job.config} on {job.device} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def parse_configs(text: str) -> list[tuple[str, list[str]]]:
    """'ref-B,B:fp32+compile' -> [('ref-B', []), ('B', ['fp32', 'compile'])] (an argparse type)."""
    configs = []
    for item in filter(None, text.split(",")):
        name, _, options = item.partition(":")
        chosen = [o for o in options.split("+") if o]
        allowed = tuple(CAPS) if name == "ref-B" else (*OPTIONS, *BENCH_OPTIONS)
        if name not in ("ref-B", "B", "H") or any(o not in allowed for o in chosen) or \
                sum(o in CAPS for o in chosen) > 1:
            raise argparse.ArgumentTypeError(
                f"bad config {item!r}: use ref-B (options: one of {', '.join(CAPS)}), or B or H with options from "
                f"{', '.join((*OPTIONS, *BENCH_OPTIONS))}, at most one cap")
        configs.append((name, chosen))
    return configs


def cap_of(options: list[str] | str) -> str:
    """The cap a configuration runs under ('avx2', 'avx512bf16'), '' for native."""
    chosen = options.split("+") if isinstance(options, str) else options
    return next((o for o in chosen if o in CAPS), "")


def format_row(config: str, device: str, r: dict, ref_it_s: float | None, peak: float | None) -> list[str]:
    gflop = r["flops"] / 1e9
    memory = f"{r['peak_rss_mib']:,.0f} MiB"
    if "peak_gpu_mib" in r:
        memory += f" (GPU {r['peak_gpu_mib']:,.0f} MiB)"
    if config.startswith("ref-"):
        memory += " ‡"
    ratio = f"{r['it_s'] / ref_it_s:.2f}×" if ref_it_s and config.split(":")[0] == "B" else "–"
    share = f"{100 * gflop * r['it_s'] / peak:.0f}%" if peak and device == "cpu" else "–"
    return [config, device, r["options"], f"{r['it_s']:.2f}", f"{r['it_s'] * BATCH:,.0f}", f"{gflop:.2f}",
            f"{gflop * r['it_s']:.1f}", share, memory, f"{r['faults']:,.0f}", f"{100 * r['data_wait']:.1f}%",
            f"{r['warmup_s']:.1f}", ratio]


def print_table(rows: list[list[str]], notes: list[str]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for note in notes:
        print(f"- {note}")


def machine(threads: int) -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    threads = threads or torch.get_num_threads()
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs{gpu}; torch {torch.__version__}, torch threads: {threads}"


def describe_hardware(cap: str, h: dict) -> str:
    setting = f"capped to {cap} (" + " ".join(f"{k}={v}" for k, v in CAPS[cap].items()) + ")" if cap else "native"
    return (f"CPU {setting}: {h['cpu']}; torch kernels {h['capability']}, oneDNN cap {h['onednn_cap']}; "
            f"{h['threads']} threads; native bf16: {'yes' if h['native_bf16'] else 'no'} ({h['why']}); "
            f"fp32 matrix-product peak {h['fp32_peak_gflops']:.1f} GFLOP/s.")


class BenchHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as the description (it lists the configurations), and every default shown."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=BenchHelpFormatter)
    p.add_argument("--iters", type=int, default=60, help="timed iterations per configuration")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first (compilation happens here)")
    p.add_argument("--configs", default="ref-B,B,H", type=parse_configs,
                   help="comma-separated NAME[:option+option]; see above")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every configuration this many times, interleaved, and report the median")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: the CPU, and the GPU too when one is available")
    p.add_argument("--dset_dir", default="data", help="where the full dSprites file is (generated when missing)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in every configuration (default: torch's choice, one per core)")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 iterations after 1, on small generated data")
    p.add_argument("--layers", action="store_true",
                   help="time the decoders' transposed convs alone, torch.nn's and fast_conv's (see above)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def measure_hardware(args, configs, scratch: str) -> dict[str, dict]:
    """{cap: hardware facts} for each instruction-set setting the configurations use."""
    caps = sorted({cap_of(options) for _, options in configs})
    return {cap: run_worker(Job("hardware", [cap] if cap else [], "cpu", 0, 0, "", 0,
                                tempfile.mkdtemp(dir=scratch), threads=args.threads)) for cap in caps}


def measure(args, configs, devices: list[str], dset_dir: str, scratch: str, ref_subset: int) -> dict:
    """{(label, device): [result per round]}; each round runs every configuration once, in order,
    so a slow spell on a shared machine hits all of them rather than one."""
    results: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        for device in devices:
            for name, options in configs:
                label = name + (":" + "+".join(options) if options else "")
                print(f"round {round_ + 1}/{args.rounds}: {label} on {device} ...", file=sys.stderr, flush=True)
                job = Job(name, options, device, args.iters, args.warmup, dset_dir, ref_subset,
                          tempfile.mkdtemp(dir=scratch), threads=args.threads)
                results.setdefault((label, device), []).append(run_worker(job))
    return results


def median_round(rounds: list[dict]) -> dict:
    """The round with the median it/s (the lower one of an even count): all its figures together."""
    return sorted(rounds, key=lambda r: r["it_s"])[(len(rounds) - 1) // 2]


def report(results: dict, hardware_by_cap: dict, args, notes: list[str]) -> None:
    """Print the machine, the table (each configuration's median round), its notes and the ratios to
    ref-B measured under the same instruction-set cap."""
    for cap, facts in hardware_by_cap.items():
        print(describe_hardware(cap, facts))
    print()
    rows, ratios = [], []
    for (label, device), rounds in results.items():
        result = median_round(rounds)
        cap = cap_of(label.partition(":")[2])
        ref = results.get((f"ref-B:{cap}" if cap else "ref-B", device))
        ref_it_s = median_round(ref)["it_s"] if ref else None
        peak = hardware_by_cap.get(cap, {}).get("fp32_peak_gflops")
        rows.append(format_row(label, device, result, ref_it_s, peak))
        if ref_it_s and label.split(":")[0] == "B":
            share = (f", {100 * result['flops'] / 1e9 * result['it_s'] / peak:.0f}% of the fp32 matrix-product "
                     f"peak" if peak and device == "cpu" else "")
            # Each round runs ours right after the reference, so a round's ratio sees one spell of the machine.
            per_round = sorted(r["it_s"] / q["it_s"] for r, q in zip(rounds, ref, strict=False))
            paired = (f"; the median of the {len(per_round)} rounds' own ratios is "
                      f"{per_round[(len(per_round) - 1) // 2]:.2f}×" if len(per_round) > 1 else "")
            ratios.append(f"dSprites B on {device} ({label}: {result['options']}): "
                          f"{result['it_s'] / ref_it_s:.2f}× the reference pipeline's it/s "
                          f"({result['it_s']:.2f} vs {ref_it_s:.2f}){share}{paired}.")
    notes.append(f"Batch {BATCH}; {args.iters} timed iterations after {args.warmup} of warm-up; warm-up s includes "
                 "one-off costs such as torch.compile."
                 + (f" Each row is the median-it/s round of {args.rounds}." if args.rounds > 1 else ""))
    if args.rounds > 1:  # the spread behind each median: a shared machine's noise, shown rather than hidden
        notes.append("it/s of every round: " + "; ".join(
            f"{label}{'' if device == 'cpu' else f' ({device})'} "
            + ", ".join(f"{r['it_s']:.2f}" for r in rounds) for (label, device), rounds in results.items()) + ".")
    held = [r["images"] for (label, _), rounds in results.items() if label == "ref-B" for r in rounds]
    if held:
        notes.append(f"‡ ref-B held a random {held[0]:,}-image subset as float32 (per-iteration cost does not depend "
                     f"on N); the reference's full-data float32 copy is {FULL_DSPRITES:,}×4096×4 B = "
                     f"{FULL_FLOAT32_GIB:.2f} GiB.")
    notes.append(f"Machine: {machine(args.threads)}.")
    print_table(rows, notes)
    for line in ratios:
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch sees no GPU")
    if args.worker:
        worker(Job(**json.loads(args.worker)))
        return 0
    if args.quick:
        args.iters, args.warmup = 3, 1
    if args.layers:
        with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
            report_layers(args, scratch)
        return 0
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
               "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    # One epoch of the reference's shuffled loader covers the whole run, as its 11,520-batch
    # epochs over the full data would: no worker restarts inside the timed iterations.
    ref_subset = max(8192, BATCH * (args.warmup + args.iters + 2))
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        dset_dir, notes = prepare_data(args, Path(scratch))
        hardware_by_cap = measure_hardware(args, args.configs, scratch) if "cpu" in devices else {}
        results = measure(args, args.configs, devices, dset_dir, scratch, ref_subset)
    report(results, hardware_by_cap, args, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
