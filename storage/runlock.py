"""One training run per run folder: an exclusive lock held for the run's whole life.

Two runs on one `--viz_name` would share `last`, the snapshots and `metrics.jsonl`, and each would
destroy the other's work. So a training run takes `RunLock` on its checkpoint folder and its output
folder before it reads or writes anything there, and a second run on the same folders stops at once
with an error that names the holder.

How: each folder gets a file `.run.lock`, locked with flock(2) (exclusive, non-blocking) for as long
as the run lives. The kernel drops the lock when the process ends in any way, SIGKILL and power loss
included, so a lock left behind by a killed run is never stale: the next run simply gets it. The
file itself stays (deleting lock files is what makes lock schemes racy); it holds the last holder's
PID, host and start time, which is what the error shows.

Network file systems: on Linux, flock on NFS is carried out as a whole-file POSIX lock by the NFS
server (NFSv4 natively, NFSv3 through lockd), so it excludes runs on different machines too. When
a machine holding a lock dies, the server frees the lock once that client's lease expires (NFSv4:
90 s by default). A file system that does not support locking (a `nolock` mount, some FUSE file
systems) makes the lock fail: the run stops and says so rather than run unprotected.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".run.lock"


class RunLocked(Exception):
    """Another run holds the folder, or the folder cannot be locked; the message says what to do.
    `holder` names the other run (PID, host, start time) when there is one."""

    holder: str | None = None


class RunLock:
    """Exclusive locks on a run's folders; a context manager, released on exit."""

    def __init__(self, *folders: str | os.PathLike, what: str = "training run"):
        # Sorted, so two runs asking for overlapping folders always lock them in the same order.
        self.folders = sorted({Path(f).resolve() for f in folders})
        self.what = what
        self._files: list = []
        self._created: set[Path] = set()  # folders this lock made: removed again if the run leaves nothing else

    def __enter__(self) -> "RunLock":
        try:
            for folder in self.folders:
                self._files.append(self._lock(folder))
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def ensure(self) -> None:
        """Before writing into the folders: each must still hold our lock file. A folder deleted (or whose
        lock file was replaced) mid-run would let a second run take the name; it is recreated and locked
        again, with a warning, or, when another run holds it by now, this one stops (RunLocked) without
        writing there."""
        for i, folder in enumerate(self.folders):
            held = self._files[i]
            try:
                ours = os.path.samestat(os.stat(folder / LOCK_NAME), os.fstat(held.fileno()))
            except OSError:
                ours = False
            if ours:
                continue
            try:
                self._files[i] = self._lock(folder)
            except RunLocked as err:
                raise RunLocked(f"{folder} was deleted or replaced while this run was using it, and {err} "
                                "This run stopped without writing there again.") from None
            held.close()
            print(f"WARNING: {folder} was deleted while this run was using it; recreated, locked again and "
                  "written from now on. The files deleted with it are gone (checkpoints are written again at "
                  "the next save).", file=sys.stderr, flush=True)

    def release(self) -> None:
        """Unlock; a folder this run created and left holding only its lock file (a run that stopped before
        writing anything, e.g. at data loading) is removed, so a failed start leaves no empty run folders."""
        for folder, held in zip(self.folders, self._files, strict=False):
            if folder not in self._created:
                continue
            try:
                ours = os.path.samestat(os.stat(folder / LOCK_NAME), os.fstat(held.fileno()))
                if ours and [entry.name for entry in folder.iterdir()] == [LOCK_NAME]:
                    (folder / LOCK_NAME).unlink()  # still locked by us: no other run can hold it meanwhile
                    folder.rmdir()
            except OSError:
                pass  # someone else's file appeared, or the folder is gone: leave it as it is
        self._created.clear()
        for f in self._files:
            f.close()  # closing the file releases its flock
        self._files.clear()

    def _lock(self, folder: Path):
        try:
            if not folder.exists():
                self._created.add(folder)
            folder.mkdir(parents=True, exist_ok=True)
            f = open(folder / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
        except OSError as err:
            raise RunLocked(f"cannot create the run folder's lock file {folder / LOCK_NAME} ({err.strerror}). "
                            "Check that the folder is writable (permissions, free space, a mounted disk), or "
                            "point --ckpt_dir/--output_dir elsewhere.") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(f)
            f.close()
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                held = RunLocked(
                    f"{folder} is in use by another {self.what}: {holder}. Two runs on one folder would "
                    "overwrite each other's checkpoints and logs, so this one stops without touching anything. "
                    "Wait for that run to finish (or stop it), or start this one under another --viz_name.")
                held.holder = holder
                raise held from None
            raise RunLocked(
                f"cannot lock {folder / LOCK_NAME} ({err.strerror}): this file system does not support file "
                "locks (a 'nolock' NFS mount or some FUSE file systems), so two runs on this folder could not be "
                "kept apart. Use a folder on a file system with locking for --ckpt_dir and --output_dir."
            ) from None
        _write_holder(f)
        return f


def _write_holder(f) -> None:
    """Record who holds the lock, for the error a second run prints (best effort: the lock is what counts)."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder) + "\n")
        f.flush()  # no fsync: the note only serves the error message, and the lock is what counts
    except OSError:
        pass


def _read_holder(f) -> str:
    try:
        f.seek(0)
        holder = json.loads(f.read() or "{}")
        return f"PID {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"
