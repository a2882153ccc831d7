"""trainer.host_allocator: glibc keeps freed CPU memory for reuse (no page faults per step).

Each case runs in a fresh interpreter (mallopt is process-wide and glibc's dynamic thresholds
cannot be turned back on) and counts the kernel's minor page faults over repeated allocations
of a 64 MiB tensor (above glibc's largest mmap threshold, like a big activation): the oracle is
the kernel's own count, 16,384 faults per fresh 64 MiB of 4 KiB pages.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from src.engine.host_memory import set_host_allocator

ROOT = Path(__file__).resolve().parents[2]
PAGES = (64 << 20) // 4096
ROUNDS = 8

CHILD = """
import json, sys
import torch
from src.engine.host_memory import minor_page_faults, set_host_allocator

ROUNDS = int(sys.argv[1])

def faults(rounds):
    start = minor_page_faults()
    for _ in range(rounds):
        x = torch.ones(16 << 20)  # 64 MiB, every page written
        del x
    return minor_page_faults() - start

out = {}
for step in sys.argv[2:]:
    if step.startswith("set:"):  # only switch, allocate nothing
        set_host_allocator(step[4:])
        continue
    changed = set_host_allocator(step)
    faults(3 * ROUNDS)  # warm-up: glibc grows its heap for the first few (up to ~10) blocks
    out[step] = (changed, faults(ROUNDS))
    out.setdefault("order", []).append(step)
print(json.dumps(out))
"""

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)


def _run(*modes: str) -> list:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROUNDS), *modes],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return [out[m] for m in out["order"]]


@glibc
def test_keep_reuses_freed_memory_where_glibc_faults_every_block_in():
    ((changed, faults),) = _run("system")
    assert not changed  # glibc's own defaults, untouched
    assert faults >= 0.9 * ROUNDS * PAGES  # every 64 MiB block mmapped and faulted in anew
    ((changed, faults),) = _run("keep")
    assert changed
    assert faults < 0.05 * ROUNDS * PAGES  # the freed block is reused: no new pages


@glibc
def test_system_after_keep_restores_glibcs_thresholds():
    # (memory already held stays reusable either way: the thresholds are about new blocks)
    ((changed, restored),) = _run("set:keep", "system")
    assert changed
    assert restored >= 0.9 * ROUNDS * PAGES  # above 32 MiB: mmap and unmap again


def test_unknown_mode_names_the_key():
    with pytest.raises(ValueError, match=r"trainer.host_allocator must be one of keep\|system"):
        set_host_allocator("jemalloc")
