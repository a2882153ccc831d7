"""Image transforms for classification readers, all randomness from a numpy Generator.

``ClassificationTransform(size)(image, rng)``: PIL image -> float32 CHW tensor normalised with
the ImageNet statistics. With ``rng`` (training) it follows GuYuc/WS-DAN.PyTorch: resize to
``size / 0.875``, random crop ``size``, horizontal flip with p=0.5, brightness x U(1 +- 0.126),
saturation x U(1 +- 0.5) (fixed order: brightness, then saturation). With ``rng=None``
(evaluation) it resizes to ``size / 0.875`` and takes the centre crop: deterministic.

The uint8 path (``ClassificationTransform.uint8``, ``dataset.uint8_images``): the same draws,
but the sample stops at the uint8 crop (flipped) with its two colour-jitter factors
(``jitter``: brightness, saturation; NaN for a step not taken), and ``normalize_batch`` does
``/ 255``, the jitter and the ImageNet normalisation on the device, in the host path's float32
order. Without jitter (evaluation) that is bit-identical to the host path; the saturation
step's grey dot product may differ in its summation order (NumPy's BLAS vs three products), a
few float32 ulps (tested: within 1e-5 of the normalised values).
"""

from __future__ import annotations

import math
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


GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def normalize_batch(images: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB (and optional (B, 2) brightness / saturation factors, NaN = not
    applied) -> float32 ImageNet-normalised, on the images' device: the float32 operations of
    ``ClassificationTransform.__call__`` in its order (the divisors are device tensors, not
    Python scalars: CUDA turns ``x / scalar`` into ``x * (1 / scalar)``, one bit off). Float
    images (the float path) are returned as they are."""
    if images.dtype != torch.uint8:
        return images
    dev = images.device
    x = images.float() / torch.full((1, 1, 1, 1), 255.0, device=dev)
    if jitter is not None:
        jitter = jitter.to(device=dev, dtype=torch.float32)
        b, s = jitter[:, 0].view(-1, 1, 1, 1), jitter[:, 1].view(-1, 1, 1, 1)
        x = torch.where(torch.isnan(b), x, (x * b).clamp(0.0, 1.0))
        w = GRAY_WEIGHTS
        gray = x[:, 0:1] * w[0] + x[:, 1:2] * w[1] + x[:, 2:3] * w[2]
        x = torch.where(torch.isnan(s), x, (gray + s * (x - gray)).clamp(0.0, 1.0))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


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

    def _crop(self, image: Image.Image, rng: np.random.Generator | None):
        """``(uint8 HWC crop, flip)``: the resized crop and whether it is to be flipped
        (draws: crop, flip)."""
        (h, w), (rh, rw) = self.size, self.resized
        image = image.convert("RGB").resize((rw, rh), Image.BILINEAR)
        if rng is None:
            top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        else:
            top, left = int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))
        array = np.asarray(image)[top : top + h, left : left + w]
        return array, rng is not None and rng.random() < self.hflip

    def _draw_jitter(self, rng: np.random.Generator) -> tuple[float | None, float | None]:
        """The brightness and saturation factors (None: step off), drawn after the flip."""
        bright = sat = None
        if self.brightness > 0:
            bright = rng.uniform(1 - self.brightness, 1 + self.brightness)
        if self.saturation > 0:
            sat = rng.uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        return bright, sat

    def __call__(self, image: Image.Image, rng: np.random.Generator | None) -> torch.Tensor:
        crop, flip = self._crop(image, rng)
        array = crop.astype(np.float32) / 255.0
        if flip:  # after the conversion: a strided view, as it always was (same BLAS path)
            array = array[:, ::-1]
        if rng is not None:
            bright, sat = self._draw_jitter(rng)
            if bright is not None:
                array = np.clip(array * bright, 0.0, 1.0)
            if sat is not None:
                gray = array @ np.asarray(GRAY_WEIGHTS, dtype=np.float32)
                array = np.clip(gray[..., None] + sat * (array - gray[..., None]), 0.0, 1.0)
        return normalize(array)

    def uint8(
        self, image: Image.Image, rng: np.random.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The uint8 path: ``(uint8 (3, h, w) crop, jitter)`` with the draws of ``__call__``;
        ``jitter`` (2,) float32 brightness / saturation factors (NaN: not applied), None
        without ``rng``. ``normalize_batch`` turns them into ``__call__``'s output."""
        crop, flip = self._crop(image, rng)
        crop = crop[:, ::-1] if flip else crop
        chw = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        if rng is None:
            return chw, None
        factors = [math.nan if f is None else f for f in self._draw_jitter(rng)]
        return chw, torch.tensor(factors, dtype=torch.float32)
