"""Speed options that change numerics keep the loss curve of a plain fp32 run.

bf16 autocast rounds the forward pass to 8 mantissa bits; channels_last and torch.compile
reorder or fuse the same arithmetic (compile keeps eager's random stream, so ε is the same).
Each option trains ITERS iterations with the same seed, data and batch order as a plain fp32
run, and every gathered point (the loss averaged over GATHER iterations) must stay within
TOLERANCE of fp32's. Observed on an AMD EPYC with avx512_bf16: at most 0.21% for every option.
A cold torch.compile adds about a minute on 2 CPU cores; Inductor's cache makes later runs quick.

Where bf16 is not native (an AVX2-only CPU, or the instruction set capped), it is emulated and
many times slower, so the variants that force bf16 train EMULATED_ITERS iterations there and are
compared with the fp32 curve's first gathered point (the runs are deterministic, so a shorter run is
a prefix of the longer one).
"""

import json
import shutil

import pytest
import torch
from conftest import run_args, write_dsprites_npz

from dataset import DSPRITES_FILE
from hardware import precision
from main import main

ITERS = 120
EMULATED_ITERS = 20  # bf16 variants on hardware that emulates bf16 (0.5 s an iteration on AVX2): one point
GATHER = 20
TOLERANCE = 0.03  # relative, per gathered point: about 14× the largest deviation observed
NATIVE_BF16, _ = precision.native_bf16(torch.device("cpu"))

FP32 = ("--precision", "fp32", "--channels_last", "False")
# `auto` is bf16 where bf16 is native and fp32 elsewhere, so the default already trains one of
# fp32+channels_last and bf16+channels_last: only the other is trained explicitly.
AUTO_IS = "bf16+channels_last" if NATIVE_BF16 else "fp32+channels_last"
VARIANTS = {name: flags for name, flags in {
    "bf16": ("--precision", "bf16", "--channels_last", "False"),
    "fp32+channels_last": ("--precision", "fp32", "--channels_last", "True"),
    "bf16+channels_last": ("--precision", "bf16", "--channels_last", "True"),
    f"auto+channels_last (default, here {AUTO_IS})": ("--precision", "auto", "--channels_last", "True"),
    "default+compile": ("--precision", "auto", "--channels_last", "True", "--compile", "True"),
}.items() if name != AUTO_IS}
HAS_CXX = any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    write_dsprites_npz(tmp / "data" / DSPRITES_FILE, n=1024)
    return tmp


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the same curves, and a run time that a busy machine does not multiply."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loss_curve(workdir, name: str, flags: tuple[str, ...], iters: int = ITERS) -> list[float]:
    """Train objective and model B from seed 1; the gathered loss averages from metrics.jsonl."""
    argv = run_args(workdir, workdir / "data", "--viz_name", name, "--model", "B", "--objective", "B",
                    "--max_iter", str(iters), "--gather_step", str(GATHER), "--display_step", str(10 * ITERS),
                    "--save_step", str(10 * ITERS), "--save_output", "False", *flags)
    assert main(argv) == 0
    lines = (workdir / "outputs" / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def fp32_curve(workdir, one_thread):
    return loss_curve(workdir, "fp32", FP32)


# Importing Inductor makes torch.utils.mkldnn call torch's own deprecated jit API; only that
# DeprecationWarning, only for the compiled run, is ignored.
TORCH_JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.filterwarnings(TORCH_JIT_DEPRECATION))
                                     if "compile" in v else v for v in VARIANTS])
def test_option_follows_the_fp32_loss_curve(variant, workdir, fp32_curve):
    if "compile" in variant and not HAS_CXX:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++ or clang++)")
    flags = VARIANTS[variant]
    forced_bf16 = "bf16" in flags
    iters = ITERS if NATIVE_BF16 or not forced_bf16 else EMULATED_ITERS
    curve = loss_curve(workdir, variant.split()[0], flags, iters)
    reference = fp32_curve[: iters // GATHER]
    assert len(curve) == len(reference) == iters // GATHER
    deviations = [abs(a - b) / abs(b) for a, b in zip(curve, reference, strict=True)]
    print(f"{variant}: max relative deviation from fp32 {max(deviations):.4%} over {iters} iterations")
    assert max(deviations) <= TOLERANCE, f"{variant} left the fp32 loss curve: {curve} vs {reference}"
    if forced_bf16 or ("auto" in flags and NATIVE_BF16):
        assert curve != reference  # bf16 was in effect
