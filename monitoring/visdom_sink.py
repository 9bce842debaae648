"""Live training curves and pictures in visdom (http://localhost:8097 by default).

Start a server first with `sh scripts/visdom_server.sh`. Training never waits for it: the
Logger methods only put data in memory and wake a background sender thread, which does every
network call. With no server, a server that never answers, or one that answers with errors, the
sender warns once per outage (and once when it is back), keeps every point and retries with a
growing pause (1 s doubling to 30 s), so a dead server costs training nothing.

Three environments per run, `<viz_name>_lines`, `<viz_name>_reconstruction` and
`<viz_name>_traverse`. Every window has a fixed name derived from its title. A new logger
(a new or resumed run, a replay) redraws its windows from the history it is given, so the
windows show exactly what metrics.jsonl holds; afterwards it appends.

Windows adapt to the records: reconstruction loss, KL divergence (with C when the records carry
it), posterior mean and variance appear when their keys do; every other numeric scalar (loss,
tc_loss, d_loss, ...) goes to one "losses" window; evaluations to "disentanglement scores";
heatmaps (latents x factors) to the lines environment. Per-latent windows show at most
`top_latents` latents (the most informative, see loggers.pick_latents) and the mean of the others.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import requests

from monitoring.records import (
    INSTALL_VISDOM,
    LATENT_KEYS,
    ROOT,
    TOP_LATENTS,
    Logger,
    as_array,
    number,
    other_scalars,
    pick_latents,
    plain,
)

try:
    from visdom import Visdom
except ImportError as err:  # loggers.build_logger turns this into a warning
    raise ImportError(f"visdom is not installed; install it in {ROOT} with: {INSTALL_VISDOM}") from err

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

START_HINT = "sh scripts/visdom_server.sh --port {port}"
FIRST_PAUSE, MAX_PAUSE = 1.0, 30.0  # seconds between attempts after a failure: 1, 2, 4, ... 30


class SendError(ConnectionError):
    """A request that did not do its job: no connection, no answer in time, or an error answer."""


class _Client(Visdom):
    """A visdom client that fails fast, quietly, and on every kind of failure.

    visdom's own client prints tracebacks or "Error connecting" lines on every failed request,
    waits on the network with no timeout, and takes an HTTP 500 page or an error text
    ("win does not exist") for an answer. Here every request has a timeout, and anything but a
    2xx answer raises SendError.
    """

    def __init__(self, server: str, port: int, timeout: float):
        self._http = requests.Session()
        self._timeout = (min(timeout, 2.0), timeout)  # (connect, read) in seconds
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
        try:
            reply = self._http.post(url, data=data or {}, timeout=self._timeout)
        except requests.Timeout:
            raise SendError(f"no answer within {self._timeout[1]:g} s") from None
        except requests.RequestException as err:
            raise SendError(_reason(err)) from None
        if not 200 <= reply.status_code < 300:
            raise SendError(f"HTTP {reply.status_code} {reply.reason}".strip())
        return reply.text

    def draw(self, method: str, win: str, **kwargs) -> None:
        """Call a plotting method (line, image, heatmap); raise unless the server confirms the window."""
        reply = getattr(self, method)(win=win, **kwargs)
        if reply != win:  # visdom answers the window's name, or an error text with status 200
            raise SendError(f"the server answered {str(reply)[:120]!r} to an update of window {win!r}")

    def win_exists(self, win: str, env: str | None = None) -> bool:
        # visdom's version prints and hides a failed connection; let it raise instead.
        reply = self._send({"win": win, "eid": env}, endpoint="win_exists", quiet=True)
        if reply not in ("true", "false"):
            raise SendError(f"the server answered {str(reply)[:120]!r} to win_exists")
        return reply == "true"

    def ping(self) -> None:
        """Raise SendError unless the server answers as visdom does (a JSON list of its envs)."""
        reply = self._send({}, endpoint="env_state", quiet=True)
        try:
            envs = json.loads(reply)
        except (TypeError, ValueError):
            envs = None
        if not isinstance(envs, list):
            raise SendError(f"the server answered {str(reply)[:120]!r} to env_state")

    def close_session(self) -> None:
        self._http.close()


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _reason(err: Exception) -> str:
    """A short cause for a failed request ("connection refused"), not urllib3's paragraph."""
    text = str(err)
    for marker, reason in (("Connection refused", "connection refused"), ("Connection reset", "connection reset"),
                           ("Name or service not known", "unknown host"), ("timed out", "timed out")):
        if marker in text:
            return reason
    return type(err).__name__


# ------------------------------------------------------------------------------ line windows


@dataclass
class _View:
    """What the per-latent windows show at one send: the latent count and the latents picked."""

    z_dim: int
    picked: list[int]

    def names(self) -> list[str]:
        rest = self.z_dim - len(self.picked)
        return [f"z{i}" for i in self.picked] + ([f"mean of {rest} others"] if rest else [])

    def values(self, vector: np.ndarray | None) -> list[float]:
        if vector is None:
            return [math.nan] * len(self.names())
        full = np.full(self.z_dim, np.nan)
        full[: min(len(vector), self.z_dim)] = vector[: self.z_dim]
        picked = full[self.picked].tolist()
        if len(self.picked) == self.z_dim:
            return picked
        rest = np.delete(full, self.picked)
        rest = rest[np.isfinite(rest)]
        return picked + [float(rest.mean()) if rest.size else math.nan]


# Summary series are drawn apart from the latents' coloured lines, as in plots.py.
_STYLES = {"mean": {"color": "gray", "dash": "dash"}, "total": {"color": "black", "width": 3},
           "C": {"color": "crimson", "dash": "dot", "width": 3}}
_OTHERS_STYLE = {"color": "gray", "dash": "dashdot", "width": 3}


def _trace_styles(names: Sequence[str]) -> dict:
    styles = {name: _STYLES.get(name) or (_OTHERS_STYLE if name.startswith("mean of ") else None) for name in names}
    return {"plotly": {name: {"line": style} for name, style in styles.items() if style}}


def _vector(values) -> np.ndarray:
    return np.array([number(v) for v in values], dtype=np.float64)


@dataclass
class _LineWindow:
    """A line plot; keeps every point (iteration, payload) so it can be redrawn at any time."""

    title: str
    ylabel: str
    points: list[tuple[float, object]] = field(default_factory=list)
    drawn: tuple[str, ...] | None = None  # the series this logger drew on the server, None: not drawn
    sent: int = 0  # points[:sent] are on the server

    @property
    def win(self) -> str:
        return self.title.lower().replace(" ", "_")

    def add(self, record: dict) -> None:
        payload = self.take(record)
        if payload is not None:
            self.points.append((float(record["iter"]), payload))

    def take(self, record: dict):
        """The part of a record this window draws, or None when it has none."""
        raise NotImplementedError

    def names(self, view: _View) -> list[str]:
        raise NotImplementedError

    def row(self, payload, view: _View) -> list[float]:
        raise NotImplementedError


class _Reconstruction(_LineWindow):
    def __init__(self):
        super().__init__("reconstruction loss", "loss")

    def take(self, record: dict):
        return number(record["recon_loss"]) if "recon_loss" in record else None

    def names(self, view: _View) -> list[str]:
        return ["reconstruction loss"]

    def row(self, payload, view: _View) -> list[float]:
        return [payload]


class _KL(_LineWindow):
    """Per-latent KL, their mean and total, and the target capacity C once a record carries it."""

    def __init__(self):
        super().__init__("KL divergence", "KL (nats)")
        self.has_c = False

    def take(self, record: dict):
        if not any(key in record for key in ("kld", "mean_kld", "total_kld")):
            return None
        self.has_c |= "C" in record
        kld = record.get("kld")
        return (_vector(kld) if isinstance(kld, list) else None, number(record.get("mean_kld")),
                number(record.get("total_kld")), number(record.get("C")))

    # The total and C first: a legend taller than the window is cut at the bottom, and those two are
    # what a reader of objective B looks for.
    def names(self, view: _View) -> list[str]:
        return ["total", *(["C"] if self.has_c else []), "mean", *view.names()]

    def row(self, payload, view: _View) -> list[float]:
        kld, mean, total, capacity = payload
        return [total, *([capacity] if self.has_c else []), mean, *view.values(kld)]


class _PerLatent(_LineWindow):
    """Posterior mean or variance per latent (a list key of the records)."""

    def __init__(self, key: str, title: str, ylabel: str):
        super().__init__(title, ylabel)
        self.key = key

    def take(self, record: dict):
        values = record.get(self.key)
        return _vector(values) if isinstance(values, list) else None

    def names(self, view: _View) -> list[str]:
        return view.names()

    def row(self, payload, view: _View) -> list[float]:
        return view.values(payload)


class _Losses(_LineWindow):
    """Every other numeric scalar (loss, tc_loss, d_loss, disc_accuracy, ...), one series per key."""

    def __init__(self):
        super().__init__("losses", "value")
        self.keys: list[str] = []  # in order of first appearance

    def take(self, record: dict):
        values = other_scalars(record)
        self.keys += [key for key in values if key not in self.keys]
        return values or None

    def names(self, view: _View) -> list[str]:
        return list(self.keys)

    def row(self, payload, view: _View) -> list[float]:
        return [payload.get(key, math.nan) for key in self.keys]


@dataclass
class _ScoreWindow:
    """Disentanglement scores: series appear by name as the evaluations report them."""

    title: str = "disentanglement scores"
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    drawn: bool = False

    @property
    def win(self) -> str:
        return self.title.lower().replace(" ", "_")

    def add(self, record: dict) -> None:
        for name, score in (record.get("eval") or {}).items():
            self.points.setdefault(name, []).append((float(record["iter"]), number(score)))
            self.sent.setdefault(name, 0)


@dataclass
class _Picture:
    """The latest unsent picture or heatmap of one window."""

    env: str
    win: str
    step: int
    array: np.ndarray
    rows: list[str] | None = None  # heatmaps only
    columns: list[str] | None = None


# ------------------------------------------------------------------------------ the logger


class VisdomLogger(Logger):
    """Sends records, pictures and heatmaps to a visdom server from a background thread.

    `scalars` queues a record; `flush` (every display_step) and `images`/`heatmap` wake the
    sender. None of them touches the network, so they return in microseconds whatever the
    server does. Every record is kept (the windows are redrawn from them when the server lost
    them); of pictures only the latest per window waits. `close` waits at most `close_wait`
    seconds for a last send and says how much did not arrive.
    """

    def __init__(self, viz_name: str, server: str = "http://localhost", port: int = 8097, *,
                 history: Sequence[dict] = (), top_latents: int = TOP_LATENTS, metrics_path: Path | None = None,
                 timeout: float = 5.0, close_wait: float = 3.0, chunk: int = 5000):
        self.viz_name, self.server, self.port, self.top_latents = viz_name, server, port, top_latents
        self.address = f"{server}:{port}"
        self.env_lines = f"{viz_name}_lines"
        self.env_reconstruction = f"{viz_name}_reconstruction"
        self.env_traverse = f"{viz_name}_traverse"
        self.metrics_path, self.close_wait, self.chunk = metrics_path, close_wait, max(int(chunk), 1)
        self._client = _Client(server, port, timeout)

        # Shared by the training thread and the sender, guarded by _cond.
        self._cond = threading.Condition()
        self._queue: list[dict] = [r for r in history if "iter" in r]  # records not yet taken by the sender
        self._unsent = len(self._queue)  # records not yet confirmed on the server
        self._pictures: dict[tuple[str, str], _Picture] = {}  # latest unsent picture per (env, window)
        self._in_flight: dict[tuple[str, str], _Picture] = {}  # those the sender is sending
        self._due = True  # a send is wanted: at start (to learn whether a server is there), flush, picture
        self._force = False  # drain: attempt now, whatever the pause
        self._stop = self._closed = False
        self._pause, self._retry_at = 0.0, 0.0  # back-off after failures
        self._started = self._finished = 0  # attempts
        self._last_ok = False
        self._up: bool | None = None  # None: never tried

        # Owned by the sender thread.
        self._lines: list[_LineWindow] = [
            _Reconstruction(), _KL(), _PerLatent("mu", "posterior mean", "mean of q(z|x)"),
            _PerLatent("var", "posterior variance", "variance of q(z|x)"), _Losses()]
        self._scores = _ScoreWindow()
        self._touched: set[str] = set()  # envs changed since the last save
        self._z_dim = 0
        self._latest_kld: list | None = None

        self._thread = threading.Thread(target=self._run, name=f"visdom-{viz_name}", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Whether the latest exchange with the server succeeded."""
        return self._up is True

    # ---------------------------------------------------------------- Logger interface

    def scalars(self, record: dict) -> None:
        if "iter" not in record:
            return
        record = plain(record)  # a copy in plain numbers, as metrics.jsonl holds it
        with self._cond:
            self._queue.append(record)
            self._unsent += 1

    def flush(self, step: int) -> None:
        self._wake()

    def images(self, step: int, name: str, grid: torch.Tensor) -> None:
        # NaN pixels (a diverged model) would break visdom's uint8 conversion; show them black.
        array = np.clip(np.nan_to_num(as_array(grid), nan=0.0), 0.0, 1.0)
        env = self.env_reconstruction if name.startswith("reconstruction") else self.env_traverse
        self._put(_Picture(env, name, step, array))

    def heatmap(self, step: int, name: str, matrix, rows: Sequence[str], columns: Sequence[str]) -> None:
        array = as_array(matrix, "float64")
        if array.ndim != 2 or array.shape != (len(rows), len(columns)):
            raise ValueError(f"heatmap {name!r}: a matrix of shape {array.shape} with {len(rows)} row and "
                             f"{len(columns)} column labels; they must match")
        self._put(_Picture(self.env_lines, name, step, array, [str(r) for r in rows], [str(c) for c in columns]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sent = self.drain(self.close_wait)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        records, pictures = self.unsent()
        if not sent and (records or pictures):
            server = "" if self.server == "http://localhost" else f" --server {self.server}"
            where = (f"; every point is in {self.metrics_path}: send them later with `python replay.py "
                     f"{self.metrics_path} --viz_name {self.viz_name}{server} --port {self.port}`"
                     if self.metrics_path else "")
            log.warning("%s and %s were not sent to the visdom server at %s%s.", _count(records, "point"),
                        _count(pictures, "picture"), self.address, where)
        self._thread.join(timeout=0.2)
        if not self._thread.is_alive():  # a request stuck on a silent server keeps its session
            self._client.close_session()

    # ---------------------------------------------------------------- for replay and tests

    def drain(self, timeout: float) -> bool:
        """Make the sender try at once and wait (at most timeout s) for that attempt; True if all is sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._force = self._due = True
            ticket = self._started + 1  # the attempt that starts after this call
            self._cond.notify_all()
            while self._finished < ticket and not self._stop:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._finished >= ticket and self._last_ok and not self._unsent and not self._pictures

    def unsent(self) -> tuple[int, int]:
        """(records, pictures) not yet confirmed on the server."""
        with self._cond:
            return self._unsent, len(self._pictures.keys() | self._in_flight.keys())

    def window_points(self) -> dict[str, dict[str, int]]:
        """{window title: {series: points}} as this logger holds them (read it after close or drain)."""
        counts = {w.title: dict.fromkeys(w.drawn or (), len(w.points)) for w in self._lines if w.points}
        if self._scores.points:
            counts[self._scores.title] = {name: len(p) for name, p in self._scores.points.items()}
        return counts

    # ---------------------------------------------------------------- the sender thread

    def _put(self, picture: _Picture) -> None:
        with self._cond:
            self._pictures[(picture.env, picture.win)] = picture
            self._due = True
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._due = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not (self._force or (self._due and time.monotonic() >= self._retry_at)):
                    self._cond.wait(max(self._retry_at - time.monotonic(), 0.01) if self._due else None)
                if self._stop:
                    return
                self._force = self._due = False
                records, self._queue = self._queue, []
                pictures, self._pictures = self._pictures, {}
                self._in_flight = pictures
                self._started += 1
            error = None
            try:
                self._exchange(records, pictures)  # the only place with network calls
            except Exception as err:  # a monitoring failure of any kind must not end the thread
                error = err
            with self._cond:
                for key, picture in pictures.items():  # those not sent, unless a newer one came
                    self._pictures.setdefault(key, picture)
                self._in_flight = {}
                if error is None:  # every record taken so far is on the server now
                    self._unsent = len(self._queue)
                    self._pause = 0.0
                else:
                    self._pause = min(self._pause * 2 or FIRST_PAUSE, MAX_PAUSE)
                    self._retry_at = time.monotonic() + self._pause
                    self._due = True  # try again after the pause, flush or not
                was_up, self._up, self._last_ok = self._up, error is None, error is None
            self._report(was_up, error)  # before drain() returns, outside the lock training takes
            with self._cond:
                self._finished += 1
                self._cond.notify_all()

    def _report(self, was_up: bool | None, error: Exception | None) -> None:
        start = START_HINT.format(port=self.port)
        if error is None:
            if was_up is False:
                log.warning("The visdom server at %s answers again: the kept points are sent.", self.address)
        elif was_up is None:
            log.warning("No working visdom server at %s (%s): the run goes on, and its curves are sent once "
                        "one answers. Start one with: %s", self.address, error, start)
        elif was_up:
            log.warning("Lost the visdom server at %s (%s): the run goes on; unsent points are kept and sent "
                        "when it is back (restart it with: %s)", self.address, error, start)

    def _exchange(self, records: list[dict], pictures: dict[tuple[str, str], _Picture]) -> None:
        for record in records:  # into the windows first: a failed send below loses nothing
            self._ingest(record)
        if not (any(w.points for w in self._lines) or self._scores.points or pictures or self._touched):
            self._client.ping()  # nothing to draw yet: still learn whether a server is there
            return
        picked = pick_latents(self._latest_kld, self._z_dim, self.top_latents)
        view = _View(self._z_dim, picked)
        for window in self._lines:
            self._send_lines(window, view)
        self._send_scores()
        for key in list(pictures):
            self._send_picture(pictures[key])
            del pictures[key]
        if self._touched:
            # Persist the envs in the server's env_path, so a restarted server shows them.
            self._client.save(sorted(self._touched))
            self._touched.clear()

    def _ingest(self, record: dict) -> None:
        for key in LATENT_KEYS:
            if isinstance(record.get(key), list):
                self._z_dim = max(self._z_dim, len(record[key]))
        if isinstance(record.get("kld"), list):
            self._latest_kld = record["kld"]
        for window in self._lines:
            window.add(record)
        self._scores.add(record)

    def _send_lines(self, window: _LineWindow, view: _View) -> None:
        if not window.points:
            return
        names = tuple(window.names(view))
        redraw = window.drawn != names or not self._client.win_exists(window.win, self.env_lines)
        if redraw:  # first draw, new series (a key appeared, another latent picked) or lost by the server
            window.drawn, window.sent = None, 0
        opts = {"title": window.title, "xlabel": "iteration", "ylabel": window.ylabel, "legend": list(names),
                "traceopts": _trace_styles(names)}
        while window.sent < len(window.points):
            part = window.points[window.sent : window.sent + self.chunk]
            y = np.array([window.row(payload, view) for _, payload in part], dtype=np.float64)  # (n, series)
            x = np.repeat(np.array([[step] for step, _ in part]), y.shape[1], axis=1)
            # A fresh opts dict per call: visdom adds keys to the one it is given.
            self._client.draw("line", window.win, Y=y, X=x, env=self.env_lines, opts=dict(opts),
                              update=None if window.sent == 0 else "append")
            window.sent += len(part)
            window.drawn = names
            self._touched.add(self.env_lines)

    def _send_scores(self) -> None:
        scores = self._scores
        if not scores.points:
            return
        exists = self._client.win_exists(scores.win, self.env_lines)
        if not scores.drawn or not exists:
            if exists:  # drawn by an earlier process: start over from this logger's points
                self._client.close(win=scores.win, env=self.env_lines)
            scores.sent = dict.fromkeys(scores.points, 0)
        for name, points in scores.points.items():
            new = points[scores.sent[name] :]
            if not new:
                continue
            # Appending by trace name creates the window, or a new trace, where missing. No
            # 'legend' here: on an update visdom renames the window's traces after it.
            opts = {"title": scores.title, "xlabel": "iteration", "ylabel": "score", "showlegend": True,
                    "markers": True, "markersize": 6}  # markers: evaluations are sparse points
            self._client.draw("line", scores.win, Y=np.array([v for _, v in new]), X=np.array([s for s, _ in new]),
                              env=self.env_lines, opts=opts, update="append", name=name)
            scores.sent[name] = len(points)
            scores.drawn = True
            self._touched.add(self.env_lines)

    def _send_picture(self, picture: _Picture) -> None:
        if picture.rows is None:
            # A window the picture's size (plus its title bar and caption): at visdom's default size the
            # reconstruction grid's bottom row, the reconstructions, was cut off.
            height, width = picture.array.shape[-2:]
            self._client.draw("image", picture.win, img=picture.array, env=picture.env,
                              opts={"title": picture.win, "caption": f"iteration {picture.step}",
                                    "width": max(width + 40, 320), "height": height + 110})
        else:
            self._client.draw("heatmap", picture.win, X=picture.array, env=picture.env,
                              opts={"title": f"{picture.win} (iteration {picture.step})",
                                    "rownames": picture.rows, "columnnames": picture.columns})
        self._touched.add(picture.env)


def read_back(server: str, port: int, env: str, timeout: float = 10.0) -> dict[str, dict[str, int]]:
    """What the server holds in env: {window title: {trace name: points}} for its line plots."""
    client = _Client(server, port, timeout)
    try:
        try:
            reply = client.get_window_data(None, env)
        except SendError:
            if env in json.loads(client._send({}, endpoint="env_state", quiet=True) or "[]"):
                raise
            return {}  # the server has no such env (visdom answers it with an error)
    finally:
        client.close_session()
    stored: dict[str, dict[str, int]] = {}
    for win, window in json.loads(reply or "{}").items():
        traces = [t for t in (window.get("content") or {}).get("data") or [] if t.get("type") == "scatter"]
        if window.get("type") == "plot" and traces:  # line plots (a heatmap's trace is no curve)
            title = window.get("title") or win
            stored[title] = {trace.get("name") or str(i): len(trace.get("x") or []) for i, trace in enumerate(traces)}
    return stored
