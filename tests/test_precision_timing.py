"""--precision auto by timing (hardware/calibrate.py): the faster precision, cached; the rule where timing fails;
a resumed run keeps its checkpoint's. Timings are faked: what is tested is the choice, not the machine."""

import json

import pytest
import torch
from conftest import run_args

from hardware import calibrate
from hardware.precision import PRECISIONS, PrecisionChoice
from main import main

RULE = PrecisionChoice("bf16", "auto: the CPU runs bf16 natively (AVX512-BF16)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "betavae" / "precision.json"


def fake_timings(monkeypatch, timings: dict[str, float]) -> list:
    """seconds_per_call returns these; the list records the precisions that were timed."""
    timed = []

    def fake(steps):
        timed.extend(steps)
        return {name: timings[name] for name in steps}

    monkeypatch.setattr(calibrate, "seconds_per_call", fake)
    return timed


def steps() -> dict:
    return {"fp32": lambda: None, "bf16": lambda: None}


def test_the_faster_precision_is_chosen_and_both_timings_are_said(cache, monkeypatch):
    timed = fake_timings(monkeypatch, {"fp32": 0.031, "bf16": 0.0435})  # AVX512-BF16 without AMX: fp32 faster
    choice = calibrate.choose_by_timing(RULE, "key", steps())
    assert choice.name == "fp32" and timed == ["fp32", "bf16"]
    assert "fp32 31.0 ms, bf16 43.5 ms per call" in choice.reason and "fp32 is the faster" in choice.reason
    assert json.loads(cache.read_text()) == {"key": {"fp32": 0.031, "bf16": 0.0435}}


def test_a_cached_choice_is_not_timed_again(cache, monkeypatch):
    fake_timings(monkeypatch, {"fp32": 0.04, "bf16": 0.02})
    calibrate.choose_by_timing(RULE, "key", steps())
    timed = fake_timings(monkeypatch, {})  # any timing now would fail (KeyError)
    choice = calibrate.choose_by_timing(RULE, "key", steps())
    assert choice.name == "bf16" and timed == [] and f"cached in {cache}" in choice.reason


def test_a_timing_on_a_busy_machine_is_used_but_not_cached(cache, monkeypatch):
    fake_timings(monkeypatch, {"fp32": 0.05, "bf16": 0.03})
    choice = calibrate.choose_by_timing(RULE, "key", steps(), busy=True)
    assert choice.name == "bf16" and "timed now on a busy machine, so not cached" in choice.reason
    assert not cache.exists()


def test_the_precisions_are_timed_in_turns():
    calls = []
    calibrate.seconds_per_call({"fp32": lambda: calls.append("fp32"), "bf16": lambda: calls.append("bf16")})
    timed = calls[2 * calibrate.WARMUP:]
    assert timed == ["fp32", "bf16"] * calibrate.TIMED  # a slow spell slows both, not one


def test_the_rule_stands_where_timing_fails(cache, monkeypatch):
    def failing(steps):
        raise RuntimeError("no bf16 kernel for this layer")

    monkeypatch.setattr(calibrate, "seconds_per_call", failing)
    choice = calibrate.choose_by_timing(RULE, "key", steps())
    assert choice.name == "bf16" and "timing the training step failed: no bf16 kernel" in choice.reason
    assert not cache.exists()


def test_timing_puts_the_random_state_back():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    calibrate.seconds_per_call({"a": lambda: torch.rand(100), "b": lambda: torch.rand(10)})
    assert torch.equal(torch.rand(3), expected)


def test_a_run_times_its_own_step_and_a_resumed_run_keeps_its_checkpoints_precision(tmp_path, tiny_dsprites,
                                                                                      cache, monkeypatch, capsys):
    monkeypatch.setattr("main.choose", lambda requested, device: RULE)  # as on a CPU that runs bf16 natively
    fake_timings(monkeypatch, {"fp32": 0.01, "bf16": 0.02})
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "timed", "--z_dim", "2", "--max_iter", "2")
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("Precision: fp32 (auto: the training step took fp32 10.0 ms, bf16 20.0 ms per call")
    fake_timings(monkeypatch, {"fp32": 0.03, "bf16": 0.01})  # would now pick bf16 ...
    cache.unlink()
    assert main([*argv[:-1], "4"]) == 0  # ... but the resumed run keeps fp32
    assert capsys.readouterr().out.splitlines()[0].startswith("Precision: fp32 (auto: kept from the checkpoint this")


@pytest.mark.parametrize("train", ["True", "False"])
def test_the_timed_step_is_the_runs_own_work_in_each_precision(train):
    from main import parse_args, timed_step

    args = parse_args(["--objective", "B", "--z_dim", "3", "--batch_size", "4", "--train", train])
    spec = type("Spec", (), {"nc": 1, "distribution": "bernoulli"})()
    steps = {name: timed_step(args, spec, torch.device("cpu"), dtype) for name, dtype in PRECISIONS.items()}
    timings = calibrate.seconds_per_call(steps)
    assert set(timings) == {"fp32", "bf16"} and all(seconds > 0 for seconds in timings.values())
