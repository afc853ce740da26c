"""One writer per run directory.

Two processes training the same run would append every metrics row twice and write the
same temporary checkpoint. The first process to start takes an exclusive `flock` on
`<run_dir>/run.lock` and holds it for the run's life; a second one is refused, naming
the holder (pid, host, start time, command) that the holder wrote into the file.

The kernel drops an flock when its holder dies, kill -9 included, so a lock left by a
killed process is simply free: the next run takes it over and says whose it was. The
file itself is never deleted (deleting a lock file lets two processes lock two different
files of the same name); an empty file means nobody holds it. On a filesystem without
flock support the run goes on with a warning. Across nodes, flock works on NFSv4 and on
Lustre mounted with `-o flock`.

Standard library only, so that a test can hold a lock from a bare subprocess.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import RunError

LOCK = "run.lock"


class RunLockedError(RunError):
    """Another process holds the run directory."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv}


def _read_holder(f) -> dict:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except ValueError:
        return {}


def _describe(h: dict) -> str:
    if not h:
        return "another process (which has not recorded itself yet)"
    return f"pid {h.get('pid')} on host {h.get('host')} (since {h.get('started_at')}: {' '.join(h.get('argv', []))})"


class RunLock:
    """Exclusive lock on a run directory; `acquire` raises RunLockedError when it is taken."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(f)
            f.close()
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by {_describe(holder)}. One process writes a run at a "
                "time: wait for it to finish, or stop it (it checkpoints and exits on SIGTERM) and rerun") from None
        except OSError as e:  # no flock on this filesystem: better unguarded than not at all
            f.close()
            print(f"[train] warning: cannot lock {self.path} ({e.strerror}); nothing stops a second process from "
                  "writing this run directory at the same time", file=sys.stderr)
            return
        previous = _read_holder(f)
        if previous:  # its holder died without releasing (kill -9, a crashed node): the kernel freed the lock
            print(f"[train] took over {self.path} from {_describe(previous)}, which is no longer running",
                  file=sys.stderr)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_holder()) + "\n")
        f.flush()
        os.fsync(f.fileno())
        self._file = f

    def release(self) -> None:
        if self._file is None:
            return
        self._file.truncate(0)  # empty = free; a holder record would read as a crashed run
        self._file.flush()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
