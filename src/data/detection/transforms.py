"""Detection image transforms: a deterministic letterbox and albumentations training augmentation.

Evaluation (``rng=None``): ``letterbox`` only. The long side becomes ``image_size``
(``scale = image_size / max(h, w)``, resized to ``round(h * scale) x round(w * scale)``, bilinear),
then the image is centred on an ``image_size`` square of grey (114, YOLO's fill) with
``pad = (left, top)`` pixels. Boxes map as ``box * scale + (left, top, left, top)``, and
predictions on the letterboxed image map back to original pixels with
``(box - (left, top, left, top)) / scale`` (``unletterbox_boxes``), the exact inverse.

Training (``rng`` given), one albumentations ``Compose`` with ``pascal_voc`` (pixel corner) boxes:

1. random scale: ``LongestMaxSize`` with the long side drawn from ``image_size * scale_range``
   (17 evenly spaced sizes, one resize of the original image);
2. ``PadIfNeeded`` to ``image_size`` at a random position (grey fill), then ``RandomCrop`` to
   ``image_size`` square: boxes are clipped to the crop, and a box keeping less than
   ``min_visibility`` of its area is dropped (a crop that removes every box gives a negative
   image);
3. ``HorizontalFlip`` (``hflip``), ``HueSaturationValue`` (``hsv_p``, shifts ``hue`` /
   ``saturation`` / ``value`` in albumentations units) and ``ColorJitter`` (``jitter_p``).

Every random draw comes from the sample's numpy Generator: before each call the Compose (and
so every transform in it) is pointed at that generator and at a ``random.Random`` seeded from
it (``Compose.set_random_state``), so a sample is a pure function of (seed, epoch, index),
whatever the worker count. Training samples have ``scale = nan`` and ``pad = (nan, nan)``:
after a random crop and flip no single letterbox maps them back (train losses never need it).

Images are RGB uint8 HWC on the way in; ``to_tensor`` normalises them (``normalize``:
``imagenet`` = (x / 255 - mean) / std, ``unit`` = x / 255, ``none`` = x as float).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD

FILL = 114
NORMALIZATIONS = ("imagenet", "unit", "none")


def letterbox(image: np.ndarray, boxes: np.ndarray, size: int, fill: int = FILL):
    """``image`` HWC uint8, ``boxes`` (M, 4) pixels -> ``(canvas, boxes, scale, (left, top))``."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, image.shape[2]), fill, dtype=image.dtype)
    canvas[top : top + nh, left : left + nw] = image
    offset = np.array([left, top, left, top], dtype=np.float64)
    return canvas, np.asarray(boxes, np.float64) * scale + offset, float(scale), (left, top)


def unletterbox_boxes(boxes, scale, pad):
    """Boxes on the letterboxed image -> original pixels (tensor or array, ``(..., 4)``)."""
    left, top = float(pad[0]), float(pad[1])
    if isinstance(boxes, torch.Tensor):
        offset = boxes.new_tensor([left, top, left, top])
    else:
        offset = np.array([left, top, left, top])
    return (boxes - offset) / float(scale)


def to_tensor(image: np.ndarray, normalize: str = "imagenet") -> torch.Tensor:
    """RGB uint8 HWC -> float32 CHW tensor, normalised as ``normalize`` says."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    out = image.astype(np.float32)
    if normalize == "imagenet":
        out = (out * np.float32(1 / 255) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(
            IMAGENET_STD, np.float32
        )
    elif normalize == "unit":
        out *= np.float32(1 / 255)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def to_uint8(image: torch.Tensor, normalize: str = "imagenet") -> torch.Tensor:
    """Inverse of ``to_tensor`` for pictures: (..., 3, H, W) float -> uint8 of the same shape."""
    x = image.detach().float()
    if normalize == "imagenet":
        mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
        x = (x * std + mean) * 255.0
    elif normalize == "unit":
        x = x * 255.0
    return (x + 0.5).clamp(0, 255).to(torch.uint8)


class DetectionTransform:
    """``transform(image, boxes, rng) -> (image, boxes, keep, scale, pad)``.

    ``image`` RGB uint8 HWC, ``boxes`` (M, 4) float pixel corners inside the image; returns the
    ``image_size`` square uint8 image, the surviving boxes (K, 4) float64, ``keep`` (K,) indices
    into the input boxes (to carry labels and flags), and the letterbox ``scale`` / ``pad``
    (nan for training samples). See the module docstring for the pipeline.
    """

    def __init__(
        self,
        image_size: int,
        scale_range: Sequence[float] = (0.5, 1.5),
        hflip: float = 0.5,
        hsv_p: float = 0.5,
        hue: float = 10.0,
        saturation: float = 40.0,
        value: float = 30.0,
        jitter_p: float = 0.0,
        brightness: float = 0.2,
        contrast: float = 0.2,
        min_visibility: float = 0.2,
        fill: int = FILL,
    ):
        self.image_size = int(image_size)
        self.fill = int(fill)
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        sizes = np.unique(np.round(np.linspace(lo, hi, 17) * self.image_size).astype(int))
        self.sizes = [int(s) for s in sizes if s >= 8]
        s = self.image_size
        self.compose = A.Compose(
            [
                A.LongestMaxSize(max_size=self.sizes),
                A.PadIfNeeded(s, s, position="random", border_mode=cv2.BORDER_CONSTANT, fill=fill),
                A.RandomCrop(s, s),
                A.HorizontalFlip(p=hflip),
                A.HueSaturationValue(hue, saturation, value, p=hsv_p),
                A.ColorJitter(brightness, contrast, saturation=0.0, hue=0.0, p=jitter_p),
            ],
            bbox_params=A.BboxParams(
                format="pascal_voc",
                label_fields=["keep"],
                min_visibility=float(min_visibility),
                clip=True,
                filter_invalid_bboxes=True,
            ),
            strict=True,
        )

    def __call__(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator | None):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if rng is None:
            canvas, out, scale, pad = letterbox(image, boxes, self.image_size, self.fill)
            return canvas, out, np.arange(len(boxes)), scale, pad
        self.compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        res = self.compose(image=image, bboxes=boxes, keep=np.arange(len(boxes)))
        out = np.asarray(res["bboxes"], np.float64).reshape(-1, 4)
        keep = np.asarray(res["keep"], np.int64).reshape(-1)
        return res["image"], out, keep, float("nan"), (float("nan"), float("nan"))
