"""ctypes entry points of resample.cpp on CPU torch tensors (float32 / float64).

The library is built on first use (ops_cpu/build.py: ``-O3``, cached per source and compiler).
``available()`` says whether it could be built and loaded; when not (no compiler, a failed
build), the reason is logged once and callers take their torch path. Outputs are allocated here
in the input's layout (NHWC input -> NHWC output); the kernels take NCHW-like tensors (rows
along W contiguous) or NHWC ones, and anything else is made contiguous first.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import torch

from .build import build_library

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("resample.cpp")
FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-pthread", "-Wall")
DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_state: dict = {}
_lock = threading.Lock()


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (and one log line saying why) when they cannot be built."""
    with _lock:
        if "lib" not in _state:
            try:
                path = build_library(SOURCE.read_text(), "resample", FLAGS, kind="cpu")
                _state["lib"] = ctypes.CDLL(str(path))
            except (RuntimeError, OSError) as err:
                first = str(err).splitlines()[0]
                log.warning("ops_cpu resample kernels unavailable (%s); using torch ops", first)
                _state["lib"] = None
        return _state["lib"]


def available() -> bool:
    return library() is not None


def _function(name: str, dtype: torch.dtype, restype):
    lib = library()
    if lib is None:
        raise RuntimeError("ops_cpu resample kernels are unavailable (see the log)")
    fn = getattr(lib, f"cvo_{name}_{DTYPES[dtype]}")
    fn.restype = restype
    return fn


def is_nhwc(t: torch.Tensor) -> bool:
    """Channels innermost (as channels_last), and not also plain contiguous (C == 1)."""
    return (
        t.dim() == 4
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    )


def _prepared(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if images.dtype not in DTYPES or images.device.type != "cpu" or images.dim() != 4:
        raise TypeError(
            f"ops_cpu kernels take (B, C, H, W) float32/float64 CPU tensors, got "
            f"{images.dtype} {tuple(images.shape)} on {images.device}"
        )
    if is_nhwc(images):
        return images, True
    if images.stride(3) != 1:
        images = images.contiguous()
    return images, False


def _empty(images: torch.Tensor, nhwc: bool, height: int, width: int) -> torch.Tensor:
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    b, c = images.shape[:2]
    return torch.empty((b, c, height, width), dtype=images.dtype, memory_format=fmt)


def _geometry(src: torch.Tensor, dst: torch.Tensor, nhwc: bool) -> torch.Tensor:
    values = [*src.shape, *dst.shape[2:], *src.stride(), *dst.stride(), int(nhwc)]
    return torch.tensor(values, dtype=torch.int64)


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], threads: int
) -> torch.Tensor:
    """Each image's (y0, x0, y1, x1) box (int, end-exclusive) resized to ``size`` (bilinear,
    align_corners=True). Raises ValueError naming the first box outside its image."""
    images, nhwc = _prepared(images)
    boxes = boxes.to(torch.int64).contiguous()
    if boxes.shape != (images.shape[0], 4):
        raise ValueError(
            f"boxes must be (B, 4) for B = {images.shape[0]}, got {tuple(boxes.shape)}"
        )
    out = _empty(images, nhwc, *size)
    if out.numel() == 0:
        return out
    geometry = _geometry(images, out, nhwc)
    bad = _function("crop_resize", images.dtype, ctypes.c_int64)(
        _ptr(images), _ptr(out), _ptr(geometry), _ptr(boxes), ctypes.c_int64(threads)
    )
    if bad >= 0:
        raise ValueError(
            f"crop box {boxes[bad].tolist()} of image {bad} is empty or outside its "
            f"{images.shape[2]}x{images.shape[3]} image: want 0 <= y0 < y1 <= H, "
            f"0 <= x0 < x1 <= W"
        )
    return out


def attention_drop(
    images: torch.Tensor, maps: torch.Tensor, thresholds: torch.Tensor, threads: int
) -> torch.Tensor:
    """``images * (upsampled map < threshold)``: ``maps`` (B, h, w) upsampled to the images'
    size (bilinear, align_corners=True, in float64), ``thresholds`` (B,)."""
    images, nhwc = _prepared(images)
    b = images.shape[0]
    if maps.dim() != 3 or maps.shape[0] != b or min(maps.shape[1:]) < 1:
        raise ValueError(f"maps must be (B, h, w) for B = {b}, got {tuple(maps.shape)}")
    maps = maps.to(images.dtype).contiguous()
    thresholds = thresholds.to(torch.float64).reshape(b).contiguous()
    out = _empty(images, nhwc, *images.shape[2:])
    if out.numel() == 0:
        return out
    geometry = _geometry(images, out, nhwc)
    _function("attention_drop", images.dtype, None)(
        _ptr(images),
        _ptr(out),
        _ptr(geometry),
        _ptr(maps),
        ctypes.c_int64(maps.shape[1]),
        ctypes.c_int64(maps.shape[2]),
        _ptr(thresholds),
        ctypes.c_int64(threads),
    )
    return out
