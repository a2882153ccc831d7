"""Which path an op takes: the ops_cuda kernel or the pure-torch reference.

Modes (``set_backend`` / ``use_backend``, or the environment at import time):
- ``"auto"`` (default): CUDA tensors with CuPy importable -> kernel; anything else -> reference.
- ``"reference"``: always the torch reference, also on GPU (``CV_OPS_FORCE_REFERENCE=1``),
  and on CPU also for the ops that have an ops_cpu kernel (``cpu_kernel``), which "auto" runs.
- ``"emulate"``: like auto, and float32/float64 CPU tensors run the kernels through the g++
  CPU emulation (ops_cuda/emulate.py). For tests and debugging; slow.
``CV_OPS_BACKEND=<mode>`` selects a mode too; ``CV_OPS_FORCE_REFERENCE=1`` wins over it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import lru_cache

import torch

from ops_cuda.registry import CTYPE, EMULATED

BACKENDS = ("auto", "reference", "emulate")
# the element types the kernels are instantiated for: ops_cuda.registry's table, the one source
_KERNEL_DTYPES = tuple(CTYPE)
_EMULATED_DTYPES = tuple(dtype for dtype, ctype in CTYPE.items() if ctype in EMULATED)


def _initial_backend() -> str:
    if os.environ.get("CV_OPS_FORCE_REFERENCE", "0") not in ("", "0"):
        return "reference"
    mode = os.environ.get("CV_OPS_BACKEND", "auto")
    if mode not in BACKENDS:
        raise ValueError(f"CV_OPS_BACKEND={mode!r}: choose one of {BACKENDS}")
    return mode


_state = {"backend": _initial_backend()}


def get_backend() -> str:
    return _state["backend"]


def set_backend(mode: str) -> None:
    """Select ``"auto"``, ``"reference"`` or ``"emulate"`` for every op in src.ops."""
    if mode not in BACKENDS:
        raise ValueError(f"src.ops.set_backend({mode!r}): choose one of {BACKENDS}")
    _state["backend"] = mode


@contextlib.contextmanager
def use_backend(mode: str) -> Iterator[None]:
    """Temporarily select a backend: ``with use_backend("reference"): ...``."""
    old = get_backend()
    set_backend(mode)
    try:
        yield
    finally:
        set_backend(old)


@lru_cache(maxsize=1)
def _cupy_ok() -> bool:
    from ops_cuda.launch import cupy_available

    return cupy_available()


def kernel_device(*tensors: torch.Tensor, dtypes=None) -> torch.device | None:
    """The device to launch the kernel on, or None when the reference path must run.

    The first tensor decides the element type; all must share its device. ``dtypes`` lists
    the floating types the kernel takes (default: every type of ``ops_cuda.registry.CTYPE``)."""
    mode = get_backend()
    dtypes = _KERNEL_DTYPES if dtypes is None else dtypes
    if mode == "reference":
        return None
    first = tensors[0]
    if any(t.device != first.device for t in tensors):
        return None  # let the reference raise torch's own device-mismatch error
    if first.dtype not in dtypes:
        return None
    if first.device.type == "cuda":
        return first.device if _cupy_ok() else None
    if mode == "emulate" and first.device.type == "cpu" and first.dtype in _EMULATED_DTYPES:
        return first.device
    return None


def cpu_kernel(tensor: torch.Tensor) -> bool:
    """Whether an op with an ops_cpu kernel runs it for ``tensor``: a float32/float64 CPU
    tensor, the backend not "reference", and the kernels built (ops_cpu/resample.py; without
    a compiler they are not, and the torch path runs)."""
    if get_backend() == "reference" or tensor.device.type != "cpu":
        return False
    from ops_cpu import resample

    return tensor.dtype in resample.DTYPES and resample.available()


def reference_backward(reference, inputs, needs_grad, grad_outputs):
    """Gradients of ``reference(*inputs)`` with a graph (for double backward).

    Used by a kernel Function's backward when it runs under create_graph=True: the first
    derivative is then recomputed by differentiating the torch reference, so second
    derivatives are exact torch autograd instead of an error."""
    wrt = [x for x, need in zip(inputs, needs_grad) if need]
    with torch.enable_grad():
        out = reference(*inputs)
        grads = iter(
            torch.autograd.grad(out, wrt, grad_outputs, create_graph=True, allow_unused=True)
        )
    result = []
    for x, need in zip(inputs, needs_grad):
        if not need:
            result.append(None)
            continue
        g = next(grads)
        result.append(torch.zeros_like(x) if g is None else g)
    return result
