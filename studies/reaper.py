"""Ray's agents die with the sweep, even when the sweep is killed with `kill -9`.

A Ray started by the sweep (`ray.init(address="local")`) ties its GCS server and raylet to the
driver (Linux PR_SET_PDEATHSIG: they get SIGKILL when it dies), and the workers die with the raylet.
Its dashboard and runtime-env agents do not: they notice the raylet is gone at once, then spend 60 s
(a timeout fixed in Ray 2.60) trying to report that to the dead GCS, holding ~160 MB, before they exit.

Nothing catches SIGKILL, so a small watcher process does it: started with the PIDs (and start times,
so a reused PID is never touched) of the Ray processes this sweep started, read from /proc (Linux, where
Ray's fate-sharing works; elsewhere there is no watcher), it waits on a pipe from the driver. The
kernel closes that pipe when the driver dies in any way; the watcher then SIGKILLs those processes that
are still alive and exits. A sweep that ends normally writes "done" first, after
ray.shutdown(), and the watcher exits without touching anything.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

DONE = b"done\n"


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) from /proc/<pid>/stat; None for a process gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def ray_processes(root: int | None = None) -> list[tuple[int, int]]:
    """(pid, start time) of every process below `root` (this one by default): what ray.init just started."""
    if not Path("/proc/self/stat").exists():
        return []
    stats = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    below, found = {root or os.getpid()}, []
    while True:
        new = [(pid, st[1]) for pid, st in stats.items() if st and st[0] in below and pid not in below]
        if not new:
            return found
        below.update(pid for pid, _ in new)
        found += new


def start(processes: list[tuple[int, int]]) -> subprocess.Popen | None:
    """The watcher of `processes`; None when there is nothing to watch."""
    if not processes:
        return None
    return subprocess.Popen([sys.executable, "-m", "studies.reaper", json.dumps(processes)],
                            stdin=subprocess.PIPE, start_new_session=True,  # a Ctrl-C in the terminal is the sweep's
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stop(watcher: subprocess.Popen | None) -> None:
    """The sweep ended normally and shut Ray down: the watcher leaves every process alone."""
    if watcher is None:
        return
    with contextlib.suppress(OSError):
        watcher.stdin.write(DONE)
        watcher.stdin.close()
    watcher.wait(timeout=10)


def _watch(processes: list[tuple[int, int]]) -> None:
    """Block until the driver's end of the pipe closes; SIGKILL the listed processes unless it said done."""
    said = sys.stdin.buffer.read()  # returns at EOF: the driver closed the pipe, or died
    if said == DONE:
        return
    for pid, started in processes:
        stat = _stat(pid)
        if stat is not None and stat[1] == started:  # the same process, not a reused PID
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch([tuple(p) for p in json.loads(sys.argv[1])])
