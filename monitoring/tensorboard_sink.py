"""TensorBoard beside visdom: the same records, pictures and scores as event files under the run's folder.

    python main.py ... --tensorboard True          # writes outputs/<viz_name>/tensorboard/
    tensorboard --logdir outputs                   # every run, side by side, on localhost:6006

Tags: each scalar of a record under its own name (loss, recon_loss, total_kld, C, tc_loss, ...);
per-latent lists as `kld/z0`, `mu/z0`, `var/z0`, ...; scores as `eval/<score>`; pictures under
their names (reconstruction, traverse_<key>); heatmaps as markdown tables under `heatmap/<name>`.

Never slows training: torch's SummaryWriter queues events and writes them from its own thread,
and a record costs a few dictionary look-ups here. A resumed run passes its checkpoint's iteration
so TensorBoard hides the stopped run's events after it and curves are not doubled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from monitoring.records import LATENT_KEYS, Logger, as_array, is_number, number

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EVENTS_DIR = "tensorboard"  # under the run's output folder


class TensorBoardLogger(Logger):
    def __init__(self, log_dir: str | Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        # flush_secs: the writer thread pushes events to disk this often; training never waits for it.
        # purge_step: TensorBoard hides this folder's events from that step on (the records after the checkpoint,
        # which this run redoes), as metrics.jsonl moves them aside.
        purge_step = resume_step + 1 if resume_step else None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=30)

    def scalars(self, record: dict) -> None:
        step = int(number(record["iter"]))
        for key, value in record.items():
            if key == "iter":
                continue
            if key == "eval" and isinstance(value, dict):
                for score, result in value.items():
                    if is_number(result):
                        self.writer.add_scalar(f"eval/{score}", number(result), step)
            elif key in LATENT_KEYS and isinstance(value, list):
                for i, latent in enumerate(value):  # one curve per latent, numbered z0, z1, ... as everywhere
                    self.writer.add_scalar(f"{key}/z{i}", number(latent), step)
            elif is_number(value):
                self.writer.add_scalar(key, number(value), step)

    def images(self, step: int, name: str, grid: torch.Tensor) -> None:
        array = as_array(grid)  # (C, H, W) in [0, 1]; NaN pixels of a diverged model shown black
        array[array != array] = 0.0
        self.writer.add_image(name, array.clip(0.0, 1.0), step, dataformats="CHW")

    def heatmap(self, step: int, name: str, matrix, rows: Sequence[str], columns: Sequence[str]) -> None:
        array = as_array(matrix, "float64")  # (rows, columns)
        lines = ["| | " + " | ".join(map(str, columns)) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for row, values in zip(rows, array,
                                                                                                      strict=True)]
        self.writer.add_text(f"heatmap/{name}", "\n".join(lines), step)

    def flush(self, step: int) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_logger(run_dir: Path, resume_step: int | None) -> Logger | None:
    """The sink, or None with one warning when the `tensorboard` package is missing (the run goes on)."""
    try:
        return TensorBoardLogger(Path(run_dir) / EVENTS_DIR, resume_step)
    except ImportError as err:
        log.warning("--tensorboard is true but TensorBoard support is unavailable (%s); the run goes on and logs "
                    "to %s. Install it with: pip install tensorboard", err, Path(run_dir) / "metrics.jsonl")
        return None
