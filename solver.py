"""The Solver: the training loop, and when to gather, display and save.

It receives built objects (model, optimizer, objective, data, logger, output
writer, checkpointer) from main.py and owns only the loop. Side effects live
elsewhere: numbers go to a Logger, pictures to an OutputWriter, weights to a
Checkpointer, so training runs the same with or without visdom.
"""

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import CheckpointError, save_checkpoint
from dataset import BatchOrder, batches
from loggers import Logger
from losses import Objective, kl_divergence, reconstruction_loss
from utils import autocast, remove_stale_temps
from visualize import (
    reconstruction_grid,
    save_labelled_png,
    save_png,
    save_traversal_gif,
    traversal_grid,
    traverse,
)


class NonFiniteLoss(Exception):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was saved. `signum` sets the exit status."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class Schedule:
    """How often each periodic action happens, in iterations."""

    max_iter: int
    gather_step: int = 1000
    display_step: int = 10000
    save_step: int = 10000
    snapshot_step: int = 100000
    eval_step: int = 0  # 0: no evaluation during training


class RunningStats:
    """Sums of the per-step statistics since the last gather, kept on the device (no sync per step).

    Layout of `sums`: [recon, total_kld, mean_kld, loss, kld(z), mu(z), var(z)].
    """

    def __init__(self, z_dim: int, device: torch.device):
        self.z_dim = z_dim
        self.sums = torch.zeros(4 + 3 * z_dim, device=device, dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def add(self, recon, total_kld, mean_kld, loss, dim_kld, mu, logvar) -> None:
        row = torch.cat([torch.stack([recon, total_kld, mean_kld, loss]).float(),
                         dim_kld.float(), mu.float().mean(0), logvar.float().exp().mean(0)])
        self.sums += row
        self.count += 1

    def average(self, step: int) -> dict:
        """The interval's averages as a plain record (the format of metrics.jsonl)."""
        values = (self.sums / max(self.count, 1)).tolist()
        z = self.z_dim
        return {"iter": step, "recon_loss": values[0], "total_kld": values[1], "mean_kld": values[2],
                "loss": values[3], "kld": values[4 : 4 + z], "mu": values[4 + z : 4 + 2 * z],
                "var": values[4 + 2 * z :]}

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0

    def state(self) -> dict:
        return {"sums": self.sums.cpu(), "count": self.count}

    def load(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])


class Checkpointer:
    """Saves `last` every save_step and numbered snapshots, never losing the previous file.

    Every file is written atomically (utils.atomic_write), so a kill at any moment leaves the old
    or the new checkpoint, never part of one. The temporary file of a write cut short by SIGKILL
    is removed by the next run's first save.
    """

    def __init__(self, folder: Path, name: str, config: dict):
        self.folder, self.name, self.config = Path(folder), name, config
        self.saved_step: int | None = None  # the iteration `last` holds, once this run has written it
        self.error: OSError | None = None  # why the latest write failed
        self._swept = False

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def save(self, step: int, model, optimizer, extra: dict, snapshot: bool = False) -> bool:
        """Write `last` (and `<step>` when snapshot); return whether `last` was written.

        A failed write (full disk, lost mount) warns and leaves the file as it was; training goes on.
        """
        if not self._swept:
            remove_stale_temps(self.folder)
            self._swept = True
        written = self._write(self.path, step, model, optimizer, extra)
        if written:
            self.saved_step = step
        if snapshot:
            self._write(self.folder / str(step), step, model, optimizer, extra)
        return written

    def _write(self, target: Path, step: int, model, optimizer, extra: dict) -> bool:
        try:
            save_checkpoint(target, step, model, optimizer, self.config, extra)
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
        return f"The checkpoint already at {target}, if any, is intact."


class OutputWriter:
    """Writes reconstruction grids and traversals under output_dir/viz_name/<iter>/."""

    def __init__(self, run_dir: Path, data, traverse_indices: dict, device: torch.device, seed: int,
                 save_files: bool = True):
        self.run_dir, self.data, self.device, self.seed = Path(run_dir), data, device, seed
        self.save_files = save_files  # --save_output False: pictures go to the loggers only
        # Indices beyond a small dataset (tests, subsets) are skipped rather than crash.
        self.traverse_indices = {k: i for k, i in traverse_indices.items() if i < len(data)}

    def image(self, index: int) -> torch.Tensor:
        """One dataset image as float (C, 64, 64) on the device."""
        return self.data.get(torch.tensor([index])).to(self.device).float()[0] * self.data.scale

    def write(self, step: int, model, x: torch.Tensor, kld: list[float] | None, logger: Logger) -> Path:
        """Reconstructions and one traversal per image; rows sorted by KL and labelled with it."""
        order = kl_order(kld) if kld else list(range(model.z_dim))
        labels = [f"z{i} KL {kld[i]:.2f}" if kld else f"z{i}" for i in order]
        folder = self.run_dir / str(step)
        grid = reconstruction_grid(model, x)
        logger.images(step, "reconstruction", grid)
        if self.save_files:
            save_png(grid, folder / "reconstruction.png")
        # The random image is drawn from its own generator so pictures never shift the training RNG.
        pick = torch.Generator().manual_seed(self.seed * 7919 + step)
        keys = dict(self.traverse_indices, random_img=int(torch.randint(len(self.data), (1,), generator=pick)))
        for key, index in keys.items():
            rows = traverse(model, self.image(index), order)  # (latents, steps, C, H, W)
            grid = traversal_grid(rows)
            logger.images(step, f"traverse_{key}", grid)
            if self.save_files:
                save_labelled_png(grid, labels, folder / f"traverse_{key}.png")
                save_traversal_gif(rows, folder / f"traverse_{key}.gif")
        return folder


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks, so it can save before exiting.

    A second signal while saving falls back to the default behaviour.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # handlers can only be installed from the main thread
        return

    def handler(signum, _frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Solver:
    """Trains a β-VAE: one optimisation step per batch, plus the periodic actions of a Schedule."""

    def __init__(self, model, optimizer, objective: Objective, distribution: str, data, order: BatchOrder,
                 device: torch.device, schedule: Schedule, logger: Logger, outputs: OutputWriter,
                 checkpointer: Checkpointer, num_workers: int = 0, autocast_dtype: torch.dtype | None = None,
                 start_step: int = 0, evaluator=None, compile_model: bool = False, channels_last: bool = False):
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.distribution, self.data, self.order, self.device = distribution, data, order, device
        self.schedule, self.logger, self.outputs, self.checkpointer = schedule, logger, outputs, checkpointer
        self.num_workers, self.autocast_dtype = num_workers, autocast_dtype
        self.evaluator = evaluator  # callable(model, step) -> summary scores, or None
        self.step = start_step
        self.stats = RunningStats(model.z_dim, device)
        self.last_record: dict | None = None
        # First iteration whose loss was not finite (-1: none yet) and which term (1 recon, 2 KL, 3 both).
        self.first_bad = torch.tensor([-1, 0], device=device)
        # Speed options (main.py --channels_last, --compile). channels_last: batches in the layout
        # the model's weights were given, so convolutions need no reordering. compile: only the
        # training forward is compiled; self.model stays the plain module that checkpoints and
        # pictures use. fallback_random keeps eager's random stream (the same ε for a seed, so
        # --compile changes rounding only); on a GPU, CUDA graphs remove per-kernel launch cost.
        self.channels_last = channels_last
        options = {"fallback_random": True, "triton.cudagraphs": device.type == "cuda"}
        self.forward = torch.compile(model, options=options) if compile_model else model

    # ------------------------------------------------------------------ the step

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        """One update on a batch x (B, C, 64, 64); returns the loss (scalar tensor, not synced)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.autocast_dtype):
            x_logits, mu, logvar = self.forward(x)
        # Losses in fp32 whatever the forward precision: the sums over 4096 pixels need it.
        x_logits, mu, logvar = x_logits.float(), mu.float(), logvar.float()
        recon = reconstruction_loss(x, x_logits, self.distribution)
        total_kld, dim_kld, mean_kld = kl_divergence(mu, logvar)
        loss = self.objective(recon, total_kld, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.stats.add(recon.detach(), total_kld.detach(), mean_kld.detach(), loss.detach(),
                       dim_kld.detach(), mu.detach(), logvar.detach())
        self._track_finite(recon.detach(), total_kld.detach())
        return loss.detach()

    def _track_finite(self, recon: torch.Tensor, total_kld: torch.Tensor) -> None:
        """Remember the first non-finite iteration on the device, without a sync every step.

        first_bad = [iteration, term]: term 1 reconstruction, 2 KL, 3 both.
        """
        term = (~torch.isfinite(recon)).long() + 2 * (~torch.isfinite(total_kld)).long()
        first = (self.first_bad[0] < 0) & (term > 0)
        self.first_bad = torch.where(first, torch.stack([torch.full((), self.step, device=self.device), term]),
                                     self.first_bad)

    def check_finite(self) -> None:
        """Raise NonFiniteLoss if a loss term or a weight has become NaN or inf (one sync)."""
        step, term = self.first_bad.tolist()
        kept = (f"training stopped and the last good checkpoint was kept "
                f"({self.checkpointer.path}{self._saved_at()}). Try a lower --lr in a new run "
                "(a resumed run keeps the learning rate saved in its checkpoint).")
        if step >= 0:
            name = {1: "reconstruction term", 2: "KL term", 3: "reconstruction and KL terms"}[term]
            raise NonFiniteLoss(f"the {name} of the loss became NaN or inf at iteration {step}; {kept}")
        weights_finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not weights_finite.item():
            raise NonFiniteLoss(f"the weights became NaN or inf by iteration {self.step} "
                                f"(every loss so far was finite); {kept}")

    def _saved_at(self) -> str:
        saved = self.checkpointer.saved_step
        return f", iteration {saved}" if saved is not None else ""

    # ------------------------------------------------------------------ the loop

    def train(self) -> None:
        s = self.schedule
        bar = tqdm(total=s.max_iter, initial=self.step, dynamic_ncols=True, desc="training")
        stream = batches(self.data, self.order, self.step + 1, self.device, self.num_workers)
        x = None
        try:
            with stop_on_signals() as received:
                while self.step < s.max_iter and not received:
                    x = next(stream)
                    self.step += 1
                    loss = self.train_step(x)
                    bar.update(1)
                    self._periodic(x, loss, bar)
                if received:
                    self._interrupt(received[0])
            self._finish(x)
        finally:
            bar.close()
            stream.close()

    def _periodic(self, x: torch.Tensor, loss: torch.Tensor, bar) -> None:
        s, step = self.schedule, self.step
        if step % s.gather_step == 0:
            self.gather()
        if step % min(s.gather_step, 100) == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % s.display_step == 0:
            self.display(x)
        if s.eval_step and step % s.eval_step == 0:
            self.evaluate()
        if step % s.save_step == 0 or step % s.snapshot_step == 0:
            self.save(snapshot=step % s.snapshot_step == 0)

    def _interrupt(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.check_finite()
        if self.save():
            tqdm.write(f"Received {name} at iteration {self.step}: checkpoint saved to {self.checkpointer.path}.")
        else:
            tqdm.write(f"Received {name} at iteration {self.step}, but the checkpoint could not be written "
                       f"({self.checkpointer.error}). {self.checkpointer.describe()}")
        self.logger.close()
        raise Interrupted(signum)

    def _finish(self, x: torch.Tensor | None) -> None:
        """End of training: checkpoint, the last partial interval and pictures, whatever the steps.

        The checkpoint is written before the final gather, so it holds the interval's running sums
        and a run resumed from it gathers exactly the averages of a run never stopped.
        """
        s = self.schedule
        saved = self.save(snapshot=True) or self.checkpointer.saved_step == self.step
        if self.stats.count:
            self.gather()
        if x is not None and self.step % s.display_step != 0:
            self.display(x)
        if not saved:
            raise CheckpointError(
                f"the final checkpoint of iteration {self.step} could not be written ({self.checkpointer.error}). "
                f"{self.checkpointer.describe()} Free some space and run the same command again: it resumes "
                "from that checkpoint.")

    # ------------------------------------------------------------------ periodic actions

    def gather(self) -> dict:
        """Average the interval's statistics into one record and hand it to the logger."""
        self.check_finite()
        record = self.stats.average(self.step)
        capacity = self.objective.target_capacity(self.step)
        if capacity is not None:
            record["C"] = capacity
        self.stats.reset()
        self.last_record = record
        self.logger.scalars(record)
        return record

    def display(self, x: torch.Tensor | None = None) -> None:
        """Print a status line, write the pictures and push buffered points to the loggers."""
        record = self.last_record or self.stats.average(self.step)
        tqdm.write(format_status(record))
        if x is None:  # --train False: reconstruct a fixed batch of the data
            x = self.data.get(self.order.indices(1)[:8]).to(self.device).float() * self.data.scale
        self.model.eval()
        try:
            folder = self.outputs.write(self.step, self.model, x, record.get("kld"), self.logger)
        except OSError as err:  # a full disk must not cost the run: pictures are redrawn next time
            tqdm.write(f"WARNING: could not write the pictures of iteration {self.step} ({err}); training goes on.")
            folder = None
        self.model.train()
        self.logger.flush(self.step)
        if self.outputs.save_files and folder is not None:
            tqdm.write(f"  pictures written to {folder}")

    def evaluate(self) -> dict:
        """Score the current model and log the scores as an `eval` record (JSONL and visdom)."""
        self.check_finite()
        self.model.eval()
        scores = self.evaluator(self.model, self.step)
        self.model.train()
        self.logger.scalars({"iter": self.step, "eval": scores})
        return scores

    def save(self, snapshot: bool = False) -> bool:
        """Checkpoint the run, unless a loss or weight went non-finite (then the last good one stays)."""
        self.check_finite()
        extra = {"gather": self.stats.state(), "last_record": self.last_record}
        return self.checkpointer.save(self.step, self.model, self.optimizer, extra, snapshot)

    def load_state(self, checkpoint: dict) -> None:
        """Resume the statistics of a partly gathered interval (absent in reference checkpoints)."""
        if checkpoint.get("gather"):
            self.stats.load(checkpoint["gather"])
        self.last_record = checkpoint.get("last_record")


def kl_order(kld: list[float]) -> list[int]:
    """Latent indices by decreasing KL: the informative latents first in traversals."""
    return sorted(range(len(kld)), key=lambda i: -kld[i])


def format_status(record: dict) -> str:
    """The display line: losses, KL, the target C (objective B) and each latent's posterior variance."""
    parts = [f"[{record['iter']}] recon_loss:{record['recon_loss']:.3f}",
             f"total_kld:{record['total_kld']:.3f}", f"mean_kld:{record['mean_kld']:.3f}"]
    if "C" in record:
        parts.append(f"C:{record['C']:.3f}")
    variances = " ".join(f"{v:.3f}" for v in record["var"])
    return " ".join(parts) + f"\n  posterior variance: {variances}"
