"""Errors a user fixes outside the code, and one-line descriptions of failed writes.

A `RunError`'s message names the file or field, the value and the fix; train.py prints
it as one line and exits 1 instead of showing a traceback. Failed writes are described
by their cause: a full disk and a read-only location are the two that a user meets,
and both arrive in disguise (torch's zip writer reports a full disk as "unexpected pos
704 vs 598"; torch.distributed.checkpoint wraps every rank's error in a
`CheckpointException`, a BaseException), so the cause is looked for in the whole chain.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Callable, Iterator

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# The settings that decide where the project writes, named in the fix of a failed write.
WHERE = "run.root, sweep.dir, data.cache_dir or $LRSCALE_CACHE"
# Below this much free space a write that failed without an errno is taken for a full disk.
LOW_SPACE_BYTES = 64 << 20


class RunError(RuntimeError):
    """A problem with the run's files or environment; the message says what to do."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, its causes and contexts, and the per-rank errors inside a CheckpointException."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint.api.CheckpointException
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        todo += [e.__cause__, e.__context__]


def interruption(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or SystemExit in exc's chain, which must keep its meaning (stop
    the process, never become a failed run): DCP wraps a Ctrl-C in its CheckpointException."""
    for e in _chain(exc):
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            return e
    return None


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError behind exc that means a full disk or a location that cannot be written."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_FULL | NOT_WRITABLE:
            return e
    return None


def root_cause(exc: BaseException) -> str:
    """'Type: first line of message' of an error, or of the first rank's error inside a
    CheckpointException (whose own message is every rank's traceback)."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        exc = first[0] if isinstance(first, tuple) else first
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem holding path (its nearest existing ancestor)."""
    path = Path(path).absolute()
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def write_failure(path: Path, exc: BaseException) -> str:
    """One line: what could not be written, why, and the fix."""
    err = disk_error(exc)
    free = free_bytes(path)
    full = (err is not None and err.errno in DISK_FULL) or (err is None and free is not None and free < LOW_SPACE_BYTES)
    if full:
        left = f" ({free / 2**20:.0f} MiB free)" if free is not None else ""
        return (f"cannot write {path}: no space left on the device{left}. Free space there, or point the setting "
                f"that holds it ({WHERE}) at another disk, then rerun the same command to resume")
    if err is not None:
        return (f"cannot write {path}: {err.strerror or 'not writable'} (read-only or not writable location). "
                f"Make it writable, or point the setting that holds it ({WHERE}) at a writable directory, then rerun")
    return f"cannot write {path} ({root_cause(exc)})"


@contextlib.contextmanager
def one_line_errors(say: Callable[[str], None]) -> Iterator[None]:
    """For an entry point: a RunError or a disk error becomes one line and exit code 1; a
    Ctrl-C that could not wait for a checkpoint (a second one) says how to resume, exit 130."""
    try:
        yield
    except RunError as e:
        say(f"error: {e}")
        raise SystemExit(1) from None
    except OSError as e:
        if disk_error(e) is None:
            raise
        say(f"error: {write_failure(Path(e.filename or '.'), e)}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        say("stopped at once by Ctrl-C, without a checkpoint of this step; the run is not finished: rerun the same "
            "command to resume from its last checkpoint")
        raise SystemExit(130) from None
