"""When and where a run's checkpoints are written: `last` every save_step, numbered snapshots, never a cut file."""

from pathlib import Path

from tqdm import tqdm

from methods import Method
from storage.checkpoint import save_checkpoint
from utils import remove_stale_temps


class Checkpointer:
    """Saves `last` every save_step and numbered snapshots, never losing the previous file.

    Every file is written atomically (utils.atomic_write), so a kill at any moment leaves the old
    or the new checkpoint, never part of one. The temporary file of a write cut short by SIGKILL
    is removed by the next run's first save.
    """

    def __init__(self, folder: Path, name: str, config: dict):
        self.folder, self.name, self.config = Path(folder), name, config
        self.saved_step: int | None = None  # the iteration `last` holds, once this run has written it
        self.resumed_step: int | None = None  # the iteration of the checkpoint this run resumed from, if any
        self.error: OSError | None = None  # why the latest write failed
        self._swept = False

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def save(self, step: int, method: Method, extra: dict, snapshot: bool = False) -> bool:
        """Write `last` (and `<step>` when snapshot); return whether `last` was written.

        A failed write (full disk, lost mount) warns and leaves the file as it was; training goes on.
        """
        if not self._swept:
            remove_stale_temps(self.folder)
            self._swept = True
        written = self._write(self.path, step, method, extra)
        if written:
            self.saved_step = step
        if snapshot:
            self._write(self.folder / str(step), step, method, extra)
        return written

    def _write(self, target: Path, step: int, method: Method, extra: dict) -> bool:
        try:
            save_checkpoint(target, step, method, self.config, extra)
        except OSError as err:
            self.error = err
            tqdm.write(f"WARNING: could not write checkpoint {target} at iteration {step} ({err}). "
                       f"{self.describe(target)} Training goes on; the next save tries again.")
            return False
        return True

    def describe(self, target: Path | None = None) -> str:
        """What a failed write left on disk, in words."""
        target = target or self.path
        if target == self.path and self.saved_step is not None:
            return f"{target} is intact and still holds iteration {self.saved_step}."
        if target == self.path and self.resumed_step is not None:
            return f"{target} is intact and still holds iteration {self.resumed_step}."
        if target.exists():
            return f"The checkpoint already at {target} is intact."
        return f"No checkpoint was written to {target}."
