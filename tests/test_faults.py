"""The fault battery: every way a run can be cut short or fed bad input, and what must survive it.

Each test injects one fault and asserts the outcome: the exit status, the message, the files left
intact and, where a run is resumed, weights equal bit for bit to a run that was never interrupted.
Runs that must be separate processes (signals, SIGKILL, exit statuses) start `python main.py`;
the others call main() in this process. Every run that takes part in a bit-for-bit comparison uses
one CPU thread: a different thread count changes the order of float sums, hence the last bits.
"""

import errno
import hashlib
import io
import itertools
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_equal, run_args, write_dsprites_npz
from PIL import Image

import main as main_module
import methods.betavae as betavae_module
from dataset import DSPRITES_FILE, ImageFolder
from main import main
from storage.checkpoint import CheckpointError, load_checkpoint

N = 30  # iterations of the reference run: 256 images / batch 8 = 32 per epoch, so resumes cross epochs
COMMON = ("--model", "B", "--objective", "B", "--C_stop_iter", "10", "--batch_size", "8", "--gather_step", "5",
          "--snapshot_step", "1000000", "--save_output", "False")  # pictures are drawn, not written to files
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
STATE_KEYS = ("iter", "model_states", "optim_states", "rng", "gather", "last_record")


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs use one thread, as the subprocesses do (ENV)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run to N (pictures every 4 iterations); returns its tmp folder."""
    root = tmp_path_factory.mktemp("reference")
    dset_dir = root / "data"
    write_dsprites_npz(dset_dir / DSPRITES_FILE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(run_args(root, dset_dir, *COMMON, "--viz_name", "ref", "--max_iter", str(N),
                             "--display_step", "4", "--save_step", "1000")) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def assert_same_run(tmp_path: Path, name: str, reference: Path) -> None:
    """Checkpoint `last` and the gathered records equal the reference run's, bit for bit."""
    got, want = (load_checkpoint(root / "checkpoints" / run / "last")
                 for root, run in ((tmp_path, name), (reference, "ref")))
    for key in STATE_KEYS:
        assert_equal(got.get(key), want.get(key), key)
    assert gathered(tmp_path, name) == gathered(reference, "ref")


def gathered(root: Path, name: str) -> dict:
    """The records of full gather intervals by iteration (a replayed interval logs the same record again)."""
    lines = (root / "outputs" / name / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["iter"]: r for r in records if "eval" not in r and r["iter"] % 5 == 0}


def digest(folder: Path) -> dict:
    """Every file under folder with a hash of its bytes: to prove nothing was touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".run.lock"}  # the lock names its holder


def wait_for(condition, proc: subprocess.Popen, log: Path, poll: float = 0.01, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"main.py ended early ({proc.returncode}):\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "main.py made no progress"
        time.sleep(poll)


# --------------------------------------------------------------------------- 1. atomic checkpoints


def test_kill_9_at_random_moments_always_leaves_a_loadable_last(tmp_path, tiny_dsprites, reference):
    argv = run_args(tmp_path, tiny_dsprites, *COMMON, "--viz_name", "killed", "--display_step", "3")
    folder = tmp_path / "checkpoints" / "killed"
    last, log = folder / "last", tmp_path / "stderr.txt"

    def wait_for_next_save(proc: subprocess.Popen) -> None:
        def version() -> tuple:
            return (last.stat().st_ino, last.stat().st_mtime_ns) if last.exists() else ()

        old = version()
        wait_for(lambda: version() != old, proc, log)

    moments = random.Random(9)
    iters, mid_write = [], 0
    for kill in range(5):
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "main.py", *argv, "--max_iter", "1000000", "--save_step", "1"],
                                    cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
            try:
                wait_for_next_save(proc)  # the first save sweeps any temporary file an earlier kill left
                started = time.monotonic()
                wait_for_next_save(proc)
                if kill % 2:  # a random moment of a write: soon after its temporary file appears
                    wait_for(lambda: any(folder.glob(".last.*.tmp")), proc, log, poll=0.001)
                    time.sleep(moments.uniform(0, 0.005))
                else:  # a random moment of a whole save/train cycle, as timed just now
                    time.sleep(moments.uniform(0, time.monotonic() - started))
            finally:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        mid_write += bool(list(folder.glob(".*.tmp")))
        iters.append(load_checkpoint(last)["iter"])  # raises if `last` were damaged
    print(f"\n5 SIGKILLs: `last` loadable after each, at iterations {iters}; {mid_write} cut a write short")
    assert iters == sorted(iters) and iters[-1] < N

    (folder / ".last.stale0001.tmp").write_bytes(b"left by a kill mid-write")
    assert main([*argv, "--max_iter", str(N)]) == 0  # resumed here, with the same single thread
    assert not list(folder.glob(".*.tmp"))  # stale temporary files are swept at the first save
    assert_same_run(tmp_path, "killed", reference)


def test_sigint_then_sigterm_save_close_the_bar_and_exit_128_plus_signum(tmp_path, tiny_dsprites, reference):
    argv = run_args(tmp_path, tiny_dsprites, *COMMON, "--viz_name", "signal", "--display_step", "3",
                    "--max_iter", str(N))
    last, log = tmp_path / "checkpoints" / "signal" / "last", tmp_path / "stderr.txt"
    stops = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "main.py", *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                    stderr=err, text=True)
            for line in proc.stdout:
                if re.match(r"\[\d+\] recon_loss", line):  # mid-run: pictures were just drawn
                    break
            proc.send_signal(sig)
            out = proc.stdout.read()
            proc.wait(timeout=120)
        assert proc.returncode == 128 + sig, log.read_text()[-2000:]
        stopped = re.search(rf"Received {sig.name} at iteration (\d+): checkpoint saved", out)
        assert stopped, out
        stops.append(int(stopped.group(1)))
        assert load_checkpoint(last)["iter"] == stops[-1]
        assert log.read_text().endswith("\n")  # the progress bar was closed, not left mid-line
    assert 3 <= stops[0] < stops[1] < N
    # Resumed in this process, the twice-stopped run ends exactly where the uninterrupted one did.
    assert main(argv) == 0
    assert_same_run(tmp_path, "signal", reference)


# --------------------------------------------------------------------------- 2. exact resume


def test_stopping_at_max_iter_and_resuming_is_bit_identical(tmp_path, tiny_dsprites, reference):
    """Pictures at 6, 7 (the end of the first part, written to files), 12, 18... and at 4, 8, 12... in the
    reference; a partial gather at 7 here only."""
    argv = run_args(tmp_path, tiny_dsprites, *COMMON, "--viz_name", "split", "--display_step", "6")
    assert main([*argv, "--max_iter", "7", "--save_output", "True"]) == 0
    assert (tmp_path / "outputs" / "split" / "7" / "traverse_random_img.gif").exists()
    assert main([*argv, "--max_iter", str(N)]) == 0
    assert 7 in {json.loads(line)["iter"] for line in (tmp_path / "outputs" / "split" / "metrics.jsonl").open()}
    assert_same_run(tmp_path, "split", reference)


# --------------------------------------------------------------------------- 3. safe loading


class Payload:
    """Unpickling this object calls `call(*args)`: the shape of a malicious checkpoint."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, tiny_dsprites, capsys):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(open, str(live), "w")))
    assert live.exists()  # such a payload works when unpickled freely

    marker, last = tmp_path / "marker", tmp_path / "checkpoints" / "evil" / "last"
    last.parent.mkdir(parents=True)
    payloads = {"open": Payload(open, str(marker), "w"), "os.system": Payload(os.system, f"touch '{marker}'")}
    writers = {
        "torch zip": lambda obj: torch.save(obj, last),
        "torch legacy": lambda obj: torch.save(obj, last, _use_new_zipfile_serialization=False),
        "plain pickle": lambda obj: last.write_bytes(pickle.dumps(obj, protocol=2)),
    }
    for (kind, write), (name, payload) in itertools.product(writers.items(), payloads.items()):
        write({"iter": 1, "model_states": {"net": payload}})
        before = last.read_bytes()
        assert main(run_args(tmp_path, tiny_dsprites, "--viz_name", "evil", "--max_iter", "1")) == 1, kind
        err = capsys.readouterr().err
        assert "was refused" in err and name.split(".")[-1] in err and "--viz_name" in err, (kind, name, err)
        assert not marker.exists(), (kind, name)
        assert last.read_bytes() == before


def test_damaged_or_foreign_checkpoint_files_are_a_clear_error(tmp_path):
    good = tmp_path / "good"
    torch.save({"iter": 1, "model_states": {"net": {}}}, good)
    blobs = {"truncated": good.read_bytes()[:300], "random bytes": os.urandom(2000), "text": b"hello\n",
             "empty": b"", "not a checkpoint": None}
    for kind, blob in blobs.items():
        path = tmp_path / kind
        if blob is None:
            torch.save({"weights": torch.zeros(2)}, path)
        else:
            path.write_bytes(blob)
        with pytest.raises(CheckpointError, match="not a readable checkpoint|not a β-VAE checkpoint") as err:
            load_checkpoint(path)
        assert str(path) in str(err.value) and "--viz_name" in str(err.value), kind


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reference_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(legacy, tmp_path, tiny_dsprites, monkeypatch,
                                                                capsys):
    """1Konny/Beta-VAE's keys, an old Adam state (int steps, id keys), every tensor tagged cuda:0."""
    from model import BetaVAE_H

    model = BetaVAE_H(z_dim=10, nc=1)
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.rand(4, 1, 64, 64))[0].sum().backward()
    optim.step()
    current = optim.state_dict()
    ids = [140_000_000_000 + 8 * i for i in range(len(current["param_groups"][0]["params"]))]
    old_optim = {
        "state": {ids[i]: {"step": int(s["step"]), "exp_avg": s["exp_avg"], "exp_avg_sq": s["exp_avg_sq"]}
                  for i, s in current["state"].items()},
        "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
                          "params": ids}],
    }
    path = tmp_path / "checkpoints" / "ref" / "last"
    path.parent.mkdir(parents=True)
    win_states = {"recon": "window_1", "kld": None, "mu": None, "var": None}
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # as saved from a GPU
        torch.save({"iter": 5, "win_states": win_states, "model_states": {"net": model.state_dict()},
                    "optim_states": {"optim": old_optim}}, path, _use_new_zipfile_serialization=not legacy)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # really tagged for a GPU
    assert main(run_args(tmp_path, tiny_dsprites, "--viz_name", "ref", "--max_iter", "7", "--batch_size", "8",
                         "--save_output", "False")) == 0
    assert "Resumed from" in capsys.readouterr().out
    resumed = load_checkpoint(path)
    assert resumed["iter"] == 7 and resumed["optim_states"]["optim"]["state"][0]["step"].item() == 3


# --------------------------------------------------------------------------- 4. mismatch


def test_resuming_with_other_flags_is_refused_and_touches_nothing(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, "--viz_name", "mm", "--model", "B", "--objective", "B",
                    "--batch_size", "8", "--save_output", "False")
    assert main([*argv, "--max_iter", "2"]) == 0
    celeba = tiny_dsprites / "CelebA"
    celeba.mkdir()
    for i in range(8):
        Image.new("RGB", (20, 20), (30 * i, 0, 0)).save(celeba / f"{i}.png")
    before = digest(tmp_path / "checkpoints") | digest(tmp_path / "outputs")
    capsys.readouterr()
    for flags, named in [(["--model", "H"], "--model"), (["--z_dim", "6"], "--z_dim"),
                         (["--objective", "H"], "--objective"), (["--dataset", "celeba"], "image channels")]:
        assert main([*argv, "--max_iter", "4", *flags]) == 1, flags
        out, err = capsys.readouterr()
        assert named in err and "does not match" in err, err
        assert "--viz_name" in err and "--ckpt_name" in err  # how to start fresh instead
        assert "Starting fresh" not in out
        assert digest(tmp_path / "checkpoints") | digest(tmp_path / "outputs") == before


# --------------------------------------------------------------------------- 5. numerical faults


def poison_model(monkeypatch, term: str, at_call: int) -> None:
    """Make the model's at_call-th training forward pass yield NaN in one loss term."""
    build_model = betavae_module.build_model

    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        forward, calls = model.forward, [0]

        def poisoned(x):
            x_logits, mu, logvar = forward(x)
            calls[0] += model.training
            if model.training and calls[0] == at_call:
                if term == "reconstruction":
                    x_logits = x_logits * float("nan")
                else:
                    logvar = logvar + float("nan")
            return x_logits, mu, logvar

        model.forward = poisoned
        return model

    monkeypatch.setattr(betavae_module, "build_model", build)


@pytest.mark.parametrize("term", ["reconstruction", "KL"])
def test_nan_loss_stops_naming_iteration_and_term_and_keeps_the_checkpoint(term, tmp_path, tiny_dsprites,
                                                                          monkeypatch, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *COMMON, "--viz_name", "nan", "--gather_step", "1")
    assert main([*argv, "--max_iter", "3"]) == 0
    last = tmp_path / "checkpoints" / "nan" / "last"
    before = last.read_bytes()
    poison_model(monkeypatch, term, at_call=2)  # resumed at 3: the second step is iteration 5
    assert main([*argv, "--max_iter", "10", "--save_step", "100"]) == 1
    err = capsys.readouterr().err
    assert f"the {term} term of the loss became NaN or inf at iteration 5" in err
    assert "last good checkpoint was kept" in err
    assert last.read_bytes() == before


def test_exploding_learning_rate_stops_with_finite_weights_on_disk(tmp_path, tiny_dsprites, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *COMMON, "--viz_name", "lr", "--lr", "1e30", "--save_step", "1",
                    "--max_iter", "20")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"became NaN or inf (at|by) iteration \d+", err), err
    kept = load_checkpoint(tmp_path / "checkpoints" / "lr" / "last")
    assert kept["iter"] < 20
    assert all(torch.isfinite(w).all() for w in kept["model_states"]["net"].values())


# --------------------------------------------------------------------------- 6. bad data


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def bad_dsprites_files(good: bytes) -> dict:
    flipped = bytearray(good)
    flipped[200:400] = bytes(b ^ 0xFF for b in flipped[200:400])
    imgs = np.zeros((16, 64, 64), np.uint8)
    classes = np.zeros((16, 6), np.int64)
    return {
        "truncated": (good[: len(good) // 2], "corrupted or truncated"),
        "corrupted": (bytes(flipped), "corrupted or truncated"),
        "empty": (b"", "corrupted or truncated"),
        "missing keys": (npz_bytes(imgs=imgs), "no latents_classes"),
        "wrong image shape": (npz_bytes(imgs=np.zeros((16, 32, 32), np.uint8), latents_classes=classes),
                              "expected uint8 (N, 64, 64)"),
        "wrong image type": (npz_bytes(imgs=imgs.astype(np.float32), latents_classes=classes),
                             "expected uint8 (N, 64, 64)"),
        "wrong factor shape": (npz_bytes(imgs=imgs, latents_classes=classes[:5]), "latents_classes has shape"),
    }


def test_bad_dsprites_files_are_a_clear_error(tmp_path, capsys):
    dset_dir = tmp_path / "data"
    path = dset_dir / DSPRITES_FILE
    write_dsprites_npz(path, n=64)
    for kind, (blob, message) in bad_dsprites_files(path.read_bytes()).items():
        path.write_bytes(blob)
        assert main(run_args(tmp_path, dset_dir, "--viz_name", "bad", "--max_iter", "1")) == 1, kind
        err = capsys.readouterr().err
        assert str(path) in err and message in err and "Delete it" in err, (kind, err)
    # The run stopped before writing anything, so it removed the folders it had made (RunLock.release).
    assert [p for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()] == []  # no checkpoint, no leftovers


def test_bad_data_exits_1_without_a_stack_trace(tmp_path):
    dset_dir = tmp_path / "data"
    (dset_dir / DSPRITES_FILE).parent.mkdir(parents=True)
    (dset_dir / DSPRITES_FILE).write_bytes(b"PK\x03\x04 cut short")
    done = subprocess.run([sys.executable, "main.py", *run_args(tmp_path, dset_dir)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    # one error line (after, on a busy machine, the warning that says so) and no stack trace
    assert [line for line in done.stderr.splitlines() if "the machine is busy" not in line][0] \
        .startswith("error: ") and "Traceback" not in done.stderr
    assert str(dset_dir / DSPRITES_FILE) in done.stderr


def image_folder_with_faults(folder: Path, damaged: int) -> None:
    """Good images in every mode and size, plus files that are not images or are damaged."""
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(6):
        Image.fromarray(rng.randint(0, 255, (50 + i, 40, 3), np.uint8)).save(folder / f"rgb{i}.jpg")
    for mode in ("L", "LA", "RGBA", "P", "1", "I;16", "CMYK"):
        Image.new(mode, (33, 71)).save(folder / f"mode_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}")
    (folder / "notes.txt").write_text("not an image")
    (folder / "header_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    whole = (folder / "rgb0.jpg").read_bytes()
    for i in range(damaged):
        (folder / f"body_cut_{i:02d}.jpg").write_bytes(whole[: len(whole) // 2])  # header fine, body truncated


def test_image_folder_faults_are_skipped_converted_and_counted(tmp_path):
    image_folder_with_faults(tmp_path / "CelebA", damaged=12)
    with pytest.warns(UserWarning) as caught:
        data = ImageFolder(tmp_path / "CelebA")
        assert len(data) == 6 + 7 + 12  # header_broken.jpg skipped, notes.txt ignored
        for _ in range(2):  # two epochs: a damaged file is reported once, not every time it is drawn
            for i in range(len(data)):
                image = data[i]
                assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3, messages  # one for the header, then damaged bodies at 1 and at 10
    assert "skipped 1 file(s)" in messages[0] and "header_broken.jpg" in messages[0]
    assert "1 image(s) could not be decoded" in messages[1] and "10 image(s)" in messages[2]
    assert data.undecodable == {p for p in data.files if p.name.startswith("body_cut")}
    # A short run on that folder trains.
    with pytest.warns(UserWarning, match="could not be decoded|skipped"):
        assert main(run_args(tmp_path, tmp_path, "--dataset", "celeba", "--num_workers", "0", "--batch_size", "8",
                             "--max_iter", "4", "--viz_name", "folder", "--save_output", "False")) == 0


def test_empty_or_missing_image_folder_is_a_clear_error(tmp_path, capsys):
    argv = run_args(tmp_path, tmp_path, "--dataset", "3dchairs", "--max_iter", "1")
    assert main(argv) == 1
    assert str(tmp_path / "3DChairs") in capsys.readouterr().err
    (tmp_path / "3DChairs").mkdir()
    (tmp_path / "3DChairs" / "readme.txt").write_text("images go here")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "3DChairs") in err and "no readable images" in err and "--dset_dir" in err


# --------------------------------------------------------------------------- 7. bad flags


@pytest.mark.parametrize("flag,value", [
    ("--batch_size", "0"), ("--batch_size", "-8"), ("--z_dim", "0"), ("--lr", "0"), ("--lr", "-1e-4"),
    ("--lr", "nan"), ("--lr", "inf"), ("--gather_step", "0"), ("--display_step", "0"), ("--save_step", "0"),
    ("--snapshot_step", "0"), ("--max_iter", "-1"), ("--C_stop_iter", "0"), ("--image_size", "32"),
    ("--seed", "-1"), ("--beta1", "1"), ("--beta", "-4"), ("--gamma", "nan"), ("--ckpt_name", ""),
])
def test_bad_flag_is_an_argparse_error_before_any_data_is_read(flag, value, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(main_module, "load_dataset", lambda *a: pytest.fail("data was read"))
    with pytest.raises(SystemExit) as stop:
        main(run_args(tmp_path, tmp_path / "data", flag, value))
    assert stop.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- 8. disk


def fail_fsync(monkeypatch, times: int | None, under: Path | None = None) -> None:
    """os.fsync raises ENOSPC, as on a full disk: `times` times, or always (None); only for files under
    `under` when given (found through /proc/self/fd), so that other files' writes do not use up the count."""
    real, count = os.fsync, [0]

    def fsync(fd):
        if under is not None and not os.readlink(f"/proc/self/fd/{fd}").startswith(str(under)):
            return real(fd)
        count[0] += 1
        if times is None or count[0] <= times:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_keeps_the_previous_checkpoint_and_training_goes_on(tmp_path, tiny_dsprites, monkeypatch, capsys):
    argv = run_args(tmp_path, tiny_dsprites, *COMMON, "--viz_name", "disk", "--save_step", "1",
                    "--gather_step", "1")
    assert main([*argv, "--max_iter", "3"]) == 0
    folder = tmp_path / "checkpoints" / "disk"
    before = digest(folder)
    capsys.readouterr()

    with monkeypatch.context() as m:  # every write fails: periodic saves warn, the final one is an error
        m.setattr(main_module, "check_writable", lambda *a: None)  # the disk fills after the start-up check
        fail_fsync(m, times=None)
        assert main([*argv, "--max_iter", "6"]) == 1
    out, err = capsys.readouterr()
    for step in (4, 5):
        assert f"could not write checkpoint {folder / 'last'} at iteration {step}" in out
    assert "No space left on device" in out and "is intact" in out
    assert "final checkpoint of iteration 6 could not be written" in err and "run the same command again" in err
    assert digest(folder) == before  # bit-identical, and no temporary file left behind
    metrics = (tmp_path / "outputs" / "disk" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in metrics][-3:] == [4, 5, 6]  # training went on to the end

    with monkeypatch.context() as m:  # the disk recovers: the run resumes at 3 and ends saved
        m.setattr(main_module, "check_writable", lambda *a: None)
        fail_fsync(m, times=2, under=folder)  # the checkpoints' disk recovers after two more failed writes
        assert main([*argv, "--max_iter", "6"]) == 0
    out = capsys.readouterr().out
    assert "Resumed from" in out and "at iteration 4 (" in out and "at iteration 5 (" in out
    assert load_checkpoint(folder / "last")["iter"] == 6
