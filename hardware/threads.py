"""--threads: how many CPU threads a run computes with, and a warning when the machine is already busy.

torch's OpenMP threads meet at the end of every parallel region, so a step runs at the pace of its
slowest thread. On cores another process already keeps busy, some threads are descheduled and the
others wait for them: two trainings started side by side on 2 cores, each with torch's default of
one thread per core, trained at 0.44× the throughput of one alone. So a run that starts on a busy
machine says so, with the flag that helps. (Choosing fewer threads by itself, and OMP_WAIT_POLICY,
are left to measurement: see docs/performance.md.)
"""

import contextlib
import math
import os

import torch


def apply_threads(threads: int) -> int:
    """Set torch's threads (and numba's, which DCI's trees use) when --threads is given; the count in effect."""
    if threads:
        with contextlib.suppress(ImportError, ValueError):  # numba first: starting its threads resets OpenMP's count
            import numba

            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def busy_warning(threads: int, load: float | None = None, cpus: int | None = None) -> str | None:
    """A warning when the load average leaves fewer free cores than this run's threads, else None.

    The run has not started computing yet, so the load is other processes' (a 1-minute average)."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not every platform has a load average
            return None
    cpus = cpus or os.cpu_count() or 1
    free = cpus - load
    if free >= threads - 0.25:  # a little slack: a shell or an editor is not another training
        return None
    advice = max(1, math.floor(free)) if free >= 1 else 1
    return (f"warning: the machine is busy: a load average of {load:.1f} on {cpus} logical CPUs leaves about "
            f"{max(free, 0):.1f} free for this run's {threads} torch threads, and threads waiting on busy cores can "
            f"make every step several times slower. This run keeps {threads} threads; --threads {advice} "
            "would fit what is free.")
