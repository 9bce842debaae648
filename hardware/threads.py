"""--threads: how many CPU threads a run computes with, and what it does when the machine is busy.

torch's OpenMP threads meet at the end of every parallel region, so a step runs at the pace of its
slowest thread. On cores another process already keeps busy, some threads are descheduled and the
others wait for them: two trainings started one after the other on 2 cores, each with torch's
default of one thread per core, trained together at 0.44× the throughput of one alone. So a run
measures, before it starts computing, how many of its CPUs other processes keep busy (the CPU
time /proc/stat counts over a quarter of a second; the 1-minute load average where there is no
/proc, although it lags a job started seconds ago). When fewer are free than its threads, a run
left at torch's default takes the free ones (at least one) and says so, and while it trains it keeps
looking (ThreadGovernor): it gives threads back when another job starts beside it and takes them
again when that job ends. A run given --threads keeps them and is warned. docs/performance.md has
the measurements behind this.
"""

import contextlib
import math
import os
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CpuUse:
    """How many of this process's CPUs others keep busy, and how that was seen."""

    cpus: int
    busy: float
    how: str  # "CPU use over 0.25 s" or "a load average"

    @property
    def free(self) -> float:
        return max(self.cpus - self.busy, 0.0)


def apply_threads(threads: int) -> int:
    """Set torch's threads (and numba's, which DCI's trees use) when --threads is given; the count in effect."""
    if threads:
        with contextlib.suppress(ImportError, ValueError):  # numba first: starting its threads resets OpenMP's count
            import numba

            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over `cpus`, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return None
    busy = total = 0.0
    for fields in lines:
        if int(fields[0][3:]) in cpus:
            ticks = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def cpu_use(sample_s: float = 0.25) -> CpuUse | None:
    """Others' use of this process's CPUs, measured now (call it before this process computes anything)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(sample_s)
        after = _cpu_times(cpus)
        if after is not None and after[1] > before[1]:
            share = (after[0] - before[0]) / (after[1] - before[1])
            return CpuUse(len(cpus), share * len(cpus), f"CPU use over {sample_s:g} s")
    try:
        return CpuUse(len(cpus), os.getloadavg()[0], "a load average")
    except OSError:  # not every platform has a load average
        return None


def fitting_threads(free: float, default: int) -> int:
    """Threads for `free` CPUs: at least one, at most `default`; a CPU half free counts (a shell is not a job)."""
    return max(1, min(default, math.floor(free + 0.5)))


def threads_for_busy(requested: int, threads: int, use: CpuUse | None) -> tuple[int, str | None]:
    """The threads to run with and what to say: `threads` are in effect after --threads `requested` (0: torch's
    default). On a busy machine a default run takes the free CPUs (at least one); a requested count stays."""
    if use is None:
        return threads, None
    fit = fitting_threads(use.free, threads)
    if fit >= threads:  # enough free, or one thread already: nothing to give back
        return threads, None
    seen = (f"the machine is busy: other processes keep {use.busy:.1f} of this run's {use.cpus} CPUs busy ({use.how}), "
            f"leaving about {use.free:.1f} free")
    if requested:
        return threads, (f"warning: {seen} for its {threads} torch threads, and threads waiting on busy cores can make "
                         f"every step several times slower. --threads {threads} was asked for, so it stays; "
                         f"--threads {fit} would fit what is free.")
    return fit, (f"note: {seen}, so this run computes with {fit} torch thread{'s' * (fit > 1)} instead of torch's "
                 f"default of {threads}, and takes more as others finish: threads waiting on busy cores make every "
                 f"step several times slower. --threads {threads} fixes the count.")


class ThreadGovernor:
    """While a run trains at torch's default threads, follows what other processes use of its CPUs.

    Called between steps; every `period_s` it compares the CPU time /proc/stat counted on this process's CPUs
    with this process's own, and sets torch's threads to what is free: fewer when another job has started
    (the run that was there first would otherwise keep every core and wait on the newcomer's), and back to
    the default once the others have stopped using a CPU. Returns what it did, to be printed, or None."""

    def __init__(self, default: int, threads: int | None = None, period_s: float = 5.0, clock=time.monotonic):
        self.default, self.threads = default, threads or default  # torch's default; what the run computes with
        self.period_s, self.clock = period_s, clock
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._mark()

    def _mark(self) -> None:
        self.since = self.clock()
        self.due = self.since + self.period_s
        self.seen = _cpu_times(self.cpus), time.process_time()

    def others_busy(self) -> float | None:
        """CPUs others kept busy since the last look (this process's own CPU time taken out), or None."""
        (before, own_before), now = self.seen, _cpu_times(self.cpus)
        own = time.process_time() - own_before
        if before is None or now is None or now[1] <= before[1]:
            return None
        wall_cpus = (now[1] - before[1]) / self.tick  # CPU-seconds that passed on our CPUs
        return max((now[0] - before[0]) / self.tick - own, 0.0) / wall_cpus * len(self.cpus)

    def __call__(self) -> str | None:
        if self.clock() < self.due:
            return None
        others, seconds = self.others_busy(), self.clock() - self.since
        self._mark()
        if others is None:
            return None
        free = len(self.cpus) - others
        wanted = fitting_threads(free, self.default) if free < self.threads - 0.25 else \
            self.default if free >= self.default - 0.25 else self.threads
        if wanted == self.threads:
            return None
        self.threads = wanted
        apply_threads(wanted)
        why = f"other processes used {others:.1f} of this run's {len(self.cpus)} CPUs over the last {seconds:.0f} s"
        return (f"threads: {wanted} ({why}; back to {self.default} when they stop; --threads fixes the count)"
                if wanted < self.default else f"threads: back to {wanted} ({why})")
