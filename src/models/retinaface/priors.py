"""RetinaFace prior (anchor) boxes, as the reference's ``PriorBox``.

For an image of height H and width W, level k (stride ``steps[k]``) has a feature map of
``ceil(H / step) x ceil(W / step)`` cells; each cell gets one square prior per entry of
``min_sizes[k]`` centred on the cell centre. Priors are ordered level -> row -> column -> size
and given in normalised ``cxcywh``: ``cx = (j + 0.5) * step / W``, ``cy = (i + 0.5) * step / H``,
``w = size / W``, ``h = size / H`` (so non-square images give non-square normalised boxes).
With the defaults there are 16,800 priors at 640 x 640.

Values are computed in float64 and then cast, which reproduces the reference (Python floats
turned into a float32 tensor) bit for bit. Results are cached per (H, W, device, dtype,
configuration): treat the returned tensor as read-only (``.clone()`` before editing in place).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

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
    return sum(
        fh * fw * len(m) for (fh, fw), m in zip(feature_map_sizes(image_size, steps), min_sizes)
    )


def prior_boxes(
    image_size: tuple[int, int],
    min_sizes: Sequence[Sequence[int]] = MIN_SIZES,
    steps: Sequence[int] = STEPS,
    clip: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Priors for an (H, W) image: tensor (P, 4) normalised ``cxcywh`` (cached, read-only)."""
    if len(min_sizes) != len(steps):
        raise ValueError(f"min_sizes has {len(min_sizes)} levels but steps has {len(steps)}")
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {(h, w)}")
    key_sizes = tuple(tuple(int(s) for s in m) for m in min_sizes)
    key_steps = tuple(int(s) for s in steps)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _prior_boxes_cached(h, w, key_sizes, key_steps, bool(clip), dev, dtype)


@lru_cache(maxsize=64)
def _prior_boxes_cached(
    h: int,
    w: int,
    min_sizes: tuple[tuple[int, ...], ...],
    steps: tuple[int, ...],
    clip: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    levels = []
    f64 = torch.float64
    for (fh, fw), step, sizes in zip(feature_map_sizes((h, w), steps), steps, min_sizes):
        cy = (torch.arange(fh, dtype=f64) + 0.5) * step / h  # (fh,)
        cx = (torch.arange(fw, dtype=f64) + 0.5) * step / w  # (fw,)
        s = torch.tensor(sizes, dtype=f64)  # (A,)
        shape = (fh, fw, len(sizes))
        boxes = torch.stack(
            [
                cx[None, :, None].expand(shape),
                cy[:, None, None].expand(shape),
                (s / w)[None, None, :].expand(shape),
                (s / h)[None, None, :].expand(shape),
            ],
            dim=-1,
        )
        levels.append(boxes.reshape(-1, 4))
    out = torch.cat(levels, 0)
    if clip:
        out = out.clamp(0.0, 1.0)
    return out.to(device=device, dtype=dtype).contiguous()


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
