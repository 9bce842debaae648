"""The record format every sink shares, and the Logger interface (a no-op default).

Records are plain dicts with an "iter" key. Windows and figures adapt to the keys they carry:
VAE methods log recon_loss, total_kld, mean_kld, loss, per-latent lists kld/mu/var and, for
objective B, C; other methods add or log other numeric scalars (tc_loss, d_loss, ...), which go
to one "losses" window; evaluations log {"iter": n, "eval": {score: value}}.

Nothing here imports a sink: the sinks (loggers.py, visdom_sink.py, plots.py) import this.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository
INSTALL_VISDOM = ("PIP_CONSTRAINT=build-constraints.txt PIP_BUILD_CONSTRAINT=build-constraints.txt "
                  "pip install -r requirements-visdom.txt")
LATENT_KEYS = ("kld", "mu", "var")  # per-latent lists: one value per latent, 0-based z0..z{N-1}
VAE_SCALARS = ("recon_loss", "total_kld", "mean_kld", "C")  # drawn in the reconstruction and KL windows
TOP_LATENTS = 10  # per-latent windows show this many latents and the mean of the others
ACTIVE_KL = 0.01  # nats; a latent below it carries no information (the latent report's threshold)


class Logger:
    """No-op base: training calls these; subclasses send the data somewhere."""

    def scalars(self, record: dict) -> None:
        """A gathered point (every gather_step) or an evaluation: {"iter": n, ...}."""

    def flush(self, step: int) -> None:
        """Called every display_step: push whatever was buffered."""

    def images(self, step: int, name: str, grid: torch.Tensor) -> None:
        """A picture (C, H, W) float in [0, 1]: the reconstruction grid or a traversal."""

    def heatmap(self, step: int, name: str, matrix, rows: Sequence[str], columns: Sequence[str]) -> None:
        """A (len(rows), len(columns)) matrix, e.g. latents x factors (DCI importance, mutual information)."""

    def close(self) -> None:
        """End of run."""

    def unwritten(self) -> int:
        """How many records could not be persisted (after close: for good)."""
        return 0


# ------------------------------------------------------------------------------------ records


def number(value) -> float:
    """A float, or NaN (a gap in a curve) for what is not a number; never raises.

    float() also reads the "nan"/"inf" strings that metrics.jsonl uses for non-finite values.
    """
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_number(value) -> bool:
    """A numeric scalar of a record: int, float (numpy's too), or one of the non-finite strings."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, str) and value.lower().lstrip("+-") in ("nan", "inf", "infinity")


def other_scalars(record: dict) -> dict[str, float]:
    """The numeric scalars of a record outside the VAE windows (loss, tc_loss, d_loss, ...)."""
    return {key: number(value) for key, value in record.items()
            if key not in ("iter", "eval", *VAE_SCALARS) and is_number(value)}


def pick_latents(kld: Sequence | None, z_dim: int, top: int = TOP_LATENTS) -> list[int]:
    """The latents a per-latent curve shows: all when z_dim <= top, else the `top` most informative.

    Informative means the largest KL among latents above ACTIVE_KL; latents below it rank by index,
    so the choice does not flicker with the noise of collapsed latents. Returned in index order,
    which keeps a legend's order fixed while the selection holds.
    """
    if z_dim <= top:
        return list(range(z_dim))
    values = [number(v) for v in list(kld or [])[:z_dim]]
    values += [math.nan] * (z_dim - len(values))

    def rank(i: int) -> tuple[float, int]:
        v = values[i]
        return (-v if v >= ACTIVE_KL else 0.0, i)  # NaN compares False: ranked as inactive

    return sorted(sorted(range(z_dim), key=rank)[:top])


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], int]:
    """(records, unreadable) of a metrics.jsonl; ([], 0) for a missing file.

    A line that is not a JSON object with a numeric "iter" (a cut line, damage) is skipped and
    counted; blank lines are ignored.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    records, unreadable = [], 0
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = parse_record(line)
            if record is None:
                unreadable += 1
            else:
                records.append(record)
    return records, unreadable


def parse_record(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not is_number(record.get("iter")) or math.isnan(number(record["iter"])):
        return None
    return record


def plain(value):
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON.

    numpy and torch numbers and arrays become plain numbers and lists first.
    """
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value



def as_array(value, dtype: str = "float32") -> np.ndarray:
    """A torch tensor or array-like as a numpy array of dtype (a copy the caller may keep)."""
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.array(value, dtype=dtype)
