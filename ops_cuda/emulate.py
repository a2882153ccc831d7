"""CPU emulation of the ops_cuda kernels: the same ``.cu`` source compiled by g++.

``emu_shim.h`` defines the CUDA keywords and thread indices; for every float/double name
expression of a source a C entry point ``cvo_emu__<name>__<type>(grid, block, params)`` runs
``cvo_emu::launch``, which loops over every block and thread of the grid. ``params`` follows
``cuLaunchKernel``: an array of pointers to the argument values. The shared library is built
once per source content by ops_cpu/build.py into its cache directory (``$CV_OPS_CACHE`` or
``~/.cache/cv_ops``), never into the repository, and loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from ops_cpu.build import build_library, compiler  # noqa: F401 (emulate.compiler)

from .registry import EMULATED, KERNEL_DIR, SOURCES, expression, read_source

CXX_FLAGS = (
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-Wall",
    "-Wno-unused-function",
    "-Wno-unknown-pragmas",
)
_libs: dict[str, ctypes.CDLL] = {}
_lock = threading.Lock()


def symbol(name: str, ctype: str | None) -> str:
    return f"cvo_emu__{name}" + ("" if ctype is None else f"__{ctype}")


def wrapper_source(source: str) -> str:
    """The C++ translation unit that includes ``source`` and exports one entry per kernel."""
    lines = ["#define CV_OPS_EMULATION 1", '#include "emu_shim.h"', f'#include "{source}"', ""]
    for name, types in SOURCES[source].items():
        for ctype in [None] if types is None else [t for t in types if t in EMULATED]:
            lines.append(
                f'extern "C" void {symbol(name, ctype)}(unsigned g, unsigned b, void** p) '
                f"{{ cvo_emu::launch(&{expression(name, ctype)}, g, b, p); }}"
            )
    return "\n".join(lines) + "\n"


def build_code(wrapper: str, stem: str) -> Path:
    """Compile a C++ translation unit (that may include ops_cuda files) into a shared library
    in the cache (ops_cpu/build.py), keyed by its content and the kernel headers; returns the
    library path. Raises RuntimeError with the compiler's output when compilation fails."""
    depends = [read_source("common.cuh"), read_source("emu_shim.h")]
    depends += [read_source(s) for s in SOURCES if f'"{s}"' in wrapper]
    return build_library(
        wrapper, stem, CXX_FLAGS, kind="emulation", include_dir=KERNEL_DIR, depends=depends
    )


def build(source: str) -> Path:
    """Build (or find in the cache) the emulation library of ops_cuda/``source``."""
    return build_code(wrapper_source(source), Path(source).stem)


def library(source: str) -> ctypes.CDLL:
    with _lock:
        if source not in _libs:
            _libs[source] = ctypes.CDLL(str(build(source)))
        return _libs[source]


def launch(source: str, name: str, ctype: str | None, grid: int, block: int, args) -> None:
    """Run kernel ``name<ctype>`` of ``source`` on the CPU over a (grid, block) launch.
    ``args`` are already packed ctypes values (see ops_cuda.launch.pack_ctypes)."""
    if ctype is not None and ctype not in EMULATED:
        raise TypeError(f"kernel emulation supports {EMULATED}, not {ctype}")
    fn = getattr(library(source), symbol(name, ctype))
    fn.restype = None
    fn.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p)
    params = (ctypes.c_void_p * max(len(args), 1))(
        *[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args]
    )
    fn(grid, block, params)
