"""Two trainings on one machine: their throughput together against one training alone.

    python -m benchmarks.contention                          # every case, natively
    python -m benchmarks.contention --cases alone,pair --seconds 20
    python -m benchmarks.contention --cap avx512bf16         # as on a CPU with AVX512-BF16 and no AMX

torch's OpenMP threads meet at the end of every parallel region, so when two trainings share too few
cores each waits for threads the other has descheduled. This measures what main.py does about it.
Every trainer is its own process running dSprites B the way main.py builds it (build_solver, then
Solver.train_step on batches in the run's order; no pictures or checkpoints). It warms up, then
records the time of every iteration. Cases:

- `alone`: one trainer at main.py's defaults; its it/s is the baseline.
- `pair`: a trainer at the defaults; once it is warm, a second one at the defaults. The second
  sees the first's busy cores and takes the free ones, and the first gives threads back when it
  sees the second (hardware/threads.py). The it/s of both is counted over the same window, from
  the second's warm-up to the end, and their sum is given against `alone`.
- `pair:keep`, `alone:keep`: every trainer is given `--threads` equal to torch's default, so none
  adapts: what every run did before.
- `alone:passive`, `pair:passive`, `pair:keep+passive`: the same with OMP_WAIT_POLICY=PASSIVE in
  both (waiting threads sleep instead of spinning), the other remedy there is. Every ratio is to
  `alone`, so `alone:passive` shows what PASSIVE costs a training that has the machine to itself.

The full dSprites file is generated under --dset_dir the first time, as a training run would. Run it
on an otherwise quiet machine; each case takes about `--seconds` plus 20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULT_TAG = "CONTENTION_RESULT "
WARM_TAG = "CONTENTION_WARM"
ROOT = Path(__file__).resolve().parents[1]
WARMUP = 20  # iterations before timing (--warmup): oneDNN builds its kernels on the first ones
CASES = ("alone", "pair", "pair:keep", "alone:keep", "alone:passive", "pair:passive", "pair:keep+passive")


# --------------------------------------------------------------------------- a trainer process


def trainer(job: dict) -> None:
    """Train until `seconds` have passed after warm-up, or until stdin closes; print every iteration's time
    and what the run said about its threads."""
    import torch

    import main as train_main
    from dataset import batches

    argv = ["--dataset", "dsprites", "--dset_dir", job["dset_dir"], "--objective", "B", "--model", "B",
            "--viz_on", "False", "--save_output", "False", "--viz_name", "contention",
            "--output_dir", f"{job['workdir']}/outputs", "--ckpt_dir", f"{job['workdir']}/checkpoints",
            *job["flags"]]
    solver = train_main.build_solver(train_main.parse_args(argv))
    stream = batches(solver.data, solver.order, 1, solver.device, solver.num_workers)
    stop = threading.Event()
    if not job["seconds"]:  # untimed: trains until the parent closes its stdin
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    for _ in range(job["warmup"]):
        solver.step += 1
        solver.train_step(next(stream))
    print(WARM_TAG, flush=True)
    times = [time.monotonic()]  # CLOCK_MONOTONIC: one clock for every process on the machine
    end = times[0] + job["seconds"] if job["seconds"] else float("inf")
    said = []
    while not stop.is_set() and times[-1] < end:  # Solver.train's loop, without pictures or checkpoints
        solver.step += 1
        solver.train_step(next(stream))
        times.append(time.monotonic())
        note = solver.pace()
        if note:
            said.append(f"{times[-1] - times[0]:.1f} s in: {note}")
    stream.close()
    print(RESULT_TAG + json.dumps({"times": times, "threads": torch.get_num_threads(), "pace": said,
                                   "precision": solver.checkpointer.config["precision_used"]}), flush=True)


# --------------------------------------------------------------------------- the parent side


def start(flags: list[str], seconds: float, env: dict, dset_dir: str, scratch: str,
          warmup: int = WARMUP) -> subprocess.Popen:
    job = {"flags": flags, "seconds": seconds, "warmup": warmup, "dset_dir": dset_dir,
           "workdir": tempfile.mkdtemp(dir=scratch)}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.contention", "--trainer", json.dumps(job)],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_warm(proc: subprocess.Popen) -> None:
    for line in proc.stdout:
        if line.startswith(WARM_TAG):
            return
    raise RuntimeError(f"a trainer failed before warming up:\n{proc.stderr.read()[-3000:]}")


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG):]), "said": [s for s in err.splitlines() if "busy" in s]}
    raise RuntimeError(f"a trainer failed (exit {proc.returncode}):\n{err[-3000:]}")


def rate(times: list[float], begin: float, end: float) -> float:
    """Iterations completed per second within [begin, end]."""
    return sum(begin < t <= end for t in times) / (end - begin)


def default_threads(env: dict) -> int:
    """torch's default thread count for a trainer started with `env`."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                           capture_output=True, text=True, check=True)
    return int(probe.stdout)


def run_case(case: str, args, env: dict, dset_dir: str, scratch: str) -> dict:
    """{'rates': it/s of each trainer over the common window, 'threads' each ended with, 'said': their notes}."""
    kind, _, options = case.partition(":")
    if "passive" in options:
        env = dict(env, OMP_WAIT_POLICY="PASSIVE")
    flags = ["--threads", str(default_threads(env))] if "keep" in options else []
    if kind == "alone":
        only = start(flags, args.seconds, env, dset_dir, scratch, args.warmup)
        wait_warm(only)
        one = result(only)
        return {"rates": [rate(one["times"], one["times"][0], one["times"][-1])], "threads": [one["threads"]],
                "said": [f"alone: {line}" for line in one["said"] + one["pace"]], "precision": [one["precision"]]}
    first = start(flags, 0, env, dset_dir, scratch, args.warmup)  # runs until its stdin closes
    wait_warm(first)
    time.sleep(args.gap)
    second = start(flags, args.seconds, env, dset_dir, scratch, args.warmup)
    wait_warm(second)
    two = result(second)  # the second ran `seconds` after its warm-up; then the first is stopped
    one = result(first)
    begin, end = two["times"][0], two["times"][-1]
    return {"rates": [rate(one["times"], begin, end), rate(two["times"], begin, end)],
            "threads": [one["threads"], two["threads"]], "precision": [one["precision"], two["precision"]],
            "said": [f"{who}: {line}" for who, run in (("first", one), ("second", two))
                     for line in run["said"] + run["pace"]]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "Formatter", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    p.add_argument("--seconds", type=float, default=30, help="timed seconds of each measured trainer")
    p.add_argument("--warmup", type=int, default=WARMUP, help="untimed iterations of each trainer before its timing")
    p.add_argument("--gap", type=float, default=5,
                   help="seconds between the first trainer's warm-up and the second's start")
    p.add_argument("--cap", default="", choices=("", "avx2", "avx512bf16"),
                   help="run every trainer with the instruction set capped as on another CPU kind (bench.py's caps)")
    p.add_argument("--dset_dir", default="data", help="where the full dSprites file is (generated when missing)")
    p.add_argument("--trainer", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.trainer:
        trainer(json.loads(args.trainer))
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    from benchmarks.training import CAPS
    from dataset import DATASETS, ensure_dsprites

    ensure_dsprites(Path(args.dset_dir) / DATASETS["dsprites"].relpath)
    env = dict(os.environ, **CAPS.get(args.cap, {}))
    env.pop("OMP_NUM_THREADS", None)  # every trainer at main.py's defaults
    rows, alone = [], None
    with tempfile.TemporaryDirectory(prefix="contention-") as scratch:
        for case in cases:
            print(f"{case} ...", file=sys.stderr, flush=True)
            measured = run_case(case, args, env, args.dset_dir, scratch)
            total = sum(measured["rates"])
            alone = total if case == "alone" else alone
            rows.append((case, measured, total, total / alone if alone else None))
    from utils import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; cap: {args.cap or 'none'}; "
          f"{args.seconds:g} s timed per measured trainer")
    print("| case | threads | precision | it/s each | it/s together | × alone |")
    print("|---|---|---|---|---|---|")
    for case, m, total, ratio in rows:
        print(f"| {case} | {' + '.join(map(str, m['threads']))} | {' + '.join(m['precision'])} | "
              f"{' + '.join(f'{r:.2f}' for r in m['rates'])} | {total:.2f} | "
              f"{f'{ratio:.2f}×' if ratio else '–'} |")
    for case, m, _, _ in rows:
        for line in m["said"]:
            print(f"{case}, {line}")
    print("× alone: it/s together against one trainer alone at the defaults (the `alone` case, run first).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
