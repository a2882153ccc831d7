"""Attention-guided data augmentation of WS-DAN, batched on the images' device.

No Python loop over samples and no host synchronisation (no ``.item()``, ``.cpu()``,
``nonzero``): boxes come from ``amax``/``amin`` reductions, and the crops and the drop are one
call each for the whole batch (src/ops/resample.py: an ops_cpu kernel on CPU, one
``grid_sample`` / two matrix products elsewhere). The maps are upsampled as ``R_y @ A @ R_x^T``
(bilinear resizing is separable, two non-zero weights a row), not by ``F.interpolate``: about
twice as fast on CPU and closer to exact (float32: 1.5e-7 against float64, where float32
``F.interpolate`` is off by 1.8e-6 at 448 px; the CPU drop kernel interpolates in float64), so a
mask can differ from the reference's only at a pixel within that rounding of its threshold.
The crop never builds the full-size map: along one axis an upsampled map is linear between
source points, so each row's and column's maximum (and the drop's "nothing kept" minimum) lies
at the few rows / columns of ``segment_ends``, which thin products give. A map holding a NaN
or an infinity is taken as all zero, like an empty map: its crop is the whole image and its
drop keeps everything. Randomness (which attention map, which threshold) comes from torch's
global RNG (checkpointed by the engine) or from ``generator`` when one is given.

Conventions (as GuYuc/WS-DAN.PyTorch ``batch_augment``): a map is upsampled bilinearly with
``align_corners=True`` to the image size and compared against ``theta * max`` where ``max`` is
the maximum of the *low-resolution* map and ``theta`` is a float or drawn per sample from
``U(lo, hi)``. Crop boxes are padded by ``padding_ratio * H`` / ``* W`` (truncated towards zero
like the reference's ``int()``), clipped to the image, and resized back to (H, W) bilinearly
(``align_corners=True``). One deliberate difference: the reference slices rows
``[min - pad, max + pad)``, excluding the last masked row when ``pad`` is 0 and failing on an
empty slice; we use ``[min - pad, max + 1 + pad)``, so a box always holds its whole mask.
"""

from __future__ import annotations

import torch

from src.ops.resample import attention_drop as drop_below
from src.ops.resample import crop_resize as _crop_resize
from src.ops.resample import (
    interpolation_matrix,  # noqa: F401 (the maps' resize weights)
    resize_matrices,
    resize_product,
    upsample,
)

EPSILON = 1e-12
Theta = float | tuple[float, float]


def _as_maps(attention_map: torch.Tensor) -> torch.Tensor:
    """(B, h, w) or (B, 1, h, w) -> (B, 1, h, w) float; a map with a non-finite value -> 0."""
    if attention_map.dim() == 3:
        attention_map = attention_map[:, None]
    if attention_map.dim() != 4 or attention_map.shape[1] != 1:
        raise ValueError(f"expected (B, 1, h, w) attention maps, got {tuple(attention_map.shape)}")
    maps = attention_map.float()
    finite = torch.isfinite(maps).all(dim=(1, 2, 3), keepdim=True)
    return torch.where(finite, maps, 0.0)


def _resize_matrices(
    maps: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R_y, R_x)`` that resize ``maps`` (B, 1, h, w) to ``size`` as ``R_y @ A @ R_x^T``."""
    return resize_matrices(maps.shape[-2:], size, maps.dtype, maps.device)


def _products(left: torch.Tensor, maps: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ A @ right^T`` for every (B, 1, h, w) map, in the maps' own precision."""
    return resize_product(left, maps[:, 0], right)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) -> (B, H, W): bilinear, ``align_corners=True``, as ``R_y @ A @ R_x^T``
    (src.ops.resample.upsample)."""
    return upsample(maps[:, 0], size)


def segment_ends(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """Output indices of 1-D ``align_corners=True`` resizing that contain, for every source
    interval ``[k, k + 1]``, the first and the last output point falling in it.

    Along one axis an upsampled map is linear in between two source points, so its largest
    value over the points of one interval is at one of that interval's two end points, and its
    largest value overall is the largest over these indices. Output ``j`` reads
    ``j / r`` with ``r = (size_out - 1) / (size_in - 1)``, so interval ``k`` starts at
    ``ceil(k r)``; taking ``ceil(k r) - 1 .. ceil(k r) + 1`` for every ``k`` is a superset that
    float rounding of ``k r`` cannot break (about ``3 size_in`` indices, a few repeated).
    """
    if size_in <= 1 or size_out <= 1:
        return torch.arange(size_out, device=device)
    ratio = (size_out - 1) / (size_in - 1)
    starts = torch.ceil(torch.arange(size_in, device=device, dtype=torch.float64) * ratio)
    near = starts[:, None] + torch.arange(-1, 2, device=device, dtype=torch.float64)
    return near.flatten().clamp(0, size_out - 1).long()


def _ends(
    ry: torch.Tensor, rx: torch.Tensor, size_in: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``R_y`` and ``R_x`` at ``segment_ends``: the only output rows / columns
    where an upsampled map can take its largest or smallest value along that axis."""
    ry_ends = ry.index_select(0, segment_ends(size_in[0], ry.shape[0], ry.device))
    rx_ends = rx.index_select(0, segment_ends(size_in[1], rx.shape[0], rx.device))
    return ry_ends, rx_ends


def _rows_cols_reaching(
    maps: torch.Tensor, size: tuple[int, int], thr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H) and (B, W) bool: which rows / columns of the upsampled maps (as
    ``upsample_maps``) hold a value ``>= thr`` (B,), without the full (B, H, W) maps.

    A row's largest value is its largest over the columns of ``segment_ends`` (and a column's
    over those rows), so two thin products, (B, H, ~3w) and (B, ~3h, W), give both: about a
    fifth of the full upsampling's work at 26 -> 448, the same values up to float rounding.
    """
    ry, rx = _resize_matrices(maps, size)
    ry_ends, rx_ends = _ends(ry, rx, maps.shape[-2:])
    row_max = _products(ry, maps, rx_ends).amax(dim=2)  # (B, H)
    col_max = _products(ry_ends, maps, rx).amax(dim=1)  # (B, W)
    thr = thr[:, None]
    return row_max >= thr, col_max >= thr


def draw_theta(
    theta: Theta, batch: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) thresholds: ``theta`` itself, or U(lo, hi) per sample when ``theta = (lo, hi)``."""
    if isinstance(theta, (int, float)):
        return torch.full((batch,), float(theta), device=device)
    lo, hi = (float(t) for t in theta)
    u = torch.rand(batch, device=device, generator=generator)
    return lo + (hi - lo) * u


def sample_attention_maps(
    attention_maps: torch.Tensor, num: int = 2, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``num`` maps per sample (with replacement), k with probability ~ sqrt(sum A_k).

    Returns ``(maps (B, num, h, w), indices (B, num))``. Sampling is by inverse CDF on
    ``torch.rand`` draws, so a loop over samples with the same draws picks the same maps.
    """
    b, m = attention_maps.shape[:2]
    maps = attention_maps.detach().float()
    weights = torch.sqrt(maps.sum(dim=(2, 3)) + EPSILON)
    cdf = torch.cumsum(weights / weights.sum(dim=1, keepdim=True), dim=1)
    u = torch.rand(b, num, device=maps.device, generator=generator)
    index = torch.searchsorted(cdf, u, right=True).clamp_(max=m - 1)
    picked = torch.gather(maps, 1, index[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
    return picked, index


def crop_boxes(
    attention_map: torch.Tensor,
    image_size: tuple[int, int],
    theta: Theta = (0.4, 0.6),
    padding_ratio: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, 4) integer boxes (y0, x0, y1, x1), end-exclusive, around ``map >= theta * max``.

    A sample whose mask is empty (no finite attention) gets the whole image.
    """
    maps = _as_maps(attention_map)
    b = maps.shape[0]
    height, width = image_size
    thr = draw_theta(theta, b, maps.device, generator) * maps.amax(dim=(1, 2, 3))
    rows, cols = _rows_cols_reaching(maps, (height, width), thr)  # (B, H), (B, W)
    ys = torch.arange(height, device=maps.device)
    xs = torch.arange(width, device=maps.device)
    top = torch.where(rows, ys, height).amin(dim=1)
    bottom = torch.where(rows, ys, -1).amax(dim=1)
    left = torch.where(cols, xs, width).amin(dim=1)
    right = torch.where(cols, xs, -1).amax(dim=1)
    empty = ~rows.any(dim=1)
    top = torch.where(empty, 0, top)
    bottom = torch.where(empty, height - 1, bottom)
    left = torch.where(empty, 0, left)
    right = torch.where(empty, width - 1, right)
    pad_h, pad_w = padding_ratio * height, padding_ratio * width
    y0 = torch.trunc(top - pad_h).clamp(min=0)
    y1 = torch.trunc(bottom + 1 + pad_h).clamp(max=height)
    x0 = torch.trunc(left - pad_w).clamp(min=0)
    x1 = torch.trunc(right + 1 + pad_w).clamp(max=width)
    return torch.stack([y0, x0, y1, x1], dim=1).long()


def crop_resize(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image to its (y0, x0, y1, x1) box and resize it back to (H, W): the values
    of ``F.interpolate(img[..., y0:y1, x0:x1], (H, W), 'bilinear', align_corners=True)``
    (src.ops.resample.crop_resize: the ops_cpu kernel on CPU, one ``grid_sample`` elsewhere)."""
    return _crop_resize(images, boxes)


def attention_crop(
    images: torch.Tensor,
    attention_map: torch.Tensor,
    theta: Theta = (0.4, 0.6),
    padding_ratio: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zoom into the region where the attention map exceeds ``theta`` of its maximum."""
    boxes = crop_boxes(attention_map, images.shape[-2:], theta, padding_ratio, generator)
    return crop_resize(images, boxes)


def _drop_thresholds(
    maps: torch.Tensor,
    image_size: tuple[int, int],
    theta: Theta,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B,) thresholds ``theta * max`` of (B, 1, h, w) maps, +inf for a sample that would
    keep nothing (even its smallest upsampled value reaches the threshold; the smallest is
    at one of the ``segment_ends`` rows and columns: a (B, ~3h, ~3w) product, not a full
    pass), so that one comparison ``up < thr`` keeps everything there."""
    b = maps.shape[0]
    thr = draw_theta(theta, b, maps.device, generator) * maps.amax(dim=(1, 2, 3))
    ry, rx = _resize_matrices(maps, tuple(image_size))
    ry_ends, rx_ends = _ends(ry, rx, maps.shape[-2:])
    nothing_kept = _products(ry_ends, maps, rx_ends).amin(dim=(1, 2)) >= thr
    return torch.where(nothing_kept, float("inf"), thr)


def drop_mask(
    attention_map: torch.Tensor,
    image_size: tuple[int, int],
    theta: Theta = (0.2, 0.5),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, 1, H, W) bool mask of the pixels kept: ``upsampled map < theta * max``.

    When a sample would keep nothing (e.g. an all-zero map, where ``0 < 0`` is false
    everywhere) the whole image is kept instead.
    """
    maps = _as_maps(attention_map)
    thr = _drop_thresholds(maps, image_size, theta, generator)
    return (upsample_maps(maps, tuple(image_size)) < thr[:, None, None])[:, None]


def attention_drop(
    images: torch.Tensor,
    attention_map: torch.Tensor,
    theta: Theta = (0.2, 0.5),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Erase (set to 0, the normalised mean colour) where the attention map is strong."""
    maps = _as_maps(attention_map)
    thr = _drop_thresholds(maps, images.shape[-2:], theta, generator)
    return drop_below(images, maps[:, 0], thr)
