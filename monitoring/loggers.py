"""Where training's numbers and pictures go: the sinks behind the Logger interface (records.py).

The solver calls the Logger methods and nothing else, so training never depends on a
visualisation server being up. `metrics.jsonl` is always written (JsonlLogger); PNG curves are
drawn at the end (plots.py); visdom (visdom_sink.py) is added when `--viz_on` is true.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from monitoring.records import INSTALL_VISDOM, ROOT, TOP_LATENTS, Logger, number, parse_record, plain, read_metrics

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ loggers


class JsonlLogger(Logger):
    """Appends every record to a JSON-lines file as it comes; loses none.

    - A record that cannot be written (full disk, lost mount) is kept in memory and written,
      in order, at the next record, flush or close; one warning per outage. `unwritten()` counts
      what is still kept.
    - A write cut short is truncated back, so the file never holds half a line of ours.
    - A training run (resume_step given: the checkpoint's iteration, 0 for a fresh start) moves
      the records after resume_step (a history it redoes) and a cut last line (power loss) out
      to `<name>.superseded.jsonl` (appended, never deleted) and rewrites the log atomically.
      Without resume_step (a `--train False` run may write beside training) the file is never
      rewritten: a cut last line is only ended before the first record.
    - A log replaced by another process's rewrite is reopened before the next write.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        self.superseded_path = self.path.with_suffix(".superseded.jsonl")
        self.superseded = 0  # records moved out on opening
        self._pending: list[bytes] = []  # encoded records not yet in the file, in order
        self._newline_first = False  # the file ends in a cut line we could not move out
        self._fd: int | None = None
        self._outage: str | None = None  # the error of the current outage, None while writes succeed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tidy(resume_step)

    def scalars(self, record: dict) -> None:
        self._pending.append((json.dumps(plain(record)) + "\n").encode())
        self._write()

    def flush(self, step: int) -> None:
        self._write()

    def close(self) -> None:
        self._write()  # the final retry
        if self._pending:
            log.warning("%d records could not be written to %s (%s) and are lost when this process ends.",
                        len(self._pending), self.path, self._outage)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def unwritten(self) -> int:
        return len(self._pending)

    def _write(self) -> None:
        if not self._pending and not self._newline_first:
            return
        data = (b"\n" if self._newline_first else b"") + b"".join(self._pending)
        try:
            if self._fd is not None and self._replaced():
                os.close(self._fd)
                self._fd = None
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            start = os.fstat(self._fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError:
                try:
                    os.ftruncate(self._fd, start)  # no half line of ours stays behind
                except OSError:
                    self._newline_first = True  # could not cut it: end it before the next record
                raise
        except OSError as err:
            if self._outage is None:
                log.warning("Could not write to %s (%s): the run goes on; the records are kept in memory "
                            "and written when the file can be written again.", self.path, err)
            self._outage = str(err)
            return
        if self._outage is not None:
            log.warning("%s can be written again: %d waiting records written.", self.path, len(self._pending))
            self._outage = None
        self._pending.clear()
        self._newline_first = False

    def _replaced(self) -> bool:
        """Whether the path now names another file than the one open (a rewrite by another run)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except OSError:
            return True

    def _tidy(self, resume_step: int | None) -> None:
        """Move a cut last line and the records after resume_step out of the log (see the class)."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        body, cut = data[:end], data[end:]  # cut: a last line without its newline
        if resume_step is None:  # never rewrite a file another process may be appending to
            self._newline_first = bool(cut)
            return
        kept, moved = [], []
        for line in body.splitlines(keepends=True):
            record = parse_record(line)
            (moved if record is not None and number(record["iter"]) > resume_step else kept).append(line)
        if cut:
            moved.append(cut + b"\n")
        if not moved:
            return
        from utils import atomic_write  # imports torch: only when a rewrite is due

        try:
            # Into the side file first, durably: a kill between the two steps leaves a record in
            # both files, never in neither.
            with open(self.superseded_path, "ab") as side:
                side.write(b"".join(moved))
                side.flush()
                os.fsync(side.fileno())
            atomic_write(self.path, lambda f: f.write(b"".join(kept)))
        except OSError as err:
            self._newline_first = bool(cut)
            log.warning("Could not move %d lines out of %s into %s (%s): they stay in the log.",
                        len(moved), self.path, self.superseded_path, err)
            return
        self.superseded = len(moved) - bool(cut)
        parts = []
        if self.superseded:
            parts.append(f"{self.superseded} records after iteration {resume_step} (from the run that stopped; "
                         "this run redoes them)")
        if cut:
            parts.append("a cut last line (the process was stopped mid-write)")
        print(f"{self.path}: moved {' and '.join(parts)} to {self.superseded_path}.", flush=True)


class MultiLogger(Logger):
    """Fans every call out to several loggers; one failing sink does not stop the others."""

    def __init__(self, *loggers: Logger):
        self.loggers = list(loggers)
        self._failed: set[tuple[int, str]] = set()  # (logger, method) pairs already warned about

    def _each(self, method: str, *args) -> None:
        for i, logger in enumerate(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # a sink must never end a days-long run
                if (i, method) not in self._failed:  # once, not at every record
                    self._failed.add((i, method))
                    log.warning("%s.%s failed (%s: %s); the run goes on.", type(logger).__name__, method,
                                type(err).__name__, err)

    def scalars(self, record: dict) -> None:
        self._each("scalars", record)

    def flush(self, step: int) -> None:
        self._each("flush", step)

    def images(self, step: int, name: str, grid: torch.Tensor) -> None:
        self._each("images", step, name, grid)

    def heatmap(self, step: int, name: str, matrix, rows: Sequence[str], columns: Sequence[str]) -> None:
        self._each("heatmap", step, name, matrix, rows, columns)

    def close(self) -> None:
        self._each("close")

    def unwritten(self) -> int:
        return sum(logger.unwritten() for logger in self.loggers)


class CurvesLogger(Logger):
    """At the end of a run, draws metrics.jsonl as PNG training curves (plots.py) in run_dir/curves."""

    def __init__(self, metrics_path: Path, out_dir: Path, top_latents: int = TOP_LATENTS):
        self.metrics_path, self.out_dir, self.top_latents = Path(metrics_path), Path(out_dir), top_latents

    def close(self) -> None:
        from monitoring.plots import save_curves  # matplotlib is imported only when the curves are drawn

        save_curves(self.metrics_path, self.out_dir, self.top_latents)


def build_logger(run_dir: str | os.PathLike, viz_on: bool = False, viz_name: str = "main",
                 server: str = "http://localhost", port: int = 8097, *,
                 save_curves: bool = True, resume_step: int | None = None,
                 top_latents: int = TOP_LATENTS, tensorboard: bool = False) -> Logger:
    """The JSONL log always; PNG curves at the end unless turned off; visdom and TensorBoard when asked for
    and installed.

    resume_step: the iteration of the checkpoint a training run resumes from (0 for a fresh
    start; None when not training): records after it are moved out of metrics.jsonl. No method
    or objective is named: windows adapt to the records.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    jsonl = JsonlLogger(metrics_path, resume_step)
    loggers: list[Logger] = [jsonl]
    if save_curves:
        loggers.append(CurvesLogger(metrics_path, run_dir / "curves", top_latents))
    if viz_on:
        try:
            from monitoring.visdom_sink import VisdomLogger
        except ImportError as err:
            # The sink's ImportError already says how to install visdom; say it once.
            install = "" if INSTALL_VISDOM in str(err) else f" Install visdom in {ROOT} with: {INSTALL_VISDOM}"
            log.warning("--viz_on is true but visdom support is unavailable (%s); the run goes on and logs to "
                        "%s.%s", err, metrics_path, install)
        else:
            # The windows start from the log, so a resumed run shows exactly what metrics.jsonl holds.
            history, _ = read_metrics(metrics_path)
            loggers.append(VisdomLogger(viz_name, server=server, port=port, history=history,
                                        top_latents=top_latents, metrics_path=metrics_path))
    if tensorboard:
        from monitoring.tensorboard_sink import tensorboard_logger

        sink = tensorboard_logger(run_dir, resume_step)
        if sink is not None:
            loggers.append(sink)
    return MultiLogger(*loggers)
