"""Stop signals: finish the current step, save a checkpoint, exit cleanly.

SIGTERM (SLURM preemption, ``docker stop``, ``kill``), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's
``--signal=USR1@90`` warning before the time limit) all ask the run to stop after its step. A
second signal gives up on the graceful stop. These signals usually reach the whole process
group, data workers included: the workers ignore them (``ignore_in_worker``) and the main
process shuts them down, so a group-wide signal never kills the run before it saves.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:  # second signal: give up gracefully-stopping
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def ignore_in_worker(worker_id: int | None = None) -> None:
    """A data worker's first act (DataLoader ``worker_init_fn``): ignore the stop signals,
    then unblock them (they were blocked while the worker was started)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold the stop signals while data workers are started, so none can arrive in a worker
    before it ignores them; a signal that came meanwhile is delivered on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
