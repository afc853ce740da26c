"""Clean interruption: finish the step, write a checkpoint, say how to resume, exit.

SIGTERM (what Slurm and most schedulers send before SIGKILL), SIGINT (Ctrl-C), SIGUSR1
and SIGUSR2 (submitit's "pre-empted or about to time out" signal: USR2 since submitit
1.5, USR1 before) only set a flag while training runs. The loop reads it at each step
boundary; then the run writes a checkpoint, marks itself `interrupted` in summary.json
(never done: rerunning resumes it) and leaves with `Interrupted`, a SystemExit whose code
is the shell's convention 128 + signal number: SIGTERM 143, SIGINT 130, SIGUSR1 138,
SIGUSR2 140.

Under torchrun the ranks agree with one tiny all-reduce (max of the signal numbers) per
step, so they stop after the same step even when the signal reached only some of them.
One process reads the flag directly. A second Ctrl-C stops at once (KeyboardInterrupt).

Handlers that were installed before ours (submitit's requeue on SIGUSR2) are called,
for each signal received, once the checkpoint is written: a launcher still requeues the
job it owns (and then exits by itself).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from . import distributed
from .distributed import World

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(SystemExit):
    """The run stopped cleanly on a signal; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """Set by the signal handlers; read by the loop at step boundaries."""

    def __init__(self):
        self.signum: int | None = None        # the first signal: names the stop, sets the exit code
        self.received: list[int] = []         # every signal this process got, in order
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and signal.SIGINT in self.received:
            raise KeyboardInterrupt("a second Ctrl-C")  # the user does not want to wait for the step
        if signum not in self.received:
            self.received.append(signum)
        if self.signum is None:
            self.signum = signum

    def requested(self, world: World) -> bool:
        """Whether any rank got a signal. Collective under torchrun: every rank calls it each step."""
        signum = self.signum or 0
        if world.distributed:
            signum = int(distributed.max_across_ranks(signum))
        if signum:
            self.signum = signum  # the agreed signal, on the ranks that did not get one too
        return bool(signum)

    def exit(self) -> None:
        """Hand each signal received to the handler that was there before ours (a launcher's),
        then exit with 128 + the first signal's number."""
        if self.signum is None:
            return
        for signum in self.received:
            before = self.previous.get(signum)
            if callable(before) and before is not signal.default_int_handler:
                before(signum, None)  # e.g. submitit: requeue the job, then sys.exit
        raise Interrupted(self.signum)


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install the handlers for the block (main thread only: elsewhere Python cannot)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    for s in SIGNALS:
        stop.previous[s] = signal.signal(s, stop._handle)
    try:
        yield stop
    finally:
        for s, handler in stop.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
