"""The visdom page a person opens shows the curves: headless Chromium against a real server.

Needs Debian's `chromium` (apt-get install -y chromium) and, once, `npm` to fetch the page
assets into scripts/visdom_static/ (scripts/visdom_server.py --fetch-only). Skipped, with the
reason printed, where chromium is not on PATH or visdom is not installed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

visdom = pytest.importorskip("visdom", reason="visdom is not installed (pip install 'visdom==0.2.4' ...)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install -y chromium)")

from monitoring.visdom_sink import VisdomLogger  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = ROOT / "scripts" / "visdom_server.py"
TITLES = ["reconstruction loss", "KL divergence", "posterior mean", "posterior variance", "disentanglement scores"]
PLOTLY_BLUE, PLOTLY_ORANGE = (31, 119, 180), (255, 127, 14)  # the first two trace colours


def load_server_helper():
    spec = importlib.util.spec_from_file_location("visdom_server", SERVER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    """A server with the page assets (fetched from npm once), holding a few pushed points."""
    fetch = subprocess.run([sys.executable, str(SERVER_SCRIPT), "--fetch-only"],
                           capture_output=True, text=True, timeout=900)
    assert fetch.returncode == 0, f"fetching the page assets failed (needs npm):\n{fetch.stdout}{fetch.stderr}"

    helper = load_server_helper()
    tmp = tmp_path_factory.mktemp("visdom_page")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_file = tmp / "server.log"
    process = helper.launch(port, tmp / "envs", log_file, "--no-fetch")
    try:
        helper.wait_until_up(port, process, log_file, timeout=120)
        push_points(port)
        yield port, tmp
    finally:
        process.terminate()
        process.wait(timeout=10)


def push_points(port: int) -> None:
    logger = VisdomLogger("page", port=port)
    for i in range(1, 11):
        logger.scalars({"iter": 100 * i, "recon_loss": 60.0 / i, "total_kld": 0.9 * i, "mean_kld": 0.3 * i,
                        "kld": [0.5 * i, 0.3 * i, 0.1 * i], "mu": [0.1 * i, -0.1 * i, 0.0],
                        "var": [1.0 / i, 0.5, 1.0], "C": 0.25 * i})
        if i % 5 == 0:
            logger.flush(100 * i)
    logger.scalars({"iter": 1000, "eval": {"beta_vae": 0.8, "mig": 0.25}})
    logger.images(1000, "reconstruction", torch.rand(3, 64, 128))
    logger.close()
    assert logger.connected


def chromium(tmp: Path, url: str, *mode: str) -> subprocess.CompletedProcess:
    # --virtual-time-budget lets the page run its scripts (socket, React, plotly) to rest
    # before the dump or the screenshot. --no-sandbox: CI runs as root.
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars", "--window-size=1400,1100",
               "--virtual-time-budget=20000", *mode, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_page_renders_every_curve(page_server):
    port, tmp = page_server
    dom = chromium(tmp, f"http://127.0.0.1:{port}/env/page_lines", "--dump-dom").stdout
    for title in TITLES:
        assert f">{title}<" in dom, f"no window titled {title!r} in the page"
    assert dom.count('class="main-svg"') >= len(TITLES), "plotly did not draw the windows"
    legend = set(re.findall(r'data-unformatted="([^"]+)"', dom))
    assert {"z0", "z1", "z2", "mean", "total", "C", "beta_vae", "mig"} <= legend, legend
    # One drawn line per trace: 1 + (3 + 3) + 3 + 3 + 2.
    assert dom.count('class="js-line"') >= 15


def test_screenshot_shows_coloured_curves(page_server):
    port, tmp = page_server
    shot = tmp / "lines.png"
    chromium(tmp, f"http://127.0.0.1:{port}/env/page_lines", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20, "the screenshot is blank"
    for colour in (PLOTLY_BLUE, PLOTLY_ORANGE):
        close = (np.abs(pixels - np.array(colour)).sum(axis=2) < 30).sum()
        assert close > 200, f"hardly any pixels of trace colour {colour}: the curves are not drawn"


def test_reconstruction_picture_is_shown(page_server):
    port, tmp = page_server
    dom = chromium(tmp, f"http://127.0.0.1:{port}/env/page_reconstruction", "--dump-dom").stdout
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom), "no reconstruction picture in the page"
