"""Short end-to-end runs: outputs, checkpoints, resume and --train False."""

import json
import platform
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_args

from main import main
from storage.checkpoint import describe_weights, load_checkpoint
from storage.resume import method_from_checkpoint


def test_three_iterations_write_checkpoint_gifs_and_reconstructions(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, "--max_iter", "3", "--display_step", "1", "--save_step", "1",
                    "--gather_step", "1", "--objective", "B", "--model", "B", "--viz_name", "run")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Starting fresh" in out and "C:" in out and "posterior variance" in out
    for step in (1, 2, 3):
        folder = tmp_path / "outputs" / "run" / str(step)
        assert (folder / "reconstruction.png").stat().st_size > 0
        assert (folder / "traverse_random_img.gif").stat().st_size > 0
        assert (folder / "traverse_random_img.png").stat().st_size > 0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "run" / "last")
    assert ckpt["iter"] == 3
    assert {"net"} == set(ckpt["model_states"]) and {"optim"} == set(ckpt["optim_states"])
    assert ckpt["config"]["objective"] == "B" and ckpt["config"]["nc"] == 1
    assert (tmp_path / "checkpoints" / "run" / "3").exists()  # the numbered snapshot at the end
    lines = (tmp_path / "outputs" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_a_run_shorter_than_the_steps_still_saves_and_draws(tmp_path, tiny_dsprites):
    assert main(run_args(tmp_path, tiny_dsprites, "--max_iter", "2", "--viz_name", "short")) == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "short" / "last")["iter"] == 2
    assert (tmp_path / "outputs" / "short" / "2" / "traverse_random_img.gif").exists()


def test_resume_continues_from_the_saved_iteration(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "resume", "--save_step", "2")
    assert main(argv + ["--max_iter", "4"]) == 0
    capsys.readouterr()
    assert main(argv + ["--max_iter", "6"]) == 0
    out = capsys.readouterr().out
    assert "Resumed from" in out and "at iteration 4" in out
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "resume" / "last")
    assert ckpt["iter"] == 6
    assert ckpt["optim_states"]["optim"]["state"][0]["step"].item() == 6  # Adam continued, not restarted


def test_train_false_draws_from_the_checkpoint(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "eval", "--max_iter", "2")
    assert main(argv) == 0
    before = load_checkpoint(tmp_path / "checkpoints" / "eval" / "last")
    assert main(argv + ["--train", "False"]) == 0
    assert (tmp_path / "outputs" / "eval" / "2" / "reconstruction.png").exists()
    after = load_checkpoint(tmp_path / "checkpoints" / "eval" / "last")
    assert after["iter"] == 2 and torch.equal(after["model_states"]["net"]["encoder.0.weight"],
                                              before["model_states"]["net"]["encoder.0.weight"])


def test_train_false_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_dsprites, capsys):
    assert main(run_args(tmp_path, tiny_dsprites, "--train", "False", "--viz_name", "none")) == 1
    assert "--train False needs a checkpoint" in capsys.readouterr().err


def test_checkpoint_alone_rebuilds_its_model(tmp_path, tiny_dsprites):
    main(run_args(tmp_path, tiny_dsprites, "--viz_name", "rebuild", "--max_iter", "1", "--model", "B",
                  "--z_dim", "6"))
    path = tmp_path / "checkpoints" / "rebuild" / "last"
    method = method_from_checkpoint(path)
    assert describe_weights(method.vae.state_dict()) == {"model": "B", "z_dim": 6, "nc": 1}
    saved = load_checkpoint(path)["model_states"]["net"]
    assert all(torch.equal(value, saved[key]) for key, value in method.vae.state_dict().items())


def test_reference_style_checkpoint_resumes(tmp_path, tiny_dsprites, capsys):
    """A checkpoint with only the reference's keys (no config, no RNG) loads and resumes."""
    from model import BetaVAE_H

    model = BetaVAE_H(z_dim=10, nc=1)
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    path = tmp_path / "checkpoints" / "ref" / "last"
    path.parent.mkdir(parents=True)
    win_states = {"recon": None, "kld": None, "mu": None, "var": None}
    torch.save({"iter": 5, "win_states": win_states, "model_states": {"net": model.state_dict()},
                "optim_states": {"optim": optim.state_dict()}}, path)
    assert main(run_args(tmp_path, tiny_dsprites, "--viz_name", "ref", "--max_iter", "7")) == 0
    assert "at iteration 5" in capsys.readouterr().out
    assert load_checkpoint(path)["iter"] == 7


FREED_MEMORY_PROBE = """
import ctypes, resource, sys
import numpy as np
sys.path.insert(0, {root!r})
from utils import keep_freed_memory

def faults():  # page faults of 20 blocks of 8 MiB, each freed at once, as a training step's activations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones(1 << 21, np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD 1 MiB: each block mapped afresh
mapped_afresh = faults()
assert keep_freed_memory()
faults()  # the first block is mapped once
print(mapped_afresh, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_freed_step_memory_is_reused_not_mapped_again():
    proc = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROBE.format(root=str(ROOT))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    mapped_afresh, kept = map(int, proc.stdout.split())
    assert mapped_afresh > 2000  # the state keep_freed_memory prevents: thousands of faults
    assert kept < 50


def test_every_run_keeps_freed_memory(tmp_path, tiny_dsprites, monkeypatch):
    import main as train_main

    calls = []
    monkeypatch.setattr(train_main, "keep_freed_memory", lambda: calls.append(1) or True)
    argv = run_args(tmp_path, tiny_dsprites, "--max_iter", "1", "--viz_name", "mem")
    assert main(argv) == 0
    assert calls == [1]


SUBNORMAL_PROBE = """
import sys
import torch
sys.path.insert(0, {root!r})
from utils import flush_denormals

torch.set_num_threads(2)
x = torch.full((1 << 22,), 1e-39)  # subnormal in float32; each thread multiplies its half
kept = int((x * 1.0 != 0).sum())  # the OpenMP pool now exists, its threads made before any flush
flushed = flush_denormals()
print(kept, int(flushed), int((x * 1.0 != 0).sum()))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="FTZ/DAZ: x86 only")
def test_subnormals_are_flushed_on_every_torch_thread_also_those_made_before():
    proc = subprocess.run([sys.executable, "-c", SUBNORMAL_PROBE.format(root=str(ROOT))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kept, flushed, left = map(int, proc.stdout.split())
    assert kept == 1 << 22  # before: every product stays subnormal (and slow)
    assert flushed == 1
    assert left == 0  # after: zero on both threads, the pool thread made before the call included


def test_every_run_flushes_subnormals(tmp_path, tiny_dsprites, monkeypatch):
    import main as train_main

    calls = []
    monkeypatch.setattr(train_main, "flush_denormals", lambda: calls.append(1) or True)
    assert main(run_args(tmp_path, tiny_dsprites, "--max_iter", "1", "--viz_name", "ftz")) == 0
    assert calls == [1]


def test_a_run_at_the_default_steps_shows_a_point_and_pictures_at_iteration_100(tmp_path, tiny_dsprites):
    """The first look comes early: gather_step 1000 and display_step 10000 would leave nothing for minutes."""
    assert main(run_args(tmp_path, tiny_dsprites, "--viz_name", "early", "--max_iter", "101", "--z_dim", "2",
                         "--precision", "fp32")) == 0
    run = tmp_path / "outputs" / "early"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [100, 101]  # the early point, then the end's partial interval
    assert (run / "100" / "reconstruction.png").is_file() and (run / "100" / "traverse_random_img.gif").is_file()
    assert (run / "101" / "reconstruction.png").is_file()  # a run's last iteration always gets pictures


def test_checkpoints_carry_the_training_time_summed_over_resumes(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "clock", "--z_dim", "2", "--precision", "fp32")
    assert main([*argv, "--max_iter", "3"]) == 0
    first = load_checkpoint(tmp_path / "checkpoints" / "clock" / "last")["train_seconds"]
    assert first > 0
    assert main([*argv, "--max_iter", "6"]) == 0
    second = load_checkpoint(tmp_path / "checkpoints" / "clock" / "last")["train_seconds"]
    assert second > first  # the resumed session's time is added to the first's, not restarted
