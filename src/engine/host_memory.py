"""How the process's C allocator treats freed CPU memory (``trainer.host_allocator``).

PyTorch's CPU tensors come from the C library's ``malloc``; unlike CUDA memory there is no
caching allocator in front of it. glibc serves every block above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and unmaps it on free, and trims the heap's free top back to the
OS, so a training step whose activations are tens of MiB each asks the kernel for all of them
again every step: on a memory-bound network (RetinaFace MobileNet-0.25, batch 8 at 640) over
half a million page faults and more than half of the step's time in the kernel.

``keep`` (the default) tells glibc, through ``mallopt``, never to serve blocks by ``mmap``
(``M_MMAP_MAX = 0``) and never to trim (``M_TRIM_THRESHOLD = -1``): freed memory stays in the
process and the next step reuses it without a page fault (the same idea as running under
jemalloc / tcmalloc, which PyTorch's CPU tuning guide recommends, without ``LD_PRELOAD``). The
cost: the process keeps its peak CPU memory until it exits. ``system`` leaves glibc's defaults;
after ``keep`` in the same process it restores the thresholds glibc's own dynamic ones reach
on such a workload (mmap above 32 MiB, trim above 64 MiB) for the blocks it allocates next.
Without glibc (macOS, musl) both are the system's allocator, said once in the log.
``benchmarks/train_step.py`` measures it.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

MODES = ("keep", "system")
# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
# glibc's defaults as its dynamic thresholds leave them once a > 32 MiB block was freed.
SYSTEM_MMAP_MAX = 65536
SYSTEM_MMAP_THRESHOLD = 32 << 20
SYSTEM_TRIM_THRESHOLD = 64 << 20

_changed = False  # mallopt was called in this process (glibc's dynamic thresholds are off)


def _mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return getattr(ctypes.CDLL(None), "mallopt", None)


def set_host_allocator(mode: str) -> bool:
    """Apply ``mode`` (``keep`` | ``system``) to this process (and the data loader workers it
    forks later). Returns whether glibc's settings were changed."""
    global _changed
    if mode not in MODES:
        raise ValueError(f"trainer.host_allocator must be one of {'|'.join(MODES)}, got {mode!r}")
    mallopt = _mallopt()
    if mallopt is None:
        if mode == "keep":
            log.info("trainer.host_allocator=keep needs glibc's mallopt; the system allocator runs")
        return False
    if mode == "system" and not _changed:
        return False  # glibc's own defaults, dynamic thresholds included
    if mode == "keep":
        settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    else:
        settings = (
            (M_MMAP_MAX, SYSTEM_MMAP_MAX),
            (M_MMAP_THRESHOLD, SYSTEM_MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, SYSTEM_TRIM_THRESHOLD),
        )
    for param, value in settings:
        if mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            raise OSError(f"mallopt({param}, {value}) failed")
    _changed = True
    return True


def minor_page_faults() -> int:
    """Minor page faults of this process so far (``getrusage``; -1 where there is none)."""
    try:
        import resource
    except ImportError:  # Windows
        return -1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
