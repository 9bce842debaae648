"""VisdomLogger, replay.py and scripts/visdom_server.py against a real visdom server.

The windows are read back through visdom's own client (get_window_data, win_exists), as a
person's browser would see them. The server runs with --no-fetch: the data API needs none of
the page assets, so these tests never touch the npm registry (tests/test_visdom_browser.py does).
The logger sends from a background thread; `drain` waits for its next attempt.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch

visdom = pytest.importorskip("visdom", reason="visdom is not installed (pip install 'visdom==0.2.4' ...)")

from monitoring.visdom_sink import VisdomLogger, read_back  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Z = 4
LINE_WINDOWS = ["reconstruction_loss", "kl_divergence", "posterior_mean", "posterior_variance", "losses"]
SINK = "monitoring.visdom_sink"  # the visdom sink's logger


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
        self.log_file: Path | None = None

    def start(self, env_path: Path | None = None, *extra: str) -> None:
        self.env_path = env_path or self.env_path
        self.log_file = self.root / f"server-{time.monotonic_ns()}.log"
        args = extra or ("--no-fetch", "--static-dir", str(self.root / "static"))
        self.process = helper.launch(self.port, self.env_path, self.log_file, *args)
        helper.wait_until_up(self.port, self.process, self.log_file, timeout=120)

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


def record(i: int, z: int = Z) -> dict:
    """The i-th gathered record (iteration 100*i); means and variances are told apart by sign."""
    return {"iter": 100 * i, "recon_loss": 100.0 / i, "total_kld": 1.5 * i, "mean_kld": 1.5 * i / z,
            "loss": 100.0 / i + 1.5 * i, "kld": [0.1 * i + k for k in range(z)],
            "mu": [-(0.5 * i + k) for k in range(z)], "var": [1.0 / (i + k + 1) for k in range(z)],
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


def outage_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SINK and r.levelno >= logging.WARNING
            and "the run goes on" in r.getMessage()]


def back_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SINK and "answers again" in r.getMessage()]


# ------------------------------------------------------------------------------ windows


def test_windows_hold_every_point_and_picture(server):
    logger = VisdomLogger("run", port=server.port)
    reader = server.client()
    drive(logger, 1, 15)
    logger.scalars({"iter": 1500, "eval": {"beta_vae": 0.9, "mig": 0.3}})
    logger.images(1500, "reconstruction", torch.rand(3, 32, 64))
    logger.images(1500, "traverse_square", torch.rand(1, 40, 40))
    logger.images(1600, "traverse_square", torch.rand(1, 40, 40))  # same window, updated in place
    logger.flush(1500)
    assert logger.drain(10)

    for win in [*LINE_WINDOWS, "disentanglement_scores"]:
        assert reader.win_exists(win, "run_lines"), win
    assert_all_points(reader, "run", 15)
    kl = traces(reader, "kl_divergence", "run_lines")
    assert list(kl) == ["total", "C", "mean"] + [f"z{k}" for k in range(Z)]  # 0-based, like traversals
    assert kl["C"]["y"] == [0.2 * i for i in range(1, 16)]
    assert list(traces(reader, "losses", "run_lines")) == ["loss"]

    means = traces(reader, "posterior_mean", "run_lines")
    variances = traces(reader, "posterior_variance", "run_lines")
    for k in range(Z):
        assert means[f"z{k}"]["y"] == [record(i)["mu"][k] for i in range(1, 16)]
        assert variances[f"z{k}"]["y"] == [record(i)["var"][k] for i in range(1, 16)]

    scores = traces(reader, "disentanglement_scores", "run_lines")
    assert {name: t["y"] for name, t in scores.items()} == {"beta_vae": [0.9], "mig": [0.3]}

    assert reader.win_exists("reconstruction", "run_reconstruction")
    traverse_env = json.loads(reader.get_window_data(None, "run_traverse"))
    assert list(traverse_env) == ["traverse_square"]
    assert traverse_env["traverse_square"]["type"] == "image"
    assert traverse_env["traverse_square"]["content"]["caption"] == "iteration 1600"
    logger.close()


def test_resumed_run_redraws_from_its_history_without_doubling(server):
    """A resumed run (a new logger) gets metrics.jsonl's records as history: the windows then hold
    that history and the new points, not the points the stopped run sent after its checkpoint."""
    first = VisdomLogger("run", port=server.port)
    drive(first, 1, 15)
    first.scalars({"iter": 900, "eval": {"mig": 0.2}})
    first.scalars({"iter": 1500, "eval": {"mig": 0.5}})  # after the checkpoint at 1000: superseded
    first.close()

    history = [record(i) for i in range(1, 11)] + [{"iter": 900, "eval": {"mig": 0.2}}]
    resumed = VisdomLogger("run", port=server.port, history=history)
    drive(resumed, 11, 20)
    resumed.close()
    reader = server.client()
    assert_all_points(reader, "run", 20)
    assert traces(reader, "disentanglement_scores", "run_lines")["mig"]["y"] == [0.2]


def test_windows_adapt_to_the_records(server):
    """New scalars go to one losses window; C, the VAE windows and the scores appear with their keys."""
    logger = VisdomLogger("adapt", port=server.port)
    # An InfoGAN-like run: none of the VAE keys.
    for i in range(1, 4):
        logger.scalars({"iter": i, "d_loss": 1.0 / i, "g_loss": 2.0 / i, "info_loss": 0.1 * i})
    logger.flush(3)
    assert logger.drain(10)
    reader = server.client()
    assert sorted(json.loads(reader.get_window_data(None, "adapt_lines"))) == ["losses"]
    assert list(traces(reader, "losses", "adapt_lines")) == ["d_loss", "g_loss", "info_loss"]

    # A VAE-like run that adds tc_loss midway, and C from the third record on.
    logger = VisdomLogger("tc", port=server.port)
    for i in range(1, 5):
        rec = {k: v for k, v in record(i).items() if k != "C" or i >= 3}
        if i >= 2:
            rec["tc_loss"] = 10.0 * i
        logger.scalars(rec)
        logger.flush(100 * i)
        assert logger.drain(10)
    logger.close()
    losses = traces(reader, "losses", "tc_lines")
    assert list(losses) == ["loss", "tc_loss"]
    assert losses["tc_loss"]["y"] == [None, 20.0, 30.0, 40.0]  # a gap before the key appeared
    kl = traces(reader, "kl_divergence", "tc_lines")
    assert kl["C"]["y"] == [None, None, 0.6000000000000001, 0.8]
    assert all(len(t["x"]) == 4 for t in kl.values())


def test_many_latents_show_the_top_ones_and_the_mean_of_the_rest(server):
    z = 40
    informative = {7: 5.0, 21: 3.0, 33: 1.0}  # KL of the latents that carry information

    def rec(i: int) -> dict:
        kld = [informative.get(k, 0.001) * i for k in range(z)]
        return {"iter": i, "recon_loss": 1.0, "total_kld": sum(kld), "mean_kld": sum(kld) / z, "kld": kld,
                "mu": [float(k) for k in range(z)], "var": [1.0] * z}

    logger = VisdomLogger("wide", port=server.port, top_latents=5)
    for i in (1, 2):
        logger.scalars(rec(i))
    logger.close()
    reader = server.client()
    kl = traces(reader, "kl_divergence", "wide_lines")
    # The three active latents, then the lowest-index inactive ones (stable, not KL noise), in index order.
    assert list(kl) == ["total", "mean", "z0", "z1", "z7", "z21", "z33", "mean of 35 others"]
    means = traces(reader, "posterior_mean", "wide_lines")
    rest = [k for k in range(z) if k not in (0, 1, 7, 21, 33)]
    assert means["mean of 35 others"]["y"] == [pytest.approx(sum(rest) / len(rest))] * 2
    assert means["z21"]["y"] == [21.0, 21.0]


def test_heatmap_is_drawn_with_its_labels(server):
    logger = VisdomLogger("heat", port=server.port)
    matrix = torch.arange(12, dtype=torch.float64).reshape(4, 3) / 10  # latents x factors
    logger.heatmap(500, "DCI importance", matrix, [f"z{i}" for i in range(4)], ["shape", "scale", "posX"])
    logger.close()
    window = json.loads(server.client().get_window_data("DCI importance", "heat_lines"))
    data = window["content"]["data"][0]
    assert data["type"] == "heatmap"
    assert data["z"] == matrix.tolist()
    assert data["y"] == ["z0", "z1", "z2", "z3"] and data["x"] == ["shape", "scale", "posX"]
    assert "iteration 500" in window["title"]
    with pytest.raises(ValueError, match="must match"):
        logger.heatmap(500, "bad", matrix, ["z0"], ["a"])


def test_values_that_are_not_numbers_are_gaps(server):
    logger = VisdomLogger("h", port=server.port)
    # metrics.jsonl writes NaN as "nan"; a failed evaluation may report None: gaps, not errors.
    logger.scalars({**{k: v for k, v in record(1, z=2).items() if k != "C"}, "recon_loss": "nan",
                    "kld": [0.1, None], "eval": {"mig": None}})
    logger.images(100, "reconstruction", torch.full((3, 8, 8), float("nan")))
    logger.close()
    reader = server.client()
    kl = traces(reader, "kl_divergence", "h_lines")
    assert list(kl) == ["total", "mean", "z0", "z1"]
    assert kl["z1"]["y"] == [None]
    assert traces(reader, "reconstruction_loss", "h_lines")["reconstruction loss"]["y"] == [None]
    assert reader.win_exists("reconstruction", "h_reconstruction")


# ------------------------------------------------------------------------------ outages


def test_no_server_warns_once_and_keeps_going(caplog, recwarn):
    caplog.set_level(logging.INFO, logger="monitoring.visdom_sink")
    started = time.monotonic()
    logger = VisdomLogger("offline", port=free_port(), metrics_path=Path("outputs/offline/metrics.jsonl"))
    drive(logger, 1, 15)
    logger.images(1500, "reconstruction", torch.rand(3, 8, 8))
    assert time.monotonic() - started < 0.5, "a missing server must not hold training up"
    logger.close()

    messages = outage_warnings(caplog)
    assert len(messages) == 1, messages
    assert "sh scripts/visdom_server.sh" in messages[0] and "connection refused" in messages[0]
    closing = [r.getMessage() for r in caplog.records if "were not sent" in r.getMessage()]
    assert len(closing) == 1 and closing[0].startswith("15 points and 1 picture were not sent")
    assert "python replay.py outputs/offline/metrics.jsonl --viz_name offline" in closing[0]
    assert not [w for w in recwarn if "visdom" in str(w.filename)], [str(w.message) for w in recwarn]


@pytest.mark.parametrize("server_state", ["kept", "lost"])
def test_outage_loses_no_point(server, tmp_path, caplog, server_state):
    """Stop the server mid-run and start it again on the same port: every point arrives once.

    kept: the server restarts from its saved envs. lost: it restarts empty, and the logger
    rebuilds its windows from the points it kept.
    """
    caplog.set_level(logging.INFO, logger="monitoring.visdom_sink")
    logger = VisdomLogger("outage", port=server.port)
    drive(logger, 1, 5)
    assert logger.drain(10)

    server.stop()
    drive(logger, 6, 12)
    logger.images(1200, "reconstruction", torch.rand(3, 16, 16))
    assert not logger.drain(10)  # the attempt failed ...
    logger.flush(1200)
    assert not logger.drain(10)  # ... and so did the next: one warning, not two
    assert not logger.connected and logger.unsent() == (7, 1)
    assert len(outage_warnings(caplog)) == 1

    server.start(tmp_path / "fresh-envs" if server_state == "lost" else None)
    drive(logger, 13, 15)
    assert logger.drain(10) and logger.connected
    assert len(back_messages(caplog)) == 1
    reader = server.client()
    assert_all_points(reader, "outage", 15)
    assert reader.win_exists("reconstruction", "outage_reconstruction")

    server.stop()  # a second outage gets its own single warning
    drive(logger, 16, 20)
    assert not logger.drain(10)
    assert len(outage_warnings(caplog)) == 2
    logger.close()


# ------------------------------------------------------------------------------ replay


def run_replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "replay.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_replay_restores_the_curves_and_reports_what_the_server_holds(server, tmp_path):
    metrics = tmp_path / "outputs" / "run" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    lines = [json.dumps(record(i)) for i in range(1, 13)] + [json.dumps({"iter": 1200, "eval": {"mig": 0.4}})]
    lines.insert(3, '{"iter": 400, "recon')  # damage: skipped and counted
    metrics.write_text("\n".join(lines) + "\n")
    for _ in range(2):  # replaying twice replaces the windows rather than doubling the points
        result = run_replay(str(metrics), "--viz_name", "replayed", "--port", str(server.port), "--chunk", "5")
        assert result.returncode == 0, result.stderr
    assert "replayed 13 records (skipped 1 unreadable line)" in result.stdout
    # The report is read back from the server: every window with its points.
    assert "reconstruction loss: 12 points x 1 series" in result.stdout
    assert "KL divergence: 12 points x 7 series" in result.stdout
    assert "disentanglement scores: 1 points x 1 series" in result.stdout
    reader = server.client()
    assert_all_points(reader, "replayed", 12)
    assert list(traces(reader, "kl_divergence", "replayed_lines"))[1] == "C"  # C read from the records
    assert traces(reader, "disentanglement_scores", "replayed_lines")["mig"]["y"] == [0.4]
    assert read_back("http://localhost", server.port, "replayed_lines")["losses"] == {"loss": 12}


def test_replay_without_server_fails_clearly(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(record(1)) + "\n")
    result = run_replay(str(metrics), "--port", str(free_port()))
    assert result.returncode == 1
    assert "no visdom server answers" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["0", "65536", "-1", "http"])
def test_ports_outside_the_range_are_refused(tmp_path, port):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps(record(1)) + "\n")
    for command in ([sys.executable, str(ROOT / "replay.py"), str(metrics), "--port", port],
                    [sys.executable, str(ROOT / "scripts" / "visdom_server.py"), "--port", port]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 2, result.stderr
        assert "--port: must be a port number from 1 to 65535" in result.stderr


# ------------------------------------------------------------------------------ the server script


def test_page_opens_the_latest_run_and_loads_without_css_errors(server):
    envs = server.env_path
    for age, name in ((100, "older_lines"), (10, "newer_lines"), (0, "newer_traverse")):
        path = envs / f"{name}.json"
        path.write_text(json.dumps({"jsons": {}, "reload": {}}))
        os.utime(path, (time.time() - age, time.time() - age))

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    with pytest.raises(urllib.error.HTTPError) as reply:
        urllib.request.build_opener(NoRedirect).open(f"http://127.0.0.1:{server.port}/", timeout=10)
    assert reply.value.code == 302 and reply.value.headers["Location"] == "/env/newer_lines"

    page = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/env/newer_lines", timeout=10).read().decode()
    assert "older_lines" in page and "newer_traverse" in page  # the page's env list has every run
    for _ in range(2):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/env/older_lines", timeout=10).read()
    assert "user/style.css" not in server.log_file.read_text()


def test_ctrl_c_stops_the_server_quietly(tmp_path):
    port, log_file = free_port(), tmp_path / "server.log"
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "study_lines.json").write_text(json.dumps({"jsons": {}, "reload": {}}))
    process = helper.launch(port, tmp_path / "envs", log_file, "--no-fetch", "--static-dir", str(tmp_path / "s"))
    try:
        helper.wait_until_up(port, process, log_file, timeout=120)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = log_file.read_text()
    assert f"http://localhost:{port}/env/study_lines" in output  # how to pick a run, at start
    assert "visdom server stopped." in output and "Traceback" not in output
