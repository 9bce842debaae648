"""Live training curves and pictures in visdom (http://localhost:8097 by default).

Start a server first with `sh scripts/visdom_server.sh`. Training never depends on it: with no
server, or one that goes away, the logger warns once per outage, keeps every point and sends
it when the server is back.

Three environments per run, `<viz_name>_lines`, `<viz_name>_reconstruction` and
`<viz_name>_traverse`. Every window has a fixed name derived from its title, so a resumed run
(a new process) appends to the windows of the run it continues.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import requests

from loggers import Logger

try:
    from visdom import Visdom
except ImportError as err:  # loggers.build_logger turns this into a warning
    raise ImportError(
        "visdom is not installed: pip install 'visdom==0.2.4' 'tornado>=6.5,<6.6' "
        "(see the README for the setuptools<81 build constraint)"
    ) from err

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

START_HINT = "sh scripts/visdom_server.sh --port {port}"


class _Client(Visdom):
    """A visdom client that fails fast and quietly.

    visdom's own client prints tracebacks or "Error connecting" lines on every failed request,
    logs at each start without its event socket, and waits on the network with no timeout.
    Here every request has a short timeout and a failure only raises ConnectionError, which
    VisdomLogger turns into one warning per outage.
    """

    def __init__(self, server: str, port: int, timeout: float):
        self._http = requests.Session()
        self._timeout = (min(timeout, 1.0), timeout)  # (connect, read) in seconds
        # send=False skips the constructor's env-registration request and its log line about
        # the missing event socket (no socket: we never receive events); sending is enabled
        # right after.
        super().__init__(server=server, port=port, raise_exceptions=True,
                         use_incoming_socket=False, send=False)
        self.send = True

    @property
    def session(self) -> requests.Session:
        # visdom's property logs "Setting up a new session..." at warning level.
        return self._http

    def _handle_post(self, url: str, data=None) -> str:
        reply = self._http.post(url, data=data or {}, timeout=self._timeout)
        return reply.text

    def win_exists(self, win: str, env: str | None = None) -> bool | None:
        # visdom's version prints and hides a failed connection; let it raise instead.
        reply = self._send({"win": win, "eid": env}, endpoint="win_exists", quiet=True)
        return {"true": True, "false": False}.get(reply)

    def ping(self) -> None:
        """Raise ConnectionError unless the server answers."""
        self._send({}, endpoint="env_state", quiet=True)

    def close_session(self) -> None:
        self._http.close()


def _number(value) -> float:
    """A float, or NaN (a gap in the curve) for what is not a number; never raises."""
    try:
        # float() also reads the "nan"/"inf" strings metrics.jsonl uses for non-finite values.
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _floats(values: Sequence | None, n: int) -> list[float]:
    """n floats from a record list; NaN where the list is missing or short."""
    values = list(values or [])[:n]
    return [_number(v) for v in values] + [math.nan] * (n - len(values))


def _value(record: dict, key: str) -> float:
    return _number(record.get(key))


@dataclass
class _LineWindow:
    """A line plot with a fixed set of series; keeps its whole history for re-creation."""

    title: str
    ylabel: str
    series: list[str]
    keys: tuple[str, ...]  # a record takes part when it has one of these
    extract: Callable[[dict], list[float]]
    points: list[tuple[float, list[float]]] = field(default_factory=list)
    sent: int = 0  # points[:sent] are on the server

    @property
    def win(self) -> str:
        return self.title.lower().replace(" ", "_")

    def opts(self) -> dict:
        # A fresh dict per call: visdom adds keys to the opts it is given.
        return {"title": self.title, "xlabel": "iteration", "ylabel": self.ylabel, "legend": list(self.series)}

    def add(self, record: dict) -> None:
        if any(key in record for key in self.keys):
            self.points.append((float(record["iter"]), self.extract(record)))


@dataclass
class _ScoreWindow:
    """Disentanglement scores: series appear by name as the evaluations report them."""

    title: str = "disentanglement scores"
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)

    @property
    def win(self) -> str:
        return self.title.lower().replace(" ", "_")

    def add(self, record: dict) -> None:
        for name, score in (record.get("eval") or {}).items():
            self.points.setdefault(name, []).append((float(record["iter"]), _number(score)))
            self.sent.setdefault(name, 0)


def _line_windows(z_dim: int, objective: str) -> list[_LineWindow]:
    latents = [f"z{i + 1}" for i in range(z_dim)]
    kl_series = [*latents, "mean", "total"] + (["C"] if objective == "B" else [])

    def kl(record: dict) -> list[float]:
        values = _floats(record.get("kld"), z_dim) + [_value(record, "mean_kld"), _value(record, "total_kld")]
        return values + ([_value(record, "C")] if objective == "B" else [])

    return [
        _LineWindow("reconstruction loss", "loss", ["reconstruction loss"], ("recon_loss",),
                    lambda r: [_value(r, "recon_loss")]),
        _LineWindow("KL divergence", "KL (nats)", kl_series, ("kld", "mean_kld", "total_kld"), kl),
        _LineWindow("posterior mean", "mean of q(z|x)", latents, ("mu",), lambda r: _floats(r.get("mu"), z_dim)),
        _LineWindow("posterior variance", "variance of q(z|x)", latents, ("var",),
                    lambda r: _floats(r.get("var"), z_dim)),
    ]


class VisdomLogger(Logger):
    """Sends the gathered training records and pictures to a visdom server.

    `scalars` only buffers; `flush` (every display_step) sends. A failed send keeps the points
    and the next flush sends them, so the server ends up with every point.
    """

    def __init__(self, viz_name: str, server: str = "http://localhost", port: int = 8097,
                 z_dim: int = 10, objective: str = "H", *, timeout: float = 5.0):
        self.viz_name = viz_name
        self.address = f"{server}:{port}"
        self.port = port
        self.env_lines = f"{viz_name}_lines"
        self.env_reconstruction = f"{viz_name}_reconstruction"
        self.env_traverse = f"{viz_name}_traverse"
        self._lines = _line_windows(z_dim, objective)
        self._scores = _ScoreWindow()
        self._images: dict[str, tuple[int, np.ndarray]] = {}  # latest unsent picture per window
        self._touched: set[str] = set()  # envs changed since the last save
        self._down = False
        self._client = _Client(server, port, timeout)
        self._attempt(self._client.ping, first=True)

    @property
    def connected(self) -> bool:
        """Whether the last exchange with the server succeeded."""
        return not self._down

    # ---------------------------------------------------------------- Logger interface

    def scalars(self, record: dict) -> None:
        if "iter" not in record:
            return
        for window in self._lines:
            window.add(record)
        self._scores.add(record)

    def flush(self, step: int) -> None:
        self._attempt(self._send_everything)

    def images(self, step: int, name: str, grid: torch.Tensor) -> None:
        if hasattr(grid, "detach"):
            grid = grid.detach().float().cpu().numpy()
        # NaN pixels (a diverged model) would break visdom's uint8 conversion; show them black.
        array = np.nan_to_num(np.asarray(grid, dtype=np.float32), nan=0.0)
        self._images[name] = (step, np.clip(array, 0.0, 1.0))
        if not self._down:  # during an outage pictures wait for the next flush
            self._attempt(self._send_images)

    def close(self) -> None:
        if self._has_unsent():
            self.flush(-1)
        self._client.close_session()

    def clear_lines(self) -> None:
        """Close the line windows on the server (replay uses it to start over)."""
        def close_all() -> None:
            for win in [w.win for w in self._lines] + [self._scores.win]:
                self._client.close(win=win, env=self.env_lines)
        self._attempt(close_all)

    # ---------------------------------------------------------------- sending

    def _attempt(self, send: Callable[[], None], first: bool = False) -> None:
        """Run a send; on a connection failure warn once per outage and keep the data."""
        try:
            send()
        except (ConnectionError, requests.RequestException) as err:
            if not self._down:
                log.warning(self._outage_message(first, err))
            self._down = True
        else:
            if self._down and not first:
                log.info("visdom server at %s is reachable again; kept points sent", self.address)
            self._down = False

    def _outage_message(self, first: bool, err: Exception) -> str:
        start = START_HINT.format(port=self.port)
        if first:
            return (f"No visdom server at {self.address}: training goes on and its curves are sent "
                    f"once a server is up. Start one with: {start}")
        return (f"Lost the visdom server at {self.address} ({err}): training goes on; unsent points "
                f"are kept and sent when it is back (restart it with: {start})")

    def _send_everything(self) -> None:
        for window in self._lines:
            self._send_lines(window)
        self._send_scores()
        self._send_images()
        if self._touched:
            # Persist the envs in the server's env_path, so a restarted server shows them.
            self._client.save(sorted(self._touched))
            self._touched.clear()

    def _send_lines(self, window: _LineWindow) -> None:
        if not window.points:
            return
        exists = self._client.win_exists(window.win, self.env_lines)
        if not exists:
            window.sent = 0  # the server lost it (restart, closed in the page): rebuild it
        new = window.points[window.sent:]
        if not new:
            return
        y = np.array([values for _, values in new], dtype=float)
        x = np.repeat(np.array([[step] for step, _ in new], dtype=float), y.shape[1], axis=1)
        self._client.line(Y=y, X=x, win=window.win, env=self.env_lines, opts=window.opts(),
                          update="append" if exists else None)
        window.sent = len(window.points)
        self._touched.add(self.env_lines)

    def _send_scores(self) -> None:
        scores = self._scores
        if not scores.points:
            return
        if not self._client.win_exists(scores.win, self.env_lines):
            scores.sent = dict.fromkeys(scores.points, 0)
        for name, points in scores.points.items():
            new = points[scores.sent[name]:]
            if not new:
                continue
            # Appending by trace name creates the window, or a new trace, where missing. No
            # 'legend' here: on an update visdom renames the window's traces after it.
            opts = {"title": scores.title, "xlabel": "iteration", "ylabel": "score", "showlegend": True,
                    "markers": True, "markersize": 6}  # markers: evaluations are sparse points
            self._client.line(Y=np.array([v for _, v in new]), X=np.array([s for s, _ in new]),
                              win=scores.win, env=self.env_lines, opts=opts, update="append", name=name)
            scores.sent[name] = len(points)
            self._touched.add(self.env_lines)

    def _send_images(self) -> None:
        for name, (step, array) in list(self._images.items()):
            env = self.env_reconstruction if name.startswith("reconstruction") else self.env_traverse
            self._client.image(array, win=name, env=env, opts={"title": name, "caption": f"iteration {step}"})
            del self._images[name]
            self._touched.add(env)

    def _has_unsent(self) -> bool:
        lines = any(w.sent < len(w.points) for w in self._lines)
        scores = any(self._scores.sent[n] < len(p) for n, p in self._scores.points.items())
        return lines or scores or bool(self._images) or bool(self._touched)
