"""VisdomLogger against a real visdom server started with scripts/visdom_server.py.

The windows are read back through visdom's own client (get_window_data, win_exists), as a
person's browser would see them. The server runs with --no-fetch: the data API needs none of
the page assets, so these tests never touch the npm registry (tests/test_visdom_browser.py does).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

visdom = pytest.importorskip("visdom", reason="visdom is not installed (pip install 'visdom==0.2.4' ...)")

from viz_visdom import VisdomLogger  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Z = 4
LINE_WINDOWS = ["reconstruction_loss", "kl_divergence", "posterior_mean", "posterior_variance"]


def load_server_helper():
    spec = importlib.util.spec_from_file_location("visdom_server", ROOT / "scripts" / "visdom_server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


helper = load_server_helper()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A visdom server process on a fixed free port that a test can stop and start again."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.env_path = root / "envs"
        self.process = None

    def start(self, env_path: Path | None = None, *extra: str) -> None:
        self.env_path = env_path or self.env_path
        log_file = self.root / f"server-{time.monotonic_ns()}.log"
        args = extra or ("--no-fetch", "--static-dir", str(self.root / "static"))
        self.process = helper.launch(self.port, self.env_path, log_file, *args)
        helper.wait_until_up(self.port, self.process, log_file, timeout=120)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self):
        with warnings.catch_warnings():
            # visdom 0.2.4 logs through the deprecated Logger.warn when built without its socket.
            warnings.filterwarnings("ignore", "The 'warn' method is deprecated", DeprecationWarning)
            return visdom.Visdom(port=self.port, raise_exceptions=True, use_incoming_socket=False)


def record(i: int) -> dict:
    """The i-th gathered record (iteration 100*i); means and variances are told apart by sign."""
    return {"iter": 100 * i, "recon_loss": 100.0 / i, "total_kld": 1.5 * i, "mean_kld": 1.5 * i / Z,
            "loss": 100.0 / i + 1.5 * i, "kld": [0.1 * i + k for k in range(Z)],
            "mu": [-(0.5 * i + k) for k in range(Z)], "var": [1.0 / (i + k + 1) for k in range(Z)],
            "C": 0.2 * i}


def traces(client, win: str, env: str) -> dict[str, dict]:
    window = json.loads(client.get_window_data(win, env))
    return {trace["name"]: trace for trace in window["content"]["data"]}


def drive(logger: VisdomLogger, first: int, last: int, flush_every: int = 5) -> None:
    for i in range(first, last + 1):
        logger.scalars(record(i))
        if i % flush_every == 0:
            logger.flush(100 * i)


def assert_all_points(client, viz: str, count: int) -> None:
    """Every trace of every line window holds iterations 100..100*count exactly once, in order."""
    iters = [100.0 * i for i in range(1, count + 1)]
    for win in LINE_WINDOWS:
        for name, trace in traces(client, win, f"{viz}_lines").items():
            assert trace["x"] == iters, f"{win}/{name}"


def visdom_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "viz_visdom" and r.levelno >= logging.WARNING]


def test_windows_hold_the_buffered_points(server):
    logger = VisdomLogger("run", port=server.port, z_dim=Z, objective="B")
    reader = server.client()

    drive(logger, 1, 7)  # flushed at 5; 6 and 7 stay buffered until the next flush
    assert len(traces(reader, "reconstruction_loss", "run_lines")["reconstruction loss"]["x"]) == 5
    drive(logger, 8, 15)
    logger.scalars({"iter": 1500, "eval": {"beta_vae": 0.9, "mig": 0.3}})
    logger.images(1500, "reconstruction", torch.rand(3, 32, 64))
    logger.images(1500, "traverse_square", torch.rand(1, 40, 40))
    logger.images(1600, "traverse_square", torch.rand(1, 40, 40))  # same window, updated in place
    logger.flush(1500)

    for win in [*LINE_WINDOWS, "disentanglement_scores"]:
        assert reader.win_exists(win, "run_lines"), win
    assert_all_points(reader, "run", 15)
    kl = traces(reader, "kl_divergence", "run_lines")
    assert list(kl) == [f"z{k + 1}" for k in range(Z)] + ["mean", "total", "C"]
    assert kl["C"]["y"] == [0.2 * i for i in range(1, 16)]

    means = traces(reader, "posterior_mean", "run_lines")
    variances = traces(reader, "posterior_variance", "run_lines")
    for k in range(Z):
        assert means[f"z{k + 1}"]["y"] == [record(i)["mu"][k] for i in range(1, 16)]
        assert variances[f"z{k + 1}"]["y"] == [record(i)["var"][k] for i in range(1, 16)]

    scores = traces(reader, "disentanglement_scores", "run_lines")
    assert {name: t["y"] for name, t in scores.items()} == {"beta_vae": [0.9], "mig": [0.3]}

    assert reader.win_exists("reconstruction", "run_reconstruction")
    traverse_env = json.loads(reader.get_window_data(None, "run_traverse"))
    assert list(traverse_env) == ["traverse_square"]
    assert traverse_env["traverse_square"]["type"] == "image"
    assert traverse_env["traverse_square"]["content"]["caption"] == "iteration 1600"
    logger.close()

    # A resumed run (a new logger, same viz_name) appends to the same windows.
    resumed = VisdomLogger("run", port=server.port, z_dim=Z, objective="B")
    drive(resumed, 16, 20)
    resumed.close()
    assert_all_points(reader, "run", 20)


def test_objective_h_and_values_that_are_not_numbers(server):
    logger = VisdomLogger("h", port=server.port, z_dim=2, objective="H")
    # metrics.jsonl writes NaN as "nan"; a failed evaluation may report None: gaps, not errors.
    logger.scalars({**record(1), "recon_loss": "nan", "kld": [0.1, None], "mu": [0.0, 1.0], "var": [1.0, 0.5],
                    "eval": {"mig": None}})
    logger.images(100, "reconstruction", torch.full((3, 8, 8), float("nan")))
    logger.flush(100)
    reader = server.client()
    kl = traces(reader, "kl_divergence", "h_lines")
    assert list(kl) == ["z1", "z2", "mean", "total"]
    assert kl["z2"]["y"] == [None]
    assert traces(reader, "reconstruction_loss", "h_lines")["reconstruction loss"]["y"] == [None]
    assert reader.win_exists("reconstruction", "h_reconstruction")


def test_no_server_warns_once_and_keeps_going(tmp_path, caplog, recwarn):
    caplog.set_level(logging.INFO, logger="viz_visdom")
    started = time.monotonic()
    logger = VisdomLogger("offline", port=free_port(), z_dim=Z, objective="B")
    assert not logger.connected
    drive(logger, 1, 15)
    logger.images(1500, "reconstruction", torch.rand(3, 8, 8))
    logger.close()

    messages = visdom_warnings(caplog)
    assert len(messages) == 1, messages
    assert "sh scripts/visdom_server.sh" in messages[0]
    assert not [w for w in recwarn if "visdom" in str(w.filename)], [str(w.message) for w in recwarn]
    assert time.monotonic() - started < 10, "a missing server must not hold training up"


@pytest.mark.parametrize("server_state", ["kept", "lost"])
def test_outage_loses_no_point(server, tmp_path, caplog, server_state):
    """Stop the server mid-run and start it again on the same port: every point arrives once.

    kept: the server restarts from its saved envs. lost: it restarts empty, and the logger
    rebuilds its windows from the points it kept.
    """
    caplog.set_level(logging.INFO, logger="viz_visdom")
    logger = VisdomLogger("outage", port=server.port, z_dim=Z, objective="B")
    drive(logger, 1, 5)

    server.stop()
    drive(logger, 6, 12)  # two flushes fail: one warning, not two
    logger.images(1200, "reconstruction", torch.rand(3, 16, 16))
    assert not logger.connected
    assert len(visdom_warnings(caplog)) == 1

    server.start(tmp_path / "fresh-envs" if server_state == "lost" else None)
    drive(logger, 13, 15)
    assert logger.connected
    reader = server.client()
    assert_all_points(reader, "outage", 15)
    assert reader.win_exists("reconstruction", "outage_reconstruction")

    server.stop()  # a second outage gets its own single warning
    drive(logger, 16, 20)
    assert len(visdom_warnings(caplog)) == 2
    logger.close()


def test_replay_restores_the_curves(server, tmp_path):
    metrics = tmp_path / "outputs" / "run" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    lines = [record(i) for i in range(1, 13)] + [{"iter": 1200, "eval": {"mig": 0.4}}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    command = [sys.executable, str(ROOT / "replay.py"), str(metrics), "--viz_name", "replayed",
               "--port", str(server.port), "--chunk", "5"]
    for _ in range(2):  # replaying twice replaces the windows rather than doubling the points
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr
    reader = server.client()
    assert_all_points(reader, "replayed", 12)
    assert list(traces(reader, "kl_divergence", "replayed_lines"))[-1] == "C"  # objective read from the records
    assert traces(reader, "disentanglement_scores", "replayed_lines")["mig"]["y"] == [0.4]


def test_replay_without_server_fails_clearly(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(record(1)) + "\n")
    result = subprocess.run([sys.executable, str(ROOT / "replay.py"), str(metrics), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1
    assert "no visdom server" in result.stderr
