"""--precision auto: bf16 only where the hardware runs it natively, with every hardware answer faked."""

import warnings

import pytest
import torch
from conftest import run_args

from hardware import precision
from hardware.precision import CpuFacts, choose
from main import main
from storage.checkpoint import load_checkpoint

NATIVE = CpuFacts(avx512_bf16=True, amx=True, onednn_cap="", aten_capability="avx512")
CPU = torch.device("cpu")


@pytest.mark.parametrize("facts,expected,because", [
    (NATIVE, "bf16", "natively (AVX512-BF16 and AMX)"),
    (CpuFacts(True, False, "", "avx512"), "bf16", "natively (AVX512-BF16)"),
    (CpuFacts(False, True, "ALL", "avx512"), "bf16", "natively (AMX)"),
    (CpuFacts(False, False, "", "avx2"), "fp32", "neither AVX512-BF16 nor AMX"),
    (CpuFacts(False, False, "", "avx512"), "fp32", "neither AVX512-BF16 nor AMX"),  # AVX-512 without bf16
    (CpuFacts(True, True, "AVX2", "avx512"), "fp32", "ONEDNN_MAX_CPU_ISA=AVX2"),
    (CpuFacts(True, True, "AVX512_CORE", "avx512"), "fp32", "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
    (CpuFacts(True, True, "AVX512_CORE_AMX", "avx512"), "bf16", "natively"),
    (CpuFacts(True, True, "", "avx2"), "fp32", "AVX2 (ATEN_CPU_CAPABILITY)"),
    (CpuFacts(True, True, "", "default"), "fp32", "DEFAULT (ATEN_CPU_CAPABILITY)"),
])
def test_auto_follows_the_cpu_and_the_users_caps(facts, expected, because):
    choice = choose("auto", CPU, facts)
    assert choice.name == expected and because in choice.reason and not choice.emulated
    assert choice.dtype == (torch.bfloat16 if expected == "bf16" else None)


def test_explicit_choices_are_kept_and_forced_bf16_warns_once(recwarn):
    slow = CpuFacts(False, False, "", "avx2")
    assert choose("fp32", CPU, NATIVE).name == "fp32"
    forced = choose("bf16", CPU, slow)
    assert forced.name == "bf16" and forced.emulated
    line = precision.announce(forced)
    assert line.startswith("Precision: bf16")
    assert len(recwarn) == 1 and "emulated and many times slower" in str(recwarn[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.announce(choose("bf16", CPU, NATIVE))  # native: no warning


@pytest.mark.parametrize("supported,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_asks_the_device(supported, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    choice = choose("auto", torch.device("cuda"))
    assert choice.name == expected and "Fake GPU" in choice.reason


def test_the_environment_caps_are_read(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert precision.cpu_facts().onednn_cap == "AVX2"


def test_the_run_says_and_records_what_it_chose(tmp_path, tiny_dsprites, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_facts", lambda: CpuFacts(False, False, "", "avx2"))
    assert main(run_args(tmp_path, tiny_dsprites, "--viz_name", "p", "--max_iter", "1")) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("Precision: fp32 (auto: this CPU has neither AVX512-BF16 nor AMX")
    config = load_checkpoint(tmp_path / "checkpoints" / "p" / "last")["config"]
    assert config["precision"] == "auto" and config["precision_used"] == "fp32"
    assert "neither AVX512-BF16 nor AMX" in config["precision_reason"]
