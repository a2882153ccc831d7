"""Per-image box crops resized bilinearly, and images dropped where an upsampled map is high:
WS-DAN's attention augmentation, one call for a whole batch.

- ``crop_resize(images, boxes, size)``: each image's integer (y0, x0, y1, x1) box
  (end-exclusive) resized to ``size`` with ``align_corners=True``, i.e. the values of
  ``F.interpolate(img[..., y0:y1, x0:x1], size, "bilinear", align_corners=True)`` per image.
- ``attention_drop(images, maps, thresholds)``: ``images * (up(maps) < thresholds)`` where
  ``up`` resizes (B, h, w) maps to the images' size, bilinear, ``align_corners=True``.

On float32 / float64 CPU tensors both run the ops_cpu kernels (ops_cpu/resample.cpp: separable,
no per-pixel grid, positions in float64; on one thread the crop is about 3x ``grid_sample``
and more exact: float32 ``grid_sample`` rounds its normalised grid, ~3e-5 px at 448). Elsewhere
(CUDA, half types, ``set_backend("reference")``, no C++ compiler) and whenever the images need
a gradient, the torch path runs: one ``grid_sample`` for the crops, the two matrix products
``R_y @ A @ R_x^T`` for the maps. Both are ``torch.library`` custom ops, so
``torch.compile(fullgraph=True)`` traces them as one node each. The output keeps the images'
layout (NHWC in, NHWC out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ops_cpu import resample as cpu

from ._backend import cpu_kernel


def interpolation_matrix(
    size_in: int, size_out: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(size_out, size_in) weights of 1-D linear resizing with ``align_corners=True``: output
    ``i`` reads source ``i * (size_in - 1) / (size_out - 1)`` (``F.interpolate``'s points),
    two taps a row, computed in float64 and rounded once to ``dtype``."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = torch.arange(size_out, device=device, dtype=torch.float64) * scale
    lo = src.floor().clamp(max=size_in - 1).long()
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = src - lo
    rows = torch.arange(size_out, device=device)
    weights = torch.zeros(size_out, size_in, device=device, dtype=torch.float64)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.to(dtype)


def resize_matrices(
    size_in: tuple[int, int], size_out: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R_y, R_x)`` that resize (h, w) maps to ``size_out`` as ``R_y @ A @ R_x^T``."""
    ry = interpolation_matrix(size_in[0], size_out[0], dtype, device)
    rx = interpolation_matrix(size_in[1], size_out[1], dtype, device)
    return ry, rx


def resize_product(left: torch.Tensor, maps: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ A @ right^T`` for every (B, h, w) map, in the maps' own precision: thresholds
    are compared there, not in autocast's float16 / bfloat16."""
    with torch.autocast(maps.device.type, enabled=False):
        return left @ maps @ right.T


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear with ``align_corners=True``, as ``R_y @ A @ R_x^T``:
    on one CPU thread about twice as fast as ``F.interpolate`` for 26x26 -> 448x448 and the
    same up to float rounding."""
    ry, rx = resize_matrices(maps.shape[-2:], size, maps.dtype, maps.device)
    return resize_product(ry, maps, rx)


def _layout(images: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if cpu.is_nhwc(images) else torch.contiguous_format


def crop_resize_reference(
    images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """The torch path: one ``grid_sample``. The per-image rows and columns are computed in
    float64 and rounded once to the images' dtype; the (B, Ho, Wo, 2) grid is filled from
    them by two broadcast copies. Every point lies in [0, size - 1] (the grid is clamped to
    [-1, 1]), so ``padding_mode="zeros"`` reads what "border" would (a tap outside the image
    has weight 0) and is the faster kernel."""
    b, _, height, width = images.shape
    out_h, out_w = size
    boxes = boxes.to(images.device, torch.float64)
    y0, x0, y1, x1 = boxes.unbind(dim=1)
    steps_y = torch.arange(out_h, device=images.device, dtype=torch.float64)
    steps_x = torch.arange(out_w, device=images.device, dtype=torch.float64)
    src_y = y0[:, None] + steps_y[None] * ((y1 - 1 - y0) / max(out_h - 1, 1))[:, None]
    src_x = x0[:, None] + steps_x[None] * ((x1 - 1 - x0) / max(out_w - 1, 1))[:, None]
    # align_corners=True: -1 is pixel 0's centre, +1 is pixel (size-1)'s centre.
    gy = (src_y * 2.0 / max(height - 1, 1) - 1.0).clamp(-1.0, 1.0).to(images.dtype)
    gx = (src_x * 2.0 / max(width - 1, 1) - 1.0).clamp(-1.0, 1.0).to(images.dtype)
    grid = images.new_empty(b, out_h, out_w, 2)
    grid[..., 0] = gx[:, None, :]
    grid[..., 1] = gy[:, :, None]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def attention_drop_reference(
    images: torch.Tensor, maps: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """The torch path: the maps upsampled by ``upsample``, compared in their own precision;
    the mask is written in the images' dtype (a float x float product is the faster CPU
    kernel, about 1.3x a bool x float one at 12 x 3 x 448 x 448, and x1 / x0 is exact)."""
    up = upsample(maps, tuple(images.shape[-2:]))
    thr = thresholds.to(up.dtype)[:, None, None]
    keep = torch.lt(up, thr, out=torch.empty_like(up, dtype=images.dtype))
    return images * keep[:, None]


@torch.library.custom_op("cv_ops::crop_resize", mutates_args=())
def _crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    if cpu_kernel(images):
        return cpu.crop_resize(images, boxes, (height, width), torch.get_num_threads())
    out = crop_resize_reference(images, boxes, (height, width))
    return out.contiguous(memory_format=_layout(images))


@_crop_resize.register_fake
def _(images, boxes, height, width):
    b, c = images.shape[:2]
    return images.new_empty((b, c, height, width)).contiguous(memory_format=_layout(images))


@torch.library.custom_op("cv_ops::attention_drop", mutates_args=())
def _attention_drop(
    images: torch.Tensor, maps: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    if cpu_kernel(images):
        return cpu.attention_drop(images, maps, thresholds, torch.get_num_threads())
    out = attention_drop_reference(images, maps, thresholds)
    return out.contiguous(memory_format=_layout(images))


@_attention_drop.register_fake
def _(images, maps, thresholds):
    return torch.empty_like(images, memory_format=_layout(images))


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """(B, C, H, W) images, (B, 4) integer boxes (y0, x0, y1, x1), end-exclusive, inside the
    image -> (B, C, *size) crops (``size`` defaults to (H, W)). Differentiable in ``images``
    (through the torch path)."""
    height, width = (int(s) for s in (images.shape[-2:] if size is None else size))
    if _needs_grad(images):
        return crop_resize_reference(images, boxes, (height, width))
    return _crop_resize(images, boxes, height, width)


def attention_drop(
    images: torch.Tensor, maps: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """(B, C, H, W) images, (B, h, w) maps, (B,) thresholds -> the images with 0 wherever the
    upsampled map reaches its threshold. Differentiable in ``images`` (through the torch
    path)."""
    if _needs_grad(images):
        return attention_drop_reference(images, maps, thresholds)
    return _attention_drop(images, maps, thresholds)
