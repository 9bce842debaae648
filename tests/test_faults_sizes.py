"""Every size works or fails fast: --z_dim 1 end to end, sizes that would exhaust memory, names too long
for a file system. Companion of tests/test_faults.py."""

import argparse
import json

import pytest
from conftest import run_args

import main as main_module
import methods.base as base_module
from hardware import sizes
from main import main, parse_args
from storage.checkpoint import load_checkpoint

QUICK = ("--batch_size", "8", "--precision", "fp32", "--gather_step", "2", "--display_step", "2")
GB = 2**30


def test_z_dim_1_trains_draws_evaluates_and_resumes(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "z1", "--z_dim", "1")
    assert main([*argv, "--max_iter", "4", "--eval_metrics", "True", "--eval_scale", "0.01"]) == 0
    assert main([*argv, "--max_iter", "6", "--save_output", "False"]) == 0  # resumed: the status line again
    out = capsys.readouterr().out
    assert "posterior variance: z0:" in out
    records = [json.loads(line) for line in (tmp_path / "outputs" / "z1" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "kld" in r]
    assert [r["iter"] for r in trained] == [2, 4, 6]
    assert all(isinstance(r[k], list) and len(r[k]) == 1 for r in trained for k in ("kld", "mu", "var"))
    assert (tmp_path / "outputs" / "z1" / "4" / "reconstruction.png").is_file()
    assert (tmp_path / "outputs" / "z1" / "eval_4_scale0.01.json").is_file()
    assert load_checkpoint(tmp_path / "checkpoints" / "z1" / "last")["iter"] == 6


def size_args(**flags) -> argparse.Namespace:
    values = dict(train=True, batch_size=64, z_dim=10, eval_metrics=True, eval_step=0) | flags
    return argparse.Namespace(**values)


def test_many_latents_warn_with_the_evaluation_memory_estimate():
    warnings = sizes.check_sizes(size_args(z_dim=1000), images=737_280, available=20 * GB)
    assert any("--z_dim 1000" in w and "5.5 GB of codes" in w for w in warnings)
    assert sizes.check_sizes(size_args(), images=737_280, available=20 * GB) == []
    with pytest.raises(sizes.SizeError, match=r"evaluation's codes .* needs about 5.5 GB .* 4.0 GB is available"):
        sizes.check_sizes(size_args(z_dim=1000), images=737_280, available=4 * GB)


def test_a_batch_that_cannot_fit_fails_fast_naming_the_flag(tmp_path, tiny_dsprites, monkeypatch, capsys):
    monkeypatch.setattr(main_module, "available_memory", lambda device=None: 8 * GB)
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "huge", "--max_iter", "1", "--batch_size", "100000")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "training at --batch_size 100000" in err and "97.7 GB" in err and "lower --batch_size" in err
    assert not (tmp_path / "checkpoints" / "huge" / "last").exists()


def test_running_out_of_memory_anyway_is_a_message_not_a_traceback(tmp_path, tiny_dsprites, monkeypatch, capsys):
    def allocation_fails(self, x, step):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(base_module.VAEMethod, "train_step", allocation_fails)
    assert main(run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "oom", "--max_iter", "1")) == 1
    err = capsys.readouterr().err
    assert "error: out of memory at --batch_size 8 and --z_dim 10; lower --batch_size" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag", ["--viz_name", "--ckpt_name"])
def test_a_name_too_long_for_a_file_system_is_an_argparse_error(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args([flag, "x" * 300])
    assert stop.value.code == 2
    assert f"argument {flag}: at most 200 bytes" in capsys.readouterr().err
