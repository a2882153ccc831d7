"""CPU emulation of the ops_cuda kernels: the same ``.cu`` source compiled by g++.

``emu_shim.h`` defines the CUDA keywords and thread indices; for every float/double name
expression of a source a C entry point ``cvo_emu__<name>__<type>(grid, block, params)`` runs
``cvo_emu::launch``, which loops over every block and thread of the grid. ``params`` follows
``cuLaunchKernel``: an array of pointers to the argument values. The shared library is built
once per source content into a cache directory (``$CV_OPS_CACHE`` or ``~/.cache/cv_ops``),
never into the repository, and loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

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


def compiler() -> str | None:
    """The C++ compiler used for emulation ($CXX, else g++), or None when absent."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


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


def cache_dir() -> Path:
    """$CV_OPS_CACHE/emulation, else ~/.cache/cv_ops/emulation, else a per-user temp dir
    when the home directory is not writable."""
    if os.environ.get("CV_OPS_CACHE"):
        return Path(os.environ["CV_OPS_CACHE"]) / "emulation"
    home = Path.home() / ".cache" / "cv_ops" / "emulation"
    try:
        home.mkdir(parents=True, exist_ok=True)
        return home
    except OSError:
        return Path(tempfile.gettempdir()) / f"cv_ops-{os.getuid()}" / "emulation"


def build_code(wrapper: str, stem: str) -> Path:
    """Compile a C++ translation unit (that may include ops_cuda files) into a shared library
    in the cache, keyed by its content and the kernel headers; returns the library path.
    Raises RuntimeError with the compiler's output when compilation fails."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("kernel emulation needs a C++ compiler: install g++ or set $CXX")
    digest = hashlib.sha256()
    parts = [wrapper, read_source("common.cuh"), read_source("emu_shim.h"), cxx, *CXX_FLAGS]
    parts += [read_source(s) for s in SOURCES if f'"{s}"' in wrapper]
    for part in parts:
        digest.update(part.encode())
    out = cache_dir() / f"{stem}-{digest.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        cpp = Path(tmp) / "wrapper.cpp"
        cpp.write_text(wrapper)
        lib = Path(tmp) / "lib.so"
        cmd = [cxx, *CXX_FLAGS, f"-I{KERNEL_DIR}", str(cpp), "-o", str(lib)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"g++ emulation build of {stem} failed:\n{res.stderr}")
        os.replace(lib, out)
    return out


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
