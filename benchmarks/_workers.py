"""Benchmark rows that need a process of their own: one worker process per process-wide
setting (glibc's allocator settings, ``trainer.host_allocator``: a ``system`` row's frees would
hand a ``keep`` row's memory back to the OS), driven by the parent one command at a time, so
only one process computes at any moment and rows can be timed round-robin.

A worker is the benchmark script itself, started with ``--allocator MODE`` added to its
arguments; it calls ``serve(handle)``, which applies the mode and answers each line of its
standard input (split into words) with ``handle(words)``'s dict as one JSON line. The parent
holds a ``Workers`` and calls ``ask(mode, *words)``. Used by ``train_step.py`` and ``gan.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from subprocess import PIPE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.engine.host_memory import set_host_allocator  # noqa: E402

MARK = "@"  # answer lines start with it; anything else a worker prints passes through


class Workers:
    """One worker process per allocator mode in ``modes``, each ``argv + --allocator MODE``."""

    def __init__(self, argv: list[str], modes: Iterable[str]):
        self.procs = {
            mode: subprocess.Popen([*argv, "--allocator", mode], stdin=PIPE, stdout=PIPE, text=True)
            for mode in sorted(set(modes))
        }

    def ask(self, mode: str, *words: str) -> dict:
        """Send one command to the ``mode`` worker and wait for its answer."""
        proc = self.procs[mode]
        proc.stdin.write(" ".join(words) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
            print(line, end="")
        raise RuntimeError(f"the {mode} worker died on {' '.join(words)!r} (its error is above)")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            proc.wait()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(mode: str, handle: Callable[[list[str]], dict]) -> None:
    """The worker's loop: apply allocator ``mode``, then answer every command line."""
    set_host_allocator(mode)
    for line in sys.stdin:
        print(MARK + json.dumps(handle(line.split())), flush=True)
