"""Launch an ops_cuda kernel on torch tensors: through CuPy on CUDA tensors, through the g++
emulation (``emulate.py``) on CPU tensors.

Arguments are torch tensors (passed as device pointers; must be contiguous and on the launch
device), ``None`` (a null pointer) or numpy scalars whose dtype is the kernel parameter's
type: ``np.int64`` for ``i64`` sizes, ``np.int32`` for ``int`` flags, ``np.float64`` for
``double`` scalars. Torch allocates every output; kernels never allocate.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import torch

from . import emulate
from .registry import expression, name_expressions, read_source
from .toolkit import compile_options

BLOCK = 256
MAX_GRID = 4096
EMU_BLOCK = 32  # small emulated launches so every grid-stride loop really strides
EMU_MAX_GRID = 3

_CTYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}
_modules: dict = {}
_functions: dict = {}
_lock = threading.Lock()


def upstream(grad: torch.Tensor) -> tuple[torch.Tensor, np.int64]:
    """(tensor, stride) for reading an upstream gradient: an expanded scalar (all strides 0,
    as .sum() / .mean() produce) becomes its single element with stride 0, so the kernel
    broadcasts it instead of torch materialising it; anything else is made contiguous."""
    if grad.numel() > 0 and all(st == 0 for st in grad.stride()):
        return grad.as_strided((1,), (1,)), np.int64(0)
    return grad.contiguous(), np.int64(1)


def cupy_available() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def _check_tensor(t: torch.Tensor, device: torch.device) -> None:
    if t.device != device or not t.is_contiguous():
        raise ValueError(
            f"ops_cuda kernels take contiguous tensors on {device}; got {t.device}, "
            f"contiguous={t.is_contiguous()}"
        )


def pack_ctypes(args, device: torch.device) -> list:
    out = []
    for a in args:
        if a is None:
            out.append(ctypes.c_void_p(None))
        elif isinstance(a, torch.Tensor):
            _check_tensor(a, device)
            out.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, np.generic) and a.dtype in _CTYPES:
            out.append(_CTYPES[a.dtype](a.item()))
        else:
            raise TypeError(f"kernel argument must be a tensor, None or numpy scalar: {a!r}")
    return out


def pack_cupy(args, device: torch.device) -> tuple:
    out = []
    for a in args:
        if a is None:
            out.append(np.uint64(0))
        elif isinstance(a, torch.Tensor):
            _check_tensor(a, device)
            out.append(np.uint64(a.data_ptr()))  # a pointer is 8 bytes, passed by value
        elif isinstance(a, np.generic) and a.dtype in _CTYPES:
            out.append(a)
        else:
            raise TypeError(f"kernel argument must be a tensor, None or numpy scalar: {a!r}")
    return tuple(out)


def _cupy_function(source: str, expr: str, index: int):
    import cupy

    key = (source, expr, index)
    fn = _functions.get(key)
    if fn is None:
        with _lock, cupy.cuda.Device(index):
            mod = _modules.get((source, index))
            if mod is None:
                mod = cupy.RawModule(
                    code=read_source(source),
                    options=compile_options(),
                    name_expressions=tuple(name_expressions(source)),
                )
                _modules[(source, index)] = mod
            fn = mod.get_function(expr)
            _functions[key] = fn
    return fn


def launch(
    source: str,
    name: str,
    ctype: str | None,
    device: torch.device,
    work: int,
    args,
    *,
    single_thread: bool = False,
) -> None:
    """Launch ``name<ctype>`` from ops_cuda/``source`` with enough threads for ``work`` items
    (grid-stride loops cover the rest) on ``device``: CUDA -> CuPy on torch's current stream
    of that device; CPU -> g++ emulation. ``single_thread`` launches one block of one thread."""
    if device.type == "cuda":
        import cupy

        index = device.index if device.index is not None else torch.cuda.current_device()
        grid = 1 if single_thread else max(1, min(MAX_GRID, -(-work // BLOCK)))
        block = 1 if single_thread else BLOCK
        fn = _cupy_function(source, expression(name, ctype), index)
        packed = pack_cupy(args, torch.device("cuda", index))
        with torch.cuda.device(index), cupy.cuda.Device(index):
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index)
            with stream:  # RawKernel launches on CuPy's current stream: make it torch's
                fn((grid,), (block,), packed)
    elif device.type == "cpu":
        grid = 1 if single_thread else max(1, min(EMU_MAX_GRID, -(-work // EMU_BLOCK)))
        block = 1 if single_thread else EMU_BLOCK
        emulate.launch(source, name, ctype, grid, block, pack_ctypes(args, device))
    else:
        raise ValueError(f"ops_cuda kernels run on CUDA (or emulated on CPU), not {device}")
