"""benchmarks/_workers.py: the worker processes the benchmarks time their allocator modes in.
Each mode gets its own process with that mode applied (glibc: a freed 64 MiB block is faulted
in again each time under ``system``, not once settled under ``keep``), answers come back in
order, and a worker that dies is reported with its mode instead of hanging the benchmark."""

from __future__ import annotations

import sys
import textwrap

import pytest

from benchmarks._workers import Workers
from src.engine.host_memory import _mallopt

WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    from benchmarks._workers import serve
    from src.engine.host_memory import minor_page_faults

    def handle(words):
        if words[0] == "die":
            raise SystemExit(3)
        for _ in range(6):  # 64 MiB, freed, then asked for again (glibc settles in a few)
            before = minor_page_faults()
            torch.ones(16 << 20)
            faults = minor_page_faults() - before
        return {{"pid": os.getpid(), "echo": words, "faults": faults}}

    serve(sys.argv[sys.argv.index("--allocator") + 1], handle)
    """
)


@pytest.fixture
def script(tmp_path):
    from tests.conftest import REPO

    path = tmp_path / "worker.py"
    path.write_text(WORKER.format(root=str(REPO)))
    return [sys.executable, str(path)]


def test_each_mode_runs_in_its_own_process_with_its_allocator(script):
    with Workers(script, ["system", "keep", "keep"]) as workers:
        assert sorted(workers.procs) == ["keep", "system"]  # one process per mode
        first = {mode: workers.ask(mode, "step", mode) for mode in ("system", "keep")}
        again = {mode: workers.ask(mode, "step", "2") for mode in ("system", "keep")}
    # (the last of six allocations of the same 64 MiB block)
    assert first["system"]["pid"] != first["keep"]["pid"]
    assert first["keep"]["echo"] == ["step", "keep"] and again["keep"]["echo"] == ["step", "2"]
    assert again["keep"]["pid"] == first["keep"]["pid"]  # the same process answers each time
    if _mallopt() is not None:  # glibc: the allocator setting reached the worker
        pages = (16 << 20) * 4 // 4096  # of the 64 MiB block
        assert again["keep"]["faults"] < 1000
        assert again["system"]["faults"] > pages // 2  # unmapped on free, faulted in again


def test_a_worker_that_dies_is_reported_with_its_mode(script):
    with Workers(script, ["system"]) as workers:
        with pytest.raises(RuntimeError, match="the system worker died on 'die'"):
            workers.ask("system", "die")
