"""Image transforms for classification readers, all randomness from a numpy Generator.

``ClassificationTransform(size)(image, rng)``: PIL image -> float32 CHW tensor normalised with
the ImageNet statistics. With ``rng`` (training) it follows GuYuc/WS-DAN.PyTorch: resize to
``size / 0.875``, random crop ``size``, horizontal flip with p=0.5, brightness x U(1 +- 0.126),
saturation x U(1 +- 0.5) (fixed order: brightness, then saturation). With ``rng=None``
(evaluation) it resizes to ``size / 0.875`` and takes the centre crop: deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def normalize(array: np.ndarray) -> torch.Tensor:
    """HxWx3 float32 in [0, 1] -> 3xHxW float32 tensor, ImageNet-normalised."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    out = (array.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def denormalize(image: torch.Tensor) -> np.ndarray:
    """3xHxW normalised tensor -> HxWx3 uint8 array (for pictures)."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    rgb = (image.detach().float() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


class ClassificationTransform:
    def __init__(
        self,
        image_size: int | Sequence[int],
        resize_ratio: float = 0.875,
        hflip: float = 0.5,
        brightness: float = 0.126,
        saturation: float = 0.5,
    ):
        self.size = pair(image_size)
        self.resized = (int(self.size[0] / resize_ratio), int(self.size[1] / resize_ratio))
        self.hflip = float(hflip)
        self.brightness = float(brightness)
        self.saturation = float(saturation)

    def __call__(self, image: Image.Image, rng: np.random.Generator | None) -> torch.Tensor:
        (h, w), (rh, rw) = self.size, self.resized
        image = image.convert("RGB").resize((rw, rh), Image.BILINEAR)
        if rng is None:
            top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        else:
            top, left = int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))
        array = np.asarray(image, dtype=np.float32)[top : top + h, left : left + w] / 255.0
        if rng is not None:
            if rng.random() < self.hflip:
                array = array[:, ::-1]
            if self.brightness > 0:
                factor = rng.uniform(1 - self.brightness, 1 + self.brightness)
                array = np.clip(array * factor, 0.0, 1.0)
            if self.saturation > 0:
                factor = rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
                gray = array @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
                array = np.clip(gray[..., None] + factor * (array - gray[..., None]), 0.0, 1.0)
        return normalize(array)
