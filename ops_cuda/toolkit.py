"""Locate the CUDA headers and NVRTC without a GPU, and compile a ``.cu`` file with NVRTC.

Search order for headers (``cuda_fp16.h`` and friends): ``$CV_OPS_CUDA_INCLUDE``, the
``nvidia/cu13/include`` (or per-component ``nvidia/*/include``) directories of the PyPI wheels
torch installs, ``$CUDA_PATH/include``, ``/usr/local/cuda/include``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .registry import KERNEL_DIR, name_expressions, read_source

ARCHES = ("sm_75", "sm_80", "sm_90")  # CUDA 13 NVRTC no longer targets sm_70
NVRTC_OPTIONS = ("--std=c++17",)


def _wheel_include_dirs() -> list[Path]:
    try:
        import nvidia  # namespace package of NVIDIA's PyPI wheels
    except ImportError:
        return []
    dirs = []
    for root in map(Path, getattr(nvidia, "__path__", [])):
        dirs.append(root / "cu13" / "include")
        dirs.extend(sorted(root.glob("*/include")))
    return dirs


@lru_cache(maxsize=1)
def cuda_include_dir() -> str | None:
    """Directory holding ``cuda_fp16.h``, or None when no CUDA headers can be found."""
    candidates = []
    if os.environ.get("CV_OPS_CUDA_INCLUDE"):
        candidates.append(Path(os.environ["CV_OPS_CUDA_INCLUDE"]))
    candidates.extend(_wheel_include_dirs())
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for c in candidates:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_bf16.h").is_file():
            return str(c)
    return None


def compile_options(arch: str | None = None) -> tuple[str, ...]:
    """NVRTC options: C++17, our kernel dir, the CUDA headers, and an arch when given."""
    opts = list(NVRTC_OPTIONS) + [f"-I{KERNEL_DIR}"]
    inc = cuda_include_dir()
    if inc is not None:
        opts.append(f"-I{inc}")
    if arch is not None:
        opts.append(f"--gpu-architecture={arch}")
    return tuple(opts)


class NvrtcError(RuntimeError):
    """An NVRTC compile failed; the message carries NVRTC's log."""


def nvrtc_compile_code(code: str, filename: str, exprs: list[str], arch: str) -> dict:
    """Compile CUDA C++ ``code`` to PTX for ``arch`` with CuPy's low-level NVRTC binding, which
    needs no GPU or driver, only libnvrtc. Returns ``{"ptx": bytes, "lowered": {expr: mangled},
    "log": str}``; raises NvrtcError carrying NVRTC's log when compilation fails."""
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(code, filename, [], [])
    try:
        for e in exprs:
            nvrtc.addNameExpression(prog, e)
        try:
            nvrtc.compileProgram(prog, list(compile_options(arch)))
        except Exception as exc:  # nvrtc.NVRTCError
            log = nvrtc.getProgramLog(prog)
            msg = f"NVRTC failed on {filename} for {arch}: {exc}\n{log}"
            raise NvrtcError(msg) from None
        lowered = {e: nvrtc.getLoweredName(prog, e) for e in exprs}
        return {"ptx": nvrtc.getPTX(prog), "lowered": lowered, "log": nvrtc.getProgramLog(prog)}
    finally:
        nvrtc.destroyProgram(prog)


def nvrtc_compile(source: str, arch: str, types: tuple[str, ...] | None = None) -> dict:
    """Compile ops_cuda/``source`` with every name expression of the registry (restricted to
    ``types`` when given) for ``arch``; see nvrtc_compile_code."""
    return nvrtc_compile_code(
        read_source(source), f"ops_cuda/{source}", name_expressions(source, types), arch
    )


def nvrtc_available() -> str | None:
    """None when NVRTC compilation can run here, else the reason it cannot."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:
        return f"NVRTC not loadable via cupy_backends ({type(exc).__name__}: {exc})"
    if cuda_include_dir() is None:
        return (
            "CUDA headers (cuda_fp16.h) not found: install the nvidia-cuda-runtime wheel "
            "(torch's CUDA build pulls it) or set CV_OPS_CUDA_INCLUDE"
        )
    return None
