"""RetinaFace prior (anchor) boxes, as the reference's ``PriorBox``.

For an image of height H and width W, level k (stride ``steps[k]``) has a feature map of
``ceil(H / step) x ceil(W / step)`` cells; each cell gets one square prior per entry of
``min_sizes[k]`` centred on the cell centre. Priors are ordered level -> row -> column -> size
and given in normalised ``cxcywh``: ``cx = (j + 0.5) * step / W``, ``cy = (i + 0.5) * step / H``,
``w = size / W``, ``h = size / H`` (so non-square images give non-square normalised boxes).
With the defaults there are 16,800 priors at 640 x 640.

The grid is the detection toolkit's ``src.nn.anchor.AnchorGrid`` (``anchor_grid`` returns it
for an image size: its ``candidates`` gives the (face, prior) pairs that can reach an IoU,
used by the windowed assignment of ``MultiBoxLoss``). Values are computed in float64 and then
cast, which reproduces the reference (Python floats turned into a float32 tensor) bit for bit.
Results are cached per (H, W, device, dtype, configuration): treat the returned tensor as
read-only (``.clone()`` before editing in place).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from src.nn.anchor import AnchorGrid, anchor_boxes

MIN_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
STEPS: tuple[int, ...] = (8, 16, 32)


def feature_map_sizes(
    image_size: tuple[int, int], steps: Sequence[int] = STEPS
) -> list[tuple[int, int]]:
    """``[(ceil(H / s), ceil(W / s)) for s in steps]`` for ``image_size = (H, W)``."""
    h, w = int(image_size[0]), int(image_size[1])
    return [(math.ceil(h / s), math.ceil(w / s)) for s in steps]


def num_priors(
    image_size: tuple[int, int],
    min_sizes: Sequence[Sequence[int]] = MIN_SIZES,
    steps: Sequence[int] = STEPS,
) -> int:
    """Number of priors for an (H, W) image."""
    return anchor_grid(image_size, min_sizes, steps).num_anchors


def anchor_grid(
    image_size: tuple[int, int],
    min_sizes: Sequence[Sequence[int]] = MIN_SIZES,
    steps: Sequence[int] = STEPS,
) -> AnchorGrid:
    """The ``AnchorGrid`` of the priors of an (H, W) image (cached; normalised coordinates)."""
    if len(min_sizes) != len(steps):
        raise ValueError(f"min_sizes has {len(min_sizes)} levels but steps has {len(steps)}")
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {(h, w)}")
    return _anchor_grid_cached(
        h, w, tuple(tuple(int(s) for s in m) for m in min_sizes), tuple(int(s) for s in steps)
    )


@lru_cache(maxsize=64)
def _anchor_grid_cached(
    h: int, w: int, min_sizes: tuple[tuple[int, ...], ...], steps: tuple[int, ...]
) -> AnchorGrid:
    return AnchorGrid.square((h, w), steps, min_sizes)


def prior_boxes(
    image_size: tuple[int, int],
    min_sizes: Sequence[Sequence[int]] = MIN_SIZES,
    steps: Sequence[int] = STEPS,
    clip: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Priors for an (H, W) image: tensor (P, 4) normalised ``cxcywh`` (cached, read-only)."""
    return anchor_boxes(anchor_grid(image_size, min_sizes, steps), "center", clip, device, dtype)


class PriorBox:
    """Prior configuration object: ``PriorBox()(image_size, device, dtype)`` -> (P, 4)."""

    def __init__(
        self,
        min_sizes: Sequence[Sequence[int]] = MIN_SIZES,
        steps: Sequence[int] = STEPS,
        clip: bool = False,
    ):
        self.min_sizes = tuple(tuple(int(s) for s in m) for m in min_sizes)
        self.steps = tuple(int(s) for s in steps)
        self.clip = bool(clip)

    def __call__(
        self,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        return prior_boxes(image_size, self.min_sizes, self.steps, self.clip, device, dtype)

    def num_priors(self, image_size: tuple[int, int]) -> int:
        return num_priors(image_size, self.min_sizes, self.steps)

    def __repr__(self) -> str:
        return f"PriorBox(min_sizes={self.min_sizes}, steps={self.steps}, clip={self.clip})"
