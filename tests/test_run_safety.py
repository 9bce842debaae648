"""Runs that cannot clobber each other, checkpoints validated before use, resume that says what changed.

Each test injects one fault and asserts the outcome: the exit status, the message, and the files
left intact. Companion of tests/test_faults.py.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_args, write_dsprites_npz

from dataset import DSPRITES_FILE
from main import main, parse_args
from storage.checkpoint import load_checkpoint, restore, validate
from storage.runlock import LOCK_NAME, RunLock, RunLocked

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
QUICK = ("--model", "B", "--objective", "B", "--batch_size", "8", "--save_output", "False", "--gather_step", "1")


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture
def trained(tmp_path, tiny_dsprites):
    """A 3-iteration run 'run' under tmp_path; returns its argv (without --max_iter)."""
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "run")
    assert main([*argv, "--max_iter", "3"]) == 0
    return argv


# --------------------------------------------------------------------------- one run per run folder


def test_a_second_run_on_the_same_name_stops_at_once_and_the_first_is_intact(tmp_path, tiny_dsprites):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "twin", "--save_step", "5", "--max_iter", "60")
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "main.py", *argv, "--seed", "1"], cwd=ROOT, env=ENV,
                                 stdout=out, stderr=subprocess.STDOUT)
    lock = tmp_path / "checkpoints" / "twin" / LOCK_NAME
    deadline = time.monotonic() + 60
    while not (lock.exists() and str(first.pid) in lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    start = time.monotonic()
    second = subprocess.run([sys.executable, "main.py", *argv, "--seed", "2"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert f"PID {first.pid}" in second.stderr and "in use by another training run" in second.stderr
    assert "--viz_name" in second.stderr and "Traceback" not in second.stderr
    assert "Resumed" not in second.stdout and "Starting fresh" not in second.stdout  # it touched nothing
    assert time.monotonic() - start < 30  # at once: before reading any data
    assert first.wait(timeout=300) == 0, log.read_text()
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "twin" / "last")
    assert checkpoint["iter"] == 60 and checkpoint["config"]["seed"] == 1
    records = [json.loads(line) for line in (tmp_path / "outputs" / "twin" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == list(range(1, 61))  # one run's records, once each


def test_a_lock_left_by_a_killed_run_is_recovered(tmp_path, tiny_dsprites):
    folder = tmp_path / "checkpoints" / "killed"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from storage.runlock import RunLock
lock = RunLock({str(folder)!r}).__enter__()
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert holder.wait(timeout=30) == -signal.SIGKILL
    assert (folder / LOCK_NAME).exists()  # left behind, naming a dead process
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "killed", "--max_iter", "2")
    assert main(argv) == 0


def test_the_lock_excludes_a_second_holder_in_the_same_process_and_is_released(tmp_path):
    with RunLock(tmp_path / "a", tmp_path / "b"), pytest.raises(RunLocked, match="PID"):
        RunLock(tmp_path / "b").__enter__()
    with RunLock(tmp_path / "b"):  # released on exit
        pass


# --------------------------------------------------------------------------- check before training


def test_an_unwritable_checkpoint_folder_is_an_error_before_the_first_iteration(tmp_path, tiny_dsprites, capsys):
    if os.geteuid() == 0:
        # root writes through permissions: make the folder a file's child instead, which nobody can create.
        blocker = tmp_path / "blocker"
        blocker.write_text("not a folder")
        ckpt_dir = blocker / "sub"
    else:
        ckpt_dir = tmp_path / "readonly"
        ckpt_dir.mkdir()
        ckpt_dir.chmod(0o500)
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "ro", "--max_iter", "1000", "--ckpt_dir",
                    str(ckpt_dir))
    start = time.monotonic()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(ckpt_dir) in err and ("--ckpt_dir" in err or "writable" in err)
    assert time.monotonic() - start < 20  # no 1,000 iterations first
    assert not (tmp_path / "outputs" / "ro" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- validated checkpoints


def _damage(checkpoint: dict, field: str) -> None:
    optim = checkpoint["optim_states"]["optim"]
    if field == "exp_avg shape":
        optim["state"][0]["exp_avg"] = torch.zeros(3)
    elif field == "weight shape":
        checkpoint["model_states"]["net"]["encoder.0.weight"] = torch.zeros(2, 2)
    elif field == "iter type":
        checkpoint["config"] = "not a dict"
    elif field == "rng":
        checkpoint["rng"]["torch"] = torch.zeros(7)
    elif field == "gather":
        checkpoint["gather"]["sums"] = torch.zeros(5, dtype=torch.float64)
    elif field == "step type":
        optim["state"][1]["step"] = "three"
    elif field == "param groups":
        optim["param_groups"][0]["params"] = optim["param_groups"][0]["params"][:3]


FIELDS = {"exp_avg shape": "optim_states.optim.state[0].exp_avg", "weight shape": "model_states.net.encoder.0.weight",
          "iter type": "config", "rng": "rng.torch", "gather": "gather.sums",
          "step type": "optim_states.optim.state[1].step", "param groups": "optim_states.optim.param_groups[0]"}


@pytest.mark.parametrize("field", FIELDS)
def test_a_malformed_checkpoint_field_is_named_and_nothing_crashes(field, tmp_path, trained, capsys):
    last = tmp_path / "checkpoints" / "run" / "last"
    checkpoint = load_checkpoint(last)
    _damage(checkpoint, field)
    torch.save(checkpoint, last)
    before = last.read_bytes()
    capsys.readouterr()
    if field == "exp_avg shape":
        # In a separate process: a malformed Adam moment used to crash the fused step (a segmentation fault).
        done = subprocess.run([sys.executable, "main.py", *trained, "--max_iter", "5"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)
        code, err = done.returncode, done.stderr
    else:
        code, err = main([*trained, "--max_iter", "5"]), capsys.readouterr().err
    assert code == 1, err
    assert str(last) in err and FIELDS[field] in err, err
    assert "Traceback" not in err
    assert last.read_bytes() == before


def test_only_regular_files_are_read_as_checkpoints(tmp_path, tiny_dsprites, capsys):
    folder = tmp_path / "checkpoints" / "fifo"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "last")  # reading a pipe would block forever
    assert main(run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "fifo", "--max_iter", "2")) == 1
    assert "not a regular file" in capsys.readouterr().err


def test_validation_accepts_what_the_run_itself_saved(tmp_path, trained):
    from methods import Compute, build_method

    args = parse_args(trained)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "run" / "last")
    method = build_method(args, 1, "bernoulli", Compute(torch.device("cpu")))
    validate(checkpoint, Path("last"), method)  # raises CheckpointError on any field it rejects
    # and the validated file restores: every network equals what was saved
    restore(checkpoint, Path("last"), method, with_optimizers=True)
    for name, net in method.networks.items():
        saved = checkpoint["model_states"][name]
        assert all(torch.equal(value, saved[key]) for key, value in net.state_dict().items())


# --------------------------------------------------------------------------- resume says what changed


@pytest.mark.parametrize("flags,named", [
    (("--lr", "5e-3"), "--lr"), (("--C_stop_iter", "5"), "--C_stop_iter"), (("--gamma", "10"), "--gamma"),
    (("--seed", "7"), "--seed"), (("--batch_size", "16"), "--batch_size"), (("--beta2", "0.99"), "--beta2")])
def test_a_guarded_change_on_resume_is_refused_and_touches_nothing(flags, named, tmp_path, trained, capsys):
    before = digest(tmp_path / "checkpoints") | digest(tmp_path / "outputs")
    capsys.readouterr()
    assert main([*trained, "--max_iter", "5", *flags]) == 1
    out, err = capsys.readouterr()
    assert named in err and "--resume_with_changes True" in err and "Resumed" not in out
    assert digest(tmp_path / "checkpoints") | digest(tmp_path / "outputs") == before


def test_a_different_dataset_file_is_a_guarded_change(tmp_path, trained, tiny_dsprites, capsys):
    write_dsprites_npz(tiny_dsprites / DSPRITES_FILE, n=320, seed=5)
    assert main([*trained, "--max_iter", "5"]) == 1
    assert "the data" in capsys.readouterr().err


def test_an_accepted_change_takes_full_effect_and_is_recorded(tmp_path, trained, capsys):
    assert main([*trained, "--max_iter", "5", "--lr", "5e-3", "--resume_with_changes", "True"]) == 0
    out = capsys.readouterr().out
    assert "Resuming with changes" in out and "--lr: 0.0001 in the checkpoint, 0.005 now" in out
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "run" / "last")
    assert checkpoint["config"]["lr"] == 0.005
    assert checkpoint["optim_states"]["optim"]["param_groups"][0]["lr"] == 0.005  # Adam uses it
    assert checkpoint["config"]["changes"] == [{"iter": 3, "flag": "lr", "from": 0.0001, "to": 0.005}]
    assert main([*trained, "--max_iter", "6", "--lr", "5e-3"]) == 0  # the new value is now the run's own
    assert load_checkpoint(tmp_path / "checkpoints" / "run" / "last")["config"]["changes"][0]["flag"] == "lr"


def test_free_changes_are_listed_and_allowed(tmp_path, trained, capsys):
    assert main([*trained, "--max_iter", "5", "--display_step", "7", "--beta", "9"]) == 0
    out = capsys.readouterr().out
    assert "Changed since the checkpoint: " in out and "--display_step 10000 -> 7" in out
    assert "--beta 4.0 -> 9.0 (no effect on this method)" in out  # objective B has no beta


# --------------------------------------------------------------------------- names, ports, messages


@pytest.mark.parametrize("flag,value", [("--viz_name", "../up"), ("--viz_name", "/abs"), ("--viz_name", "a/b"),
                                        ("--ckpt_name", "../last"), ("--ckpt_name", "x/1"), ("--viz_port", "0"),
                                        ("--viz_port", "70000")])
def test_path_like_names_and_bad_ports_are_argparse_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args([flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_nan_before_any_checkpoint_does_not_claim_one(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "early", "--lr", "1e30", "--max_iter", "20",
                    "--save_step", "100")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no checkpoint had been written yet" in err and "--resume_with_changes" not in err
    assert not (tmp_path / "checkpoints" / "early" / "last").exists()


def test_a_checkpoint_is_never_named_when_none_exists(tmp_path, tiny_dsprites, monkeypatch, capsys):
    import main as main_module

    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "nofile", "--max_iter", "2")

    def failing_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("storage.checkpointer.save_checkpoint", failing_save)
    assert main_module.main(argv) == 1
    err = capsys.readouterr().err
    assert "No checkpoint was written" in err and "it starts over" in err and "resumes" not in err


def test_records_that_could_not_be_written_make_the_run_fail(tmp_path, tiny_dsprites, monkeypatch, capsys):
    from monitoring import loggers

    monkeypatch.setattr(loggers.JsonlLogger, "_write", lambda self: None)  # metrics.jsonl never takes a record
    argv = run_args(tmp_path, tiny_dsprites, *QUICK, "--viz_name", "lost", "--max_iter", "3")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "3 record(s) could not be written" in err and "metrics.jsonl" in err
    assert load_checkpoint(tmp_path / "checkpoints" / "lost" / "last")["iter"] == 3  # the run itself is saved


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    from utils import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new", lambda f: f.write(b"x"))
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
        (tmp_path / "new").chmod(0o640)
        atomic_write(tmp_path / "new", lambda f: f.write(b"y"))
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(old)


def test_a_run_that_fails_before_writing_leaves_no_folders_behind(tmp_path, capsys):
    empty = tmp_path / "empty"  # a dataset folder without the dSprites file: it fails at data loading
    (empty / "dsprites-dataset").mkdir(parents=True)
    (empty / "dsprites-dataset" / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz").write_bytes(b"not a zip")
    assert main(run_args(tmp_path, empty, "--viz_name", "nodata")) == 1
    assert "dsprites" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints" / "nodata").exists() and not (tmp_path / "outputs" / "nodata").exists()
