"""Monitoring never costs a record, a picture or training speed.

metrics.jsonl under a full disk, a cut last line and a resume; pictures and curves written
atomically; the visdom logger against servers that never answer or answer with errors.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from monitoring import loggers, plots
from monitoring import pictures as visualize
from monitoring.loggers import JsonlLogger, MultiLogger, build_logger
from monitoring.records import INSTALL_VISDOM, Logger, read_metrics


def rec(i: int) -> dict:
    return {"iter": i, "recon_loss": 10.0 / i, "kld": [0.1 * i, 0.2], "mu": [0.0, 1.0], "var": [1.0, 0.5]}


def iters(path: Path) -> list[int]:
    return [json.loads(line)["iter"] for line in path.read_text().splitlines()]


def warnings_of(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------ metrics.jsonl


class FullDisk:
    """os.write raising ENOSPC while `full`; the first failing call writes half its bytes first,
    as a disk that fills up mid-write does."""

    def __init__(self, monkeypatch):
        self.full, self._real, self._cut = False, os.write, False
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd, data):
        if not self.full:
            return self._real(fd, data)
        if not self._cut:
            self._cut = True
            return self._real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_records_and_writes_them_later_in_order(tmp_path, monkeypatch, caplog):
    path = tmp_path / "metrics.jsonl"
    disk = FullDisk(monkeypatch)
    logger = JsonlLogger(path)
    logger.scalars(rec(1))
    disk.full = True
    for i in range(2, 6):  # half of record 2 reaches the disk, then nothing
        logger.scalars(rec(i))
    logger.flush(5)
    assert logger.unwritten() == 4
    assert iters(path) == [1]  # the cut write was taken back: no half line in the file
    disk.full = False
    logger.scalars(rec(6))
    logger.close()
    assert iters(path) == [1, 2, 3, 4, 5, 6] and logger.unwritten() == 0
    messages = warnings_of(caplog, "monitoring.loggers")
    assert len(messages) == 2, messages  # one for the outage, one when it is over
    assert "No space left on device" in messages[0] and "kept in memory" in messages[0]
    assert "5 waiting records written" in messages[1]  # the four kept and the latest


def test_records_still_unwritten_at_close_are_counted(tmp_path, monkeypatch, caplog):
    path = tmp_path / "metrics.jsonl"
    disk = FullDisk(monkeypatch)
    logger = MultiLogger(JsonlLogger(path), Logger())
    logger.scalars(rec(1))
    disk.full = True
    logger.scalars(rec(2))
    logger.scalars(rec(3))
    logger.close()  # the final retry fails too
    assert logger.unwritten() == 2
    assert iters(path) == [1]
    assert any("2 records could not be written" in m for m in warnings_of(caplog, "monitoring.loggers"))


def write_lines(path: Path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_cut_last_line_is_moved_out_before_appending(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [rec(1), rec(2)], tail='{"iter": 3, "recon_lo')  # power loss mid-line
    logger = JsonlLogger(path, resume_step=2)
    logger.scalars(rec(3))
    logger.close()
    assert iters(path) == [1, 2, 3]
    assert read_metrics(path) == ([rec(1), rec(2), rec(3)], 0)
    assert (tmp_path / "metrics.superseded.jsonl").read_text() == '{"iter": 3, "recon_lo\n'
    assert "a cut last line" in capsys.readouterr().out


def test_resume_moves_the_records_after_the_checkpoint_to_a_kept_side_file(tmp_path, capsys):
    path, side = tmp_path / "metrics.jsonl", tmp_path / "metrics.superseded.jsonl"
    evals = [{"iter": 4, "eval": {"mig": 0.1}}, {"iter": 8, "eval": {"mig": 0.2}}]
    write_lines(path, [rec(1), rec(2), rec(3), rec(4), evals[0], rec(5), rec(6), rec(7), rec(8), evals[1]])
    inode = path.stat().st_ino
    logger = JsonlLogger(path, resume_step=4)  # the checkpoint holds iteration 4
    for i in (5, 6):
        logger.scalars(rec(i))
    logger.close()
    assert iters(path) == [1, 2, 3, 4, 4, 5, 6]  # no iteration twice: the curves are not doubled
    assert path.stat().st_ino != inode  # replaced by a rename (atomic), not rewritten in place
    assert iters(side) == [5, 6, 7, 8, 8]
    assert "moved 5 records after iteration 4" in capsys.readouterr().out

    logger = JsonlLogger(path, resume_step=5)  # a second resume appends to the side file
    logger.close()
    assert iters(path) == [1, 2, 3, 4, 4, 5] and iters(side) == [5, 6, 7, 8, 8, 6]


def test_without_resume_step_the_log_is_only_appended_to(tmp_path):
    """A --train False run may write beside training: it never rewrites the file, and it ends a cut line."""
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [rec(1), rec(2), rec(3)], tail='{"iter": 4, "re')
    inode = path.stat().st_ino
    logger = JsonlLogger(path)
    logger.scalars({"iter": 2, "eval": {"mig": 0.3}})
    logger.close()
    assert path.stat().st_ino == inode and not (tmp_path / "metrics.superseded.jsonl").exists()
    assert read_metrics(path) == ([rec(1), rec(2), rec(3), {"iter": 2, "eval": {"mig": 0.3}}], 1)


def test_a_log_replaced_by_another_run_is_reopened(tmp_path):
    path = tmp_path / "metrics.jsonl"
    beside = JsonlLogger(path)  # e.g. --train False scoring a checkpoint while training resumes
    beside.scalars(rec(1))
    write_lines(path, [rec(1), rec(2), rec(3)])
    trainer = JsonlLogger(path, resume_step=2)  # moves 3 out, replaces the file by a rename
    beside.scalars({"iter": 2, "eval": {"mig": 0.3}})
    trainer.scalars(rec(3))
    beside.close()
    trainer.close()
    assert read_metrics(path)[0] == [rec(1), rec(2), {"iter": 2, "eval": {"mig": 0.3}}, rec(3)]


def test_a_failed_move_keeps_every_line_and_appends_on_a_new_line(tmp_path, monkeypatch, caplog):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [rec(1), rec(2)], tail='{"iter": 3, "re')
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", no_space)
        logger = JsonlLogger(path, resume_step=1)
    assert path.read_bytes() == before
    assert any("stay in the log" in m for m in warnings_of(caplog, "monitoring.loggers"))
    logger.scalars(rec(3))
    logger.close()
    assert read_metrics(path) == ([rec(1), rec(2), rec(3)], 1)  # the cut line stands alone, unread


# ------------------------------------------------------------------------------ build_logger


def test_missing_visdom_names_the_command_that_installs_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "monitoring.visdom_sink", None)  # import fails as when not installed
    logger = build_logger(tmp_path / "run", viz_on=True, viz_name="run", save_curves=False)
    logger.scalars(rec(1))
    logger.close()
    messages = warnings_of(caplog, "monitoring.loggers")
    assert len(messages) == 1 and INSTALL_VISDOM in messages[0]
    assert INSTALL_VISDOM == ("PIP_CONSTRAINT=build-constraints.txt PIP_BUILD_CONSTRAINT=build-constraints.txt "
                              "pip install -r requirements-visdom.txt")
    assert iters(tmp_path / "run" / "metrics.jsonl") == [1] and logger.unwritten() == 0



def test_missing_visdom_names_the_install_command_once(tmp_path, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "visdom", None)  # visdom itself missing: the sink's own ImportError
    monkeypatch.delitem(sys.modules, "monitoring.visdom_sink", raising=False)
    logger = build_logger(tmp_path / "run", viz_on=True, viz_name="run", save_curves=False)
    logger.close()
    messages = warnings_of(caplog, "monitoring.loggers")
    assert len(messages) == 1 and messages[0].count(INSTALL_VISDOM) == 1, messages

# ------------------------------------------------------------------------------ atomic files


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["png", "gif", "labelled", "curves"])
def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch, kind):
    grid = torch.rand(1, 20, 20)
    metrics = tmp_path / "metrics.jsonl"
    write_lines(metrics, [rec(i) for i in range(1, 5)])
    write = {
        "png": lambda: [visualize.save_png(grid, tmp_path / "out" / "a.png")],
        "gif": lambda: [visualize.save_gif([grid, 1 - grid], tmp_path / "out" / "a.gif")],
        "labelled": lambda: [visualize.save_labelled_png(grid, ["z0"], tmp_path / "out" / "a.png")],
        "curves": lambda: plots.save_curves(metrics, tmp_path / "out"),
    }[kind]
    paths = write()
    before = {p: digest(p) for p in paths}
    grid = torch.rand(1, 20, 20)
    write_lines(metrics, [rec(i) for i in range(1, 9)])

    def no_space(fd):  # the disk fills up as the new file is made durable
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        write()
    assert {p: digest(p) for p in paths} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no leftovers


# ------------------------------------------------------------------------------ visdom


visdom = pytest.importorskip("visdom", reason="visdom is not installed (see requirements-visdom.txt)")
from test_visdom import Server, traces  # noqa: E402

from monitoring.visdom_sink import VisdomLogger  # noqa: E402


class Silent:
    """A port that accepts connections and never answers (a hung server, a wrong service)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)  # connections complete in the backlog; nobody reads them
        self.port = self.sock.getsockname()[1]

    def stop(self):
        self.sock.close()


class Failing:
    """An HTTP server answering every request with `status` and `body`."""

    def __init__(self, status: int, body: str):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def timed_training(logger: VisdomLogger, records: int = 20) -> float:
    """What training does between two displays, repeated; returns the slowest call in seconds."""
    picture, slowest = torch.rand(3, 16, 16), 0.0
    for i in range(1, records + 1):
        calls = [(logger.scalars, rec(i))]
        if i % 5 == 0:
            calls.append((logger.flush, i))
        if i % 10 == 0:
            calls.append((lambda step: logger.images(step, "reconstruction", picture), i))
        for call, arg in calls:
            start = time.perf_counter()
            call(arg)
            slowest = max(slowest, time.perf_counter() - start)
    return slowest


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("fake", ["silent", "http 500", "visdom error body"])
def test_a_broken_server_never_slows_training_and_points_arrive_when_a_real_one_is_back(tmp_path, caplog, fake):
    bad = {"silent": Silent, "http 500": lambda: Failing(500, "Internal Server Error"),
           "visdom error body": lambda: Failing(200, "win does not exist")}[fake]()
    start = time.perf_counter()
    logger = VisdomLogger("fake", port=bad.port, timeout=1.0)
    assert time.perf_counter() - start < 0.05
    assert timed_training(logger) < 0.05  # milliseconds, whatever the server does
    wait_for(lambda: warnings_of(caplog, "monitoring.visdom_sink"))
    time.sleep(1.5)  # more failed attempts (the back-off's first pauses): still one warning
    messages = warnings_of(caplog, "monitoring.visdom_sink")
    assert len(messages) == 1, messages
    reason = {"silent": "no answer within 1 s", "http 500": "HTTP 500",
              "visdom error body": "'win does not exist'"}[fake]
    assert reason in messages[0] and "sh scripts/visdom_server.sh" in messages[0]
    assert not logger.connected and logger.unsent() == (20, 1)

    bad.stop()
    server = Server(tmp_path, port=bad.port)  # a real server comes up on the same port
    server.start()
    try:
        assert logger.drain(10)
        logger.close()
        for name, trace in traces(server.client(), "reconstruction_loss", "fake_lines").items():
            assert trace["x"] == [float(i) for i in range(1, 21)], name
        assert server.client().win_exists("reconstruction", "fake_reconstruction")
    finally:
        server.stop()
    assert len(warnings_of(caplog, "monitoring.visdom_sink")) == 2  # and one when it was back


def test_close_waits_a_bounded_time_and_says_what_was_not_sent(caplog):
    silent = Silent()
    try:
        logger = VisdomLogger("hung", port=silent.port, timeout=30.0, close_wait=1.0,
                              metrics_path=Path("outputs/hung/metrics.jsonl"))
        for i in range(1, 8):
            logger.scalars(rec(i))
        logger.flush(7)
        start = time.monotonic()
        logger.close()
        assert time.monotonic() - start < 2.0  # not the 30 s the request may hang
    finally:
        silent.stop()
    closing = [m for m in warnings_of(caplog, "monitoring.visdom_sink") if "were not sent" in m]
    assert len(closing) == 1 and closing[0].startswith("7 points and 0 pictures were not sent")
    assert "python replay.py outputs/hung/metrics.jsonl --viz_name hung" in closing[0]


def test_build_logger_gives_visdom_the_log_as_history(tmp_path, server):
    run_dir = tmp_path / "outputs" / "resumed"
    run_dir.mkdir(parents=True)
    write_lines(run_dir / "metrics.jsonl", [rec(i) for i in range(1, 7)])
    logger = build_logger(run_dir, viz_on=True, viz_name="resumed", port=server.port, save_curves=False,
                          resume_step=4, top_latents=loggers.TOP_LATENTS)
    for i in (5, 6):
        logger.scalars(rec(i))
    logger.close()
    assert logger.unwritten() == 0
    assert iters(run_dir / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]
    kl = traces(server.client(), "kl_divergence", "resumed_lines")
    assert {name: t["x"] for name, t in kl.items()} == {name: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] for name in kl}


def test_traversal_gifs_label_each_latent_above_its_column(tmp_path):
    from PIL import Image, ImageSequence

    from monitoring.pictures import save_traversal_gif

    rows = torch.zeros(3, 4, 1, 64, 64)  # 3 latents, 4 values: dark images, each frame its own shade
    rows += torch.arange(4).reshape(1, 4, 1, 1, 1) * 0.1
    plain = Image.open(save_traversal_gif(rows, tmp_path / "plain.gif"))
    labelled = Image.open(save_traversal_gif(rows, tmp_path / "labelled.gif", ["z0", "z5", "z7"]))
    assert labelled.height == plain.height + 14 and labelled.width == plain.width
    frames = [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(labelled)]
    assert len(frames) == 4
    column = plain.width // 3
    for i in range(3):  # dark text pixels in the header above each column
        assert (frames[0][:14, i * column : (i + 1) * column] < 128).any()
    assert (frames[0][14:, :] < 128).any()  # the images themselves are below
