"""The Solver: the training loop, and when to gather, display and save.

It receives built objects (a method, data, logger, output writer, checkpointer) from main.py and
owns only the loop. What one step does belongs to the method (methods/); side effects live
elsewhere: numbers go to a Logger, pictures to an OutputWriter, weights to a Checkpointer, so
training runs the same for every method, with or without visdom.
"""

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm import tqdm

from dataset import BatchOrder, batches
from methods import Method
from monitoring.pictures import OutputWriter
from monitoring.records import Logger
from storage.checkpoint import CheckpointError
from storage.checkpointer import Checkpointer


class NonFiniteLoss(Exception):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived; a checkpoint was saved. `signum` sets the exit status."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# What a user's environment sends to end a process: Ctrl-C, kill/timeout/Slurm/docker stop, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal outside the training loop (nothing to save there), or a second one while saving.
    A KeyboardInterrupt, so whatever cleans up after Ctrl-C cleans up after SIGTERM and SIGHUP too."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def stop_raises():
    """Outside the loop, SIGTERM and SIGHUP end the process as Ctrl-C does: by raising (Stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS if s != signal.SIGINT}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class Schedule:
    """How often each periodic action happens, in iterations."""

    max_iter: int
    gather_step: int = 1000
    display_step: int = 10000
    save_step: int = 10000
    snapshot_step: int = 100000
    eval_step: int = 0  # 0: no evaluation during training

    # A first look within a minute or two of a start, before the flags' steps come round (10,000 iterations
    # between pictures at the defaults): a point at these iterations and pictures, where the flags' steps are later.
    early: tuple[int, ...] = (100, 1000)

    def gathers(self, step: int) -> bool:
        return step % self.gather_step == 0 or (step in self.early and step < self.gather_step)

    def displays(self, step: int) -> bool:
        return step % self.display_step == 0 or (step in self.early and step < self.display_step)


class RunningStats:
    """Sums of a method's per-step stats since the last gather, kept on the device (no sync per step).

    `sizes` is Method.stat_sizes(): name -> 1 (a scalar) or z_dim (one value per latent), in record
    order. `sums` lays them end to end; for the VAEs that is [recon, total_kld, mean_kld, loss, kld(z),
    mu(z), var(z), extras...]. `per_latent` names the per-latent stats, which stay lists at z_dim 1.
    """

    def __init__(self, sizes: dict[str, int], device: torch.device, per_latent: tuple[str, ...] = ()):
        self.sizes = dict(sizes)
        self.per_latent = set(per_latent)
        self.sums = torch.zeros(sum(self.sizes.values()), device=device, dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def add(self, stats: dict[str, torch.Tensor]) -> None:
        row = torch.cat([stats[name].float().reshape(-1) for name in self.sizes])
        self.sums += row
        self.count += 1

    def average(self, step: int) -> dict:
        """The interval's averages as a plain record (the format of metrics.jsonl)."""
        values = (self.sums / max(self.count, 1)).tolist()
        record, start = {"iter": step}, 0
        for name, size in self.sizes.items():
            record[name] = values[start] if size == 1 and name not in self.per_latent else values[start : start + size]
            start += size
        return record

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0

    def state(self) -> dict:
        return {"sums": self.sums.cpu(), "count": self.count}

    def load(self, state: dict) -> None:
        if tuple(state["sums"].shape) != tuple(self.sums.shape):
            raise ValueError(f"gathered sums of shape {tuple(state['sums'].shape)}, expected {tuple(self.sums.shape)}")
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])


@contextmanager
def stop_on_signals():
    """Turn SIGINT, SIGTERM and SIGHUP into a flag the loop checks, so it can save before exiting.

    A second signal while saving raises Stopped: the process ends without waiting for the save.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # handlers can only be installed from the main thread
        return

    def handler(signum, _frame):
        if received:
            raise Stopped(signum)
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Solver:
    """Trains a method: one training step per batch, plus the periodic actions of a Schedule."""

    def __init__(self, method: Method, data, order: BatchOrder, device: torch.device, schedule: Schedule,
                 logger: Logger, outputs: OutputWriter, checkpointer: Checkpointer, num_workers: int = 0,
                 start_step: int = 0, evaluator=None):
        self.method, self.data, self.order, self.device = method, data, order, device
        self.schedule, self.logger, self.outputs, self.checkpointer = schedule, logger, outputs, checkpointer
        self.num_workers = num_workers
        self.evaluator = evaluator  # callable(method, step) -> {"summary": scores, "matrices": ...}, or None
        self.step = start_step
        # Called before each write into the run's folders; main.py sets RunLock.ensure: folders deleted
        # mid-run are recreated under the lock, never silently without it.
        self.guard = lambda: None
        # Called between steps; returns a line to print or None. main.py sets a ThreadGovernor, which gives
        # threads back while another job uses the CPUs (hardware/threads.py).
        self.pace = lambda: None
        self.stats = RunningStats(method.stat_sizes(), device, method.per_latent_stats)
        self.last_record: dict | None = None
        self._seconds_before, self._segment_start = 0.0, None  # train_seconds(): earlier sessions, this one
        # The loss terms whose NaN or inf stops the run, and the first iteration where one was not finite
        # (-1: none yet) with a bit mask of which terms (bit i: watched term i).
        self.watched = list(method.watched.items())
        self.term_bits = 2 ** torch.arange(len(self.watched), device=device)  # (terms,): 1, 2, 4, ...
        self.first_bad = torch.tensor([-1, 0], device=device)

    # ------------------------------------------------------------------ the step

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update on a batch x (B, C, 64, 64); returns the method's stats (tensors, not synced)."""
        stats = self.method.train_step(x, self.step)
        self.stats.add(stats)
        self._track_finite(stats)
        return stats

    def _track_finite(self, stats: dict[str, torch.Tensor]) -> None:
        """Remember the first non-finite iteration on the device, without a sync every step."""
        if not self.watched:
            return
        bad = torch.stack([~torch.isfinite(stats[name]) for name, _ in self.watched]).long()
        term = (bad * self.term_bits).sum()
        first = (self.first_bad[0] < 0) & (term > 0)
        self.first_bad = torch.where(first, torch.stack([torch.full((), self.step, device=self.device), term]),
                                     self.first_bad)

    def check_finite(self) -> None:
        """Raise NonFiniteLoss if a loss term or a weight has become NaN or inf (one sync)."""
        step, term = self.first_bad.tolist()
        kept = (f"training stopped and {self._kept()}. Try a lower --lr in a new run"
                + (", or resume with --resume_with_changes True --lr <lower>." if self._has_checkpoint() else "."))
        if step >= 0:
            words = [words for bit, (_, words) in enumerate(self.watched) if term >> bit & 1]
            name = " and ".join(words) + (" terms" if len(words) > 1 else " term")
            raise NonFiniteLoss(f"the {name} of the loss became NaN or inf at iteration {step}; {kept}")
        weights_finite = torch.stack([torch.isfinite(p).all() for p in self.method.parameters()]).all()
        if not weights_finite.item():
            raise NonFiniteLoss(f"the weights became NaN or inf by iteration {self.step} "
                                f"(every loss so far was finite); {kept}")

    def check_loaded(self) -> None:
        """--train False: refuse a checkpoint whose weights are NaN or inf before drawing or scoring anything."""
        if not all(torch.isfinite(p).all().item() for p in self.method.parameters()):
            raise NonFiniteLoss(
                f"{self.checkpointer.path} (iteration {self.step}) holds NaN or inf weights, so it cannot be drawn "
                "or scored; nothing was written. Evaluate an earlier snapshot of the run instead (--ckpt_name "
                f"<iteration>, the numbered files in {self.checkpointer.folder}).")

    def _has_checkpoint(self) -> bool:
        return self.checkpointer.saved_step is not None or self.checkpointer.resumed_step is not None

    def _kept(self) -> str:
        """What is on disk to go back to, truthfully."""
        saved = self.checkpointer.saved_step
        if saved is not None:
            return f"the last good checkpoint was kept ({self.checkpointer.path}, iteration {saved})"
        if self.checkpointer.resumed_step is not None:
            return (f"the last good checkpoint was kept ({self.checkpointer.path}, iteration "
                    f"{self.checkpointer.resumed_step}, the one this run resumed from)")
        return "no checkpoint had been written yet, so there is nothing to resume from"

    # ------------------------------------------------------------------ the loop

    def train(self) -> None:
        s = self.schedule
        self._segment_start = time.monotonic()
        if not self.method.iterative:  # a baseline (PCA, ICA): fitted once on the data, no loop
            if self.method.fitted:
                tqdm.write(f"Already fitted: {self.checkpointer.path} holds the fitted {self.method.name}; "
                           "nothing to fit again. To refit, pass a new --viz_name.")
                return
            self.method.fit(self.data)
            self.step = max(self.step, 1)  # the fit is the method's one step: checkpoint and pictures at 1
            self._finish(None)
            self.display()
            return
        if self.step >= s.max_iter:
            if self.checkpointer.resumed_step is None:  # a fresh start with --max_iter 0
                tqdm.write(f"Nothing to train: --max_iter is {s.max_iter}; no checkpoint was written.")
            else:
                tqdm.write(f"Nothing to train: the checkpoint is at iteration {self.step}, and --max_iter is "
                           f"{s.max_iter}. To train further, run the same command with a larger --max_iter.")
            return
        bar = tqdm(total=s.max_iter, initial=self.step, dynamic_ncols=True, desc="training")
        stream = batches(self.data, self.order, self.step + 1, self.device, self.num_workers)
        x = None
        try:
            with stop_on_signals() as received:
                while self.step < s.max_iter and not received:
                    x = next(stream)
                    self.step += 1
                    stats = self.train_step(x)
                    bar.update(1)
                    note = self.pace()
                    if note:
                        tqdm.write(note)
                    self._periodic(x, stats, bar)
                if received:
                    self._interrupt(received[0])
            self._finish(x)
        finally:
            bar.close()
            stream.close()

    def _periodic(self, x: torch.Tensor, stats: dict, bar) -> None:
        s, step = self.schedule, self.step
        if s.gathers(step):
            self.gather()
        if step % min(s.gather_step, 100) == 0 and "loss" in stats:
            bar.set_postfix(loss=f"{stats['loss'].item():.3f}", refresh=False)
        if s.displays(step):
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
        if x is not None and not s.displays(self.step):
            self.display(x)
        if not saved:
            again = ("Free some space and run the same command again: it resumes from that checkpoint."
                     if self._has_checkpoint() else "Free some space and run the same command again: with no "
                     "checkpoint to resume from, it starts over.")
            raise CheckpointError(
                f"the final checkpoint of iteration {self.step} could not be written ({self.checkpointer.error}). "
                f"{self.checkpointer.describe()} {again}")

    # ------------------------------------------------------------------ periodic actions

    def gather(self) -> dict:
        """Average the interval's statistics into one record and hand it to the logger."""
        self.check_finite()
        self.guard()
        record = self.stats.average(self.step) | self.method.scheduled(self.step)
        self.stats.reset()
        self.last_record = record
        self.logger.scalars(record)
        return record

    def display(self, x: torch.Tensor | None = None) -> None:
        """Print a status line, write the pictures and push buffered points to the loggers."""
        self.guard()
        record = self.last_record or (self.stats.average(self.step) if self.stats.count else None)
        if record is not None:
            tqdm.write(format_status(record))
        if x is None:  # --train False: reconstruct a fixed batch of the data
            x = self.data.get(self.order.indices(1)[:8]).to(self.device).float() * self.data.scale
        self.method.eval()
        try:
            folder = self.outputs.write(self.step, self.method, x, (record or {}).get("kld"), self.logger)
        except OSError as err:  # a full disk must not cost the run: pictures are redrawn next time
            tqdm.write(f"WARNING: could not write the pictures of iteration {self.step} ({err}); training goes on.")
            folder = None
        self.method.train()
        self.logger.flush(self.step)
        if self.outputs.save_files and folder is not None:
            tqdm.write(f"  pictures written to {folder}")

    def evaluate(self) -> dict:
        """Score the current model; log the scores as an `eval` record and its matrices as heatmaps."""
        self.check_finite()
        self.method.eval()
        result = self.evaluator(self.method, self.step)
        self.method.train()
        scores = result.get("summary", {})
        self.logger.scalars({"iter": self.step, "eval": scores})
        for name, matrix in result.get("matrices", {}).items():
            self.logger.heatmap(self.step, name, matrix["matrix"], matrix["rows"], matrix["columns"])
        return scores

    def save(self, snapshot: bool = False) -> bool:
        """Checkpoint the run, unless a loss or weight went non-finite (then the last good one stays)."""
        self.check_finite()
        self.guard()
        extra = {"gather": self.stats.state(), "last_record": self.last_record, "train_seconds": self.train_seconds()}
        return self.checkpointer.save(self.step, self.method, extra, snapshot)

    def train_seconds(self) -> float:
        """Wall time spent training this run, summed over every session that resumed it (result cards)."""
        running = time.monotonic() - self._segment_start if self._segment_start is not None else 0.0
        return self._seconds_before + running

    def load_state(self, checkpoint: dict) -> None:
        """Resume the statistics of a partly gathered interval (absent in reference checkpoints)."""
        if checkpoint.get("gather"):
            self.stats.load(checkpoint["gather"])
        self.last_record = checkpoint.get("last_record")
        seconds = checkpoint.get("train_seconds")
        self._seconds_before = float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else 0.0


def format_status(record: dict) -> str:
    """The display line: every scalar of the record (losses, KL, C for objective B, ...), then each
    latent's posterior variance, numbered z0, z1, ... as everywhere else."""
    parts = [f"[{record['iter']}]"] + [f"{name}:{value:.3f}" for name, value in record.items()
                                       if name != "iter" and isinstance(value, float)]
    if "var" not in record:
        return " ".join(parts)
    var = record["var"] if isinstance(record["var"], list) else [record["var"]]  # a z_dim 1 record of older runs
    variances = " ".join(f"z{i}:{v:.3f}" for i, v in enumerate(var))
    return " ".join(parts) + f"\n  posterior variance: {variances}"
