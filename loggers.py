"""Where training's numbers and pictures go: one small interface, a no-op default.

The solver calls these four methods and nothing else, so training never depends
on a visualisation server being up. `metrics.jsonl` is always written;
visdom (viz_visdom.py) is added when `--viz_on` is true.
"""

import json
import math
import warnings
from pathlib import Path

import torch


class Logger:
    """No-op base: training calls these; subclasses send the data somewhere."""

    def scalars(self, record: dict) -> None:
        """A gathered point (every gather_step): averages over the interval, see Solver.gather."""

    def flush(self, step: int) -> None:
        """Called every display_step: push whatever was buffered."""

    def images(self, step: int, name: str, grid: torch.Tensor) -> None:
        """A picture (C, H, W) float in [0, 1]: the reconstruction grid or a traversal."""

    def close(self) -> None:
        """End of run."""


class JsonlLogger(Logger):
    """Appends every gathered record to a JSON-lines file, flushed at once so none is lost."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def scalars(self, record: dict) -> None:
        self._file.write(json.dumps(_finite(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MultiLogger(Logger):
    """Fans every call out to several loggers; one failing sink does not stop the others."""

    def __init__(self, *loggers: Logger):
        self.loggers = list(loggers)

    def _each(self, method: str, *args) -> None:
        for logger in self.loggers:
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # a sink must never end a days-long run
                warnings.warn(f"{type(logger).__name__}.{method} failed: {err}", stacklevel=3)

    def scalars(self, record: dict) -> None:
        self._each("scalars", record)

    def flush(self, step: int) -> None:
        self._each("flush", step)

    def images(self, step: int, name: str, grid: torch.Tensor) -> None:
        self._each("images", step, name, grid)

    def close(self) -> None:
        self._each("close")


class CurvesLogger(Logger):
    """At the end of a run, draws metrics.jsonl as PNG training curves (plots.py) in run_dir/curves."""

    def __init__(self, metrics_path: Path, out_dir: Path):
        self.metrics_path, self.out_dir = Path(metrics_path), Path(out_dir)

    def close(self) -> None:
        from plots import save_curves  # matplotlib is imported only when the curves are drawn

        save_curves(self.metrics_path, self.out_dir)


def _finite(value):
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def build_logger(run_dir: Path, viz_on: bool, viz_name: str, viz_server: str, viz_port: int,
                 z_dim: int, objective: str, save_curves: bool = True) -> Logger:
    """The JSONL log always; PNG curves at the end unless turned off; visdom when asked for and installed."""
    metrics_path = Path(run_dir) / "metrics.jsonl"
    loggers: list[Logger] = [JsonlLogger(metrics_path)]
    if save_curves:
        loggers.append(CurvesLogger(metrics_path, Path(run_dir) / "curves"))
    if viz_on:
        try:
            from viz_visdom import VisdomLogger
        except ImportError as err:
            warnings.warn(f"--viz_on is true but visdom support is unavailable ({err}); "
                          "training goes on and logs to metrics.jsonl. Install it with "
                          "`pip install -r requirements.txt`.", stacklevel=2)
        else:
            loggers.append(VisdomLogger(viz_name=viz_name, server=viz_server, port=viz_port,
                                        z_dim=z_dim, objective=objective))
    return MultiLogger(*loggers)
