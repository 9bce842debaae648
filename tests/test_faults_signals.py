"""Every signal that ends a process saves what is due and exits 128 + its number; folders deleted mid-run
are taken back under the run's lock. Companion of tests/test_faults.py (SIGINT and SIGTERM in training,
in a child process).

Here the signal is sent by this process to itself from inside a wrapped function, at an exact moment.
While a test runs, SIGTERM and SIGHUP raise Unhandled: a signal main.py failed to handle fails the test
instead of killing pytest.
"""

import os
import shutil
import signal
import time

import pytest
from conftest import run_args

import evaluation.evaluate as evaluate_module
import solver as solver_module
from main import main
from storage.checkpoint import load_checkpoint
from storage.runlock import LOCK_NAME, RunLock, RunLocked

QUICK = ("--batch_size", "8", "--save_output", "False", "--precision", "fp32", "--gather_step", "2")


class Unhandled(Exception):
    """A stop signal reached the test's own handler: main.py did not handle it."""


@pytest.fixture(autouse=True)
def signals_fail_the_test():
    def unhandled(signum, _frame):
        raise Unhandled(signal.Signals(signum).name)

    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_sighup_in_training_saves_a_checkpoint_and_exits_129(tmp_path, tiny_dsprites, monkeypatch, capsys):
    step = solver_module.Solver.train_step

    def hang_up_at_3(self, x):
        stats = step(self, x)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGHUP)  # a closed terminal
        return stats

    monkeypatch.setattr(solver_module.Solver, "train_step", hang_up_at_3)
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "hup", "--max_iter", "1000")
    assert main(argv) == 129
    last = tmp_path / "checkpoints" / "hup" / "last"
    assert f"Received SIGHUP at iteration 3: checkpoint saved to {last}" in capsys.readouterr().out
    assert load_checkpoint(last)["iter"] == 3


def test_sigterm_during_an_evaluation_from_the_checkpoint_exits_143_and_says_what_is_on_disk(tmp_path,
                                                                                             tiny_dsprites,
                                                                                             monkeypatch, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "ev", "--max_iter", "2")
    assert main(argv) == 0

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # `timeout`, `kill`, Slurm, `docker stop`
        time.sleep(5)  # the signal arrives mid-evaluation
        raise AssertionError("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(evaluate_module, "evaluate", terminated)
    assert main([*argv, "--train", "False", "--eval_metrics", "True"]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "last one completely written" in err
    assert not list((tmp_path / "outputs").rglob("eval_*"))  # nothing half written


def test_deleted_run_folders_are_recreated_under_the_lock(tmp_path, tiny_dsprites, monkeypatch, capsys):
    """The folders vanish at iteration 3; the save at 4 takes them back, locked, so no second run can start."""
    ckpt, out = tmp_path / "checkpoints" / "gone", tmp_path / "outputs" / "gone"
    step, seen = solver_module.Solver.train_step, {}

    def deleting(self, x):
        stats = step(self, x)
        if self.step == 3:
            shutil.rmtree(ckpt)
            shutil.rmtree(out)
        if self.step == 5:
            for folder in (ckpt, out):
                with pytest.raises(RunLocked), RunLock(folder):
                    pass
            seen["locked"] = True
        return stats

    monkeypatch.setattr(solver_module.Solver, "train_step", deleting)
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "gone", "--max_iter", "6", "--save_step", "2")
    assert main(argv) == 0
    assert seen["locked"]
    assert (ckpt / LOCK_NAME).exists() and (out / LOCK_NAME).exists()
    assert load_checkpoint(ckpt / "last")["iter"] == 6
    err = capsys.readouterr().err
    assert f"{ckpt.resolve()} was deleted while this run was using it; recreated, locked again" in err


def test_a_run_whose_deleted_folder_another_run_took_stops_without_writing_there(tmp_path, tiny_dsprites,
                                                                                 monkeypatch, capsys):
    ckpt = tmp_path / "checkpoints" / "taken"
    step, other = solver_module.Solver.train_step, RunLock(ckpt)

    def taking(self, x):
        stats = step(self, x)
        if self.step == 3:
            shutil.rmtree(ckpt)
            other.__enter__()  # a second run starts on the name and locks the recreated folder
        return stats

    monkeypatch.setattr(solver_module.Solver, "train_step", taking)
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "taken", "--max_iter", "6", "--save_step", "2")
    try:
        assert main(argv) == 1
        assert sorted(p.name for p in ckpt.iterdir()) == [LOCK_NAME]  # the other run's folder is untouched
    finally:
        other.release()
    err = capsys.readouterr().err
    assert f"{ckpt.resolve()} was deleted or replaced while this run was using it" in err
    assert "stopped without writing there again" in err
