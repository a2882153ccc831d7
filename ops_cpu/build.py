"""Build a C++ translation unit into a shared library once, cache it, load it with ctypes.

One mechanism for every piece of native code the repo compiles at run time: the CPU kernels of
this package (``-O3``, no ``-march``, so a library cached on a shared home directory runs on
every node of a cluster) and the g++ emulation of the ops_cuda kernels (ops_cuda/emulate.py).
A library is keyed by the code, every header it may include, the compiler and the flags, and
built into a cache directory (``$CV_OPS_CACHE`` or ``~/.cache/cv_ops``), never into the
repository; the build writes to a temporary file and renames it, so concurrent processes (DDP
ranks, sweep jobs) never load a half-written library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def compiler() -> str | None:
    """The C++ compiler ($CXX, else g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def cache_dir(kind: str) -> Path:
    """$CV_OPS_CACHE/<kind>, else ~/.cache/cv_ops/<kind>, else a per-user temp dir when the
    home directory is not writable."""
    if os.environ.get("CV_OPS_CACHE"):
        return Path(os.environ["CV_OPS_CACHE"]) / kind
    home = Path.home() / ".cache" / "cv_ops" / kind
    try:
        home.mkdir(parents=True, exist_ok=True)
        return home
    except OSError:
        return Path(tempfile.gettempdir()) / f"cv_ops-{os.getuid()}" / kind


def build_library(
    code: str,
    stem: str,
    flags: Sequence[str],
    *,
    kind: str,
    include_dir: Path | None = None,
    depends: Sequence[str] = (),
) -> Path:
    """Compile ``code`` (C++) into ``<cache>/<kind>/<stem>-<hash>.so`` unless it is there.

    ``depends`` are the texts of the headers ``code`` may include from ``include_dir``: they
    enter the hash, so editing one rebuilds. Raises RuntimeError naming the compiler and with
    its output when there is no compiler or the build fails."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError(
            f"building {stem} needs a C++ compiler: install g++ or set $CXX "
            f"(looked for {os.environ.get('CXX', 'g++')!r})"
        )
    digest = hashlib.sha256()
    for part in (code, cxx, *flags, *depends):
        digest.update(part.encode())
    out = cache_dir(kind) / f"{stem}-{digest.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        cpp = Path(tmp) / f"{stem}.cpp"
        cpp.write_text(code)
        lib = Path(tmp) / "lib.so"
        include = [] if include_dir is None else [f"-I{include_dir}"]
        res = subprocess.run(
            [cxx, *flags, *include, str(cpp), "-o", str(lib)], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise RuntimeError(f"{cxx} build of {stem} failed:\n{res.stderr}")
        os.replace(lib, out)
    return out
