"""Bounding-box blocks (port of ``gluoncv.nn.bbox``).

Corner format is ``(xmin, ymin, xmax, ymax)``; center format is ``(center_x, center_y, width,
height)``. Every block works on any number of leading dimensions, e.g. ``(B, N, 4)``.

Padding: variable numbers of boxes per image are padded with rows of ``-1``. ``BBoxBatchIOU``
reports an IoU of ``-1`` for any pair that involves a padding row, so such a pair is below every
matching threshold ``>= 0`` whatever the ``offset`` (GluonCV gives a padding row of ``-1`` an area
of 1 with ``offset=1`` and lets it overlap real boxes).
"""

from __future__ import annotations

import torch
from torch import nn

from src.ops import box_iou
from src.ops.boxes import box_area

__all__ = [
    "BBoxCornerToCenter",
    "BBoxCenterToCorner",
    "BBoxSplit",
    "BBoxArea",
    "BBoxBatchIOU",
    "BBoxClipToImage",
    "corner_to_center",
    "center_to_corner",
    "is_padding",
    "PAD_IOU",
]

#: IoU reported for a pair involving a padding row (never a match for thresholds >= 0).
PAD_IOU = -1.0


def _split4(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, ...]:
    if x.shape[axis] != 4:
        raise ValueError(f"expected size 4 on axis {axis}, got shape {tuple(x.shape)}")
    return tuple(torch.split(x, 1, dim=axis))


def corner_to_center(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """(xmin, ymin, xmax, ymax) -> (cx, cy, w, h) along ``axis`` (no +1 on widths)."""
    xmin, ymin, xmax, ymax = _split4(x, axis)
    w = xmax - xmin
    h = ymax - ymin
    return torch.cat((xmin + 0.5 * w, ymin + 0.5 * h, w, h), dim=axis)


def center_to_corner(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """(cx, cy, w, h) -> (xmin, ymin, xmax, ymax) along ``axis``."""
    cx, cy, w, h = _split4(x, axis)
    hw = 0.5 * w
    hh = 0.5 * h
    return torch.cat((cx - hw, cy - hh, cx + hw, cy + hh), dim=axis)


def is_padding(boxes: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """True where a box row is padding: all of its 4 values equal -1. Reduces ``axis``."""
    return (boxes == -1).all(dim=axis)


class _BBoxConvert(nn.Module):
    convert = staticmethod(corner_to_center)

    def __init__(self, axis: int = -1, split: bool = False):
        super().__init__()
        self._axis = axis
        self._split = split

    def forward(self, x: torch.Tensor):
        out = self.convert(x, self._axis)
        return tuple(torch.split(out, 1, dim=self._axis)) if self._split else out


class BBoxCornerToCenter(_BBoxConvert):
    """Convert corner boxes to center boxes.

    Args:
        axis: axis holding the 4 coordinates (default -1).
        split: return 4 tensors (each with size 1 on ``axis``) instead of one.
    """

    convert = staticmethod(corner_to_center)


class BBoxCenterToCorner(_BBoxConvert):
    """Convert center boxes to corner boxes.

    Args:
        axis: axis holding the 4 coordinates (default -1).
        split: return 4 tensors (each with size 1 on ``axis``) instead of one.
    """

    convert = staticmethod(center_to_corner)


class BBoxSplit(nn.Module):
    """Split bounding boxes into 4 tensors along ``axis``.

    Args:
        axis: the axis of size 4.
        squeeze_axis: remove that axis from the outputs.
    """

    def __init__(self, axis: int, squeeze_axis: bool = False):
        super().__init__()
        self._axis = axis
        self._squeeze_axis = squeeze_axis

    def forward(self, x: torch.Tensor):
        parts = _split4(x, self._axis)
        if self._squeeze_axis:
            parts = tuple(p.squeeze(self._axis) for p in parts)
        return parts


class BBoxArea(nn.Module):
    """Area of boxes; negative widths or heights clamp to 0.

    Args:
        axis: axis holding the 4 coordinates (default -1).
        fmt: ``'corner'`` or ``'center'``.

    Returns a tensor with size 1 on ``axis`` (``(B, N, 1)`` for ``(B, N, 4)`` input).
    """

    def __init__(self, axis: int = -1, fmt: str = "corner"):
        super().__init__()
        fmt = fmt.lower()
        if fmt not in ("corner", "center"):
            raise ValueError(f"Unsupported format: {fmt}. Use 'corner' or 'center'.")
        self._axis = axis
        self._fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fmt == "corner":
            if self._axis in (-1, x.dim() - 1):
                return box_area(x).unsqueeze(-1)
            x = corner_to_center(x, self._axis)
        _, _, w, h = _split4(x, self._axis)
        return w.clamp(min=0) * h.clamp(min=0)


class BBoxBatchIOU(nn.Module):
    """Batched pairwise IoU: ``(B, N, 4) x (B, M, 4) -> (B, N, M)``.

    Any leading dims broadcast (``(N, 4)`` anchors against ``(B, M, 4)`` ground truths works).
    Pairs with a padding row (all ``-1``) get IoU ``PAD_IOU`` (-1).

    Args:
        axis: axis holding the 4 coordinates; must be the last one (-1).
        fmt: ``'corner'`` or ``'center'`` (converted to corners first; GluonCV's center path
            passed split tensors with a wrong shape and never worked).
        offset: 1 for legacy ``x2 - x1 + 1`` widths.
        eps: kept for GluonCV compatibility; the union is clamped to be positive instead.
    """

    def __init__(self, axis: int = -1, fmt: str = "corner", offset: float = 0, eps: float = 1e-15):
        super().__init__()
        fmt = fmt.lower()
        if fmt not in ("corner", "center"):
            raise ValueError(f"Unsupported format: {fmt}. Use 'corner' or 'center'.")
        if axis not in (-1,):
            raise ValueError("BBoxBatchIOU expects the coordinates on the last axis (axis=-1)")
        self._fmt = fmt
        self._offset = offset
        self._eps = eps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        pad_a = is_padding(a)
        pad_b = is_padding(b)
        if self._fmt == "center":
            a = center_to_corner(a)
            b = center_to_corner(b)
        iou = box_iou(a, b, offset=self._offset)
        if iou.requires_grad:
            return iou.masked_fill(pad_a.unsqueeze(-1) | pad_b.unsqueeze(-2), PAD_IOU)
        # two in-place broadcast fills: no (B, N, M) mask is materialised
        return iou.masked_fill_(pad_a.unsqueeze(-1), PAD_IOU).masked_fill_(
            pad_b.unsqueeze(-2), PAD_IOU
        )


class BBoxClipToImage(nn.Module):
    """Clip corner boxes to the image: ``x`` to ``[0, W]``, ``y`` to ``[0, H]``.

    ``forward(x, img)`` takes boxes ``(B, N, 4)`` and the image batch ``(B, C, H, W)`` (only its
    shape is used), as GluonCV does. Padding rows of -1 are left untouched (GluonCV turned them
    into zero boxes that no longer read as padding).
    """

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2], img.shape[-1]
        upper = torch.tensor([w, h, w, h], dtype=x.dtype, device=x.device)
        clipped = torch.minimum(x.clamp(min=0), upper)
        return torch.where(is_padding(x).unsqueeze(-1), x, clipped)
