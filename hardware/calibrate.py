"""`--precision auto` by timing: the run's own step in fp32 and in bf16, and the faster one kept.

The rule of hardware/precision.py (bf16 where the CPU has AVX512-BF16 or AMX) was tuned on a
machine with AMX. On a CPU with AVX512-BF16 and no AMX (AMD Zen 4 and 5, Intel Cooper Lake), bf16
convolutions were measured slower than fp32, and the rule picked the slower precision. So where
bf16 runs natively at all, auto times a few steps of the run's own work (the training step of its
method on its batch; for `--train False`, the evaluation's encoder on a batch of images) in each
precision and keeps the faster. Where bf16 would be emulated (many times slower) the rule's fp32
stands without timing, as it does on a GPU and wherever timing fails.

The precisions are timed in turns (fp32, bf16, fp32, ...), so that a slow spell of a shared machine
slows both rather than one. A choice is cached per CPU model, torch version, instruction-set caps,
threads, method, model, latents, batch size, channels and layout, in
`$XDG_CACHE_HOME/betavae/precision.json` (`~/.cache/...`), so it costs a second or two once per
setting. A choice timed while other processes kept the cores busy is used but not cached: timings
taken beside another job say little about the machine. A resumed run keeps its checkpoint's
precision (main.py).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hardware.precision import PrecisionChoice
from utils import atomic_write, cpu_model

WARMUP, TIMED = 2, 7  # calls per precision; the first calls build oneDNN's kernels and are not timed


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "betavae" / "precision.json"


def cache_key(what: str, **facts) -> str:
    """What the timing depends on, as one string: the machine, torch, and the run's facts."""
    parts = [cpu_model(), torch.__version__, f"threads={torch.get_num_threads()}",
             f"onednn={os.environ.get('ONEDNN_MAX_CPU_ISA', '')}", f"aten={os.environ.get('ATEN_CPU_CAPABILITY', '')}",
             what, *(f"{k}={v}" for k, v in sorted(facts.items()))]
    return " | ".join(parts)


def _read_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def seconds_per_call(steps: dict[str, Callable[[], None]]) -> dict[str, float]:
    """{name: median seconds of one call}: WARMUP calls of each, then TIMED rounds calling each in turn.
    The random states are put back after, so a timed run draws what an untimed one would."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        for step in steps.values():
            for _ in range(WARMUP):
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(TIMED):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        return {name: statistics.median(t) for name, t in times.items()}
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def choose_by_timing(rule: PrecisionChoice, key: str, steps: dict[str, Callable[[], None]],
                     what: str = "training step", busy: bool = False) -> PrecisionChoice:
    """The faster of `steps` (precision name -> one call), from the cache or timed now; the rule's choice
    when timing fails. `busy`: other processes hold the cores, so a fresh timing is used but not cached.
    The reason gives both timings and where they came from."""
    path = cache_path()
    cached = _read_cache(path).get(key)
    if isinstance(cached, dict) and set(steps) <= set(cached):
        timings, source = {name: float(cached[name]) for name in steps}, f"cached in {path}"
    else:
        try:
            timings = seconds_per_call(steps)
        except (RuntimeError, ValueError, MemoryError) as err:
            return PrecisionChoice(rule.name, f"{rule.reason} (timing the {what} failed: {str(err)[:120]})")
        if busy:
            source = "timed now on a busy machine, so not cached"
        else:
            source = f"timed now, cached in {path}"
            everything = _read_cache(path) | {key: timings}
            try:
                atomic_write(path, lambda f: f.write(json.dumps(everything, indent=1).encode()))
            except OSError:
                source = "timed now (the cache could not be written)"
    name = min(timings, key=timings.get)
    shown = ", ".join(f"{n} {1000 * s:.1f} ms" for n, s in timings.items())
    return PrecisionChoice(name, f"auto: the {what} took {shown} per call on this machine ({source}); "
                                 f"{name} is the faster")
