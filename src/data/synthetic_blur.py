"""A small synthetic motion-blur dataset WRITTEN in the GoPro layout
(``{root}/{train,test}/<sequence>/{blur,sharp}/NNNNNN.png``) and read back through the real
reader (src/data/gopro.py).

Sharp scenes: a two-colour gradient ground crossed by a few thin lines, with 2-4 discs, squares
and triangles (the shape drawer of src/data/synthetic_translation.py) in random colours with
dark outlines: edges and corners in every direction, so a blur is visible and undoing it is
learnable. Each blurred frame is its sharp frame convolved (reflect border, float, rounded to
8 bits) with one random kernel, normalised to sum 1:

* ``linear_kernel``: a straight motion of random length and angle (a line segment splatted
  bilinearly on the kernel grid);
* ``shaky_kernel``: a camera-shake trajectory, a random walk with inertia and occasional jerks
  (after Boracchi & Foi 2012, the model of DeblurGAN's ``motion_blur`` generator), scaled into
  the kernel and splatted bilinearly.

``shaky_fraction`` of the frames get a shaky kernel, the rest a linear one. Deterministic by
``seed``; written once (temporary folder, marker file last, rename), as every synthetic set.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from src.data.base import DataError
from src.data.gopro import build_gopro
from src.data.synthetic_translation import _draw, _shapes
from src.data.write_once import write_once

FORMAT_VERSION = 1


def _splat(points: np.ndarray, size: int) -> np.ndarray:
    """Bilinear splat of (N, 2) points (x, y; kernel-centred) on a size x size grid, sum 1."""
    k = np.zeros((size, size), np.float64)
    c = (size - 1) / 2.0
    for x, y in points + c:
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                          (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
            xi, yi = x0 + dx, y0 + dy
            if 0 <= xi < size and 0 <= yi < size:
                k[yi, xi] += w
    return k / k.sum()


def linear_kernel(rng: np.random.Generator, size: int = 11) -> np.ndarray:
    """A straight motion of length U(2, size - 1) px at a uniform angle, (size, size), sum 1."""
    length = float(rng.uniform(2.0, size - 1.0))
    angle = float(rng.uniform(0.0, math.pi))
    t = np.linspace(-length / 2, length / 2, max(8, int(length * 4)))
    points = np.stack([t * math.cos(angle), t * math.sin(angle)], 1)
    return _splat(points, size)


def shaky_kernel(rng: np.random.Generator, size: int = 11, steps: int = 64) -> np.ndarray:
    """A random-walk camera-shake trajectory fitted into (size, size), sum 1."""
    velocity = np.exp(1j * rng.uniform(0, 2 * math.pi))
    position = np.zeros(steps, np.complex128)
    for i in range(1, steps):
        turn = rng.normal(0, 0.7) * 1j * velocity  # smooth turns (inertia)
        jerk = rng.normal(0, 0.3, 2) @ np.array([1, 1j]) if rng.random() < 0.1 else 0
        velocity = velocity + 0.3 * turn + jerk
        velocity = velocity / max(abs(velocity), 1e-9)
        position[i] = position[i - 1] + velocity
    position = position - (position.max().real + position.min().real) / 2
    position = position - 1j * (position.max().imag + position.min().imag) / 2
    extent = max(np.abs(position.real).max(), np.abs(position.imag).max(), 1e-9)
    scale = float(rng.uniform(0.35, 1.0)) * (size - 1) / 2 / extent
    position = position * scale
    return _splat(np.stack([position.real, position.imag], 1), size)


def blur_image(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 convolved with ``kernel`` per channel (reflect border), rounded to uint8."""
    x = image.astype(np.float64)
    out = np.stack([ndimage.convolve(x[..., c], kernel, mode="reflect") for c in range(3)], -1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: int) -> Image.Image:
    """One sharp scene (see the module docstring)."""
    c0, c1 = rng.integers(30, 226, (2, 3))
    t = np.linspace(0, 1, size)[:, None, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    ground = (c0 * (1 - t) + c1 * t) * np.ones((size, size, 1))
    image = Image.fromarray(ground.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        draw.line([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    for kind, cx, cy, r in _shapes(rng, size) + _shapes(rng, size)[:1]:
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        _draw(draw, kind, cx, cy, r, fill, (20, 20, 20), max(1, size // 40))
    return image


def ensure_synthetic_gopro(
    root: str | Path,
    seed: int = 0,
    train_sequences: int = 4,
    test_sequences: int = 2,
    frames_per_sequence: int = 25,
    source_size: int = 100,
    kernel_size: int = 7,
    shaky_fraction: float = 0.5,
) -> Path:
    counts = {"train": int(train_sequences), "test": int(test_sequences)}
    params = {
        "format": FORMAT_VERSION,
        "seed": int(seed),
        **counts,
        "frames_per_sequence": int(frames_per_sequence),
        "source_size": int(source_size),
        "kernel_size": int(kernel_size),
        "shaky_fraction": float(shaky_fraction),
    }
    if min(counts.values()) < 1 or frames_per_sequence < 1 or source_size < 16:
        raise DataError(
            "synthetic_gopro: every split needs >= 1 sequence of >= 1 frame and source_size >= 16"
        )
    if kernel_size < 3 or kernel_size % 2 == 0 or kernel_size > source_size:
        raise DataError(
            f"synthetic_gopro: dataset.kernel_size={kernel_size} must be odd, >= 3 and at most "
            "dataset.source_size"
        )

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, n in counts.items():
            for s in range(n):
                seq = folder / split / f"SYN{s:04d}_{split}"
                (seq / "blur").mkdir(parents=True)
                (seq / "sharp").mkdir()
                for f in range(int(frames_per_sequence)):
                    sharp = np.asarray(render_scene(rng, int(source_size)))
                    shaky = rng.random() < shaky_fraction
                    kernel = (shaky_kernel if shaky else linear_kernel)(rng, int(kernel_size))
                    name = f"{f:06d}.png"
                    Image.fromarray(sharp).save(seq / "sharp" / name)
                    Image.fromarray(blur_image(sharp, kernel)).save(seq / "blur" / name)

    return write_once(Path(root), "synthetic_gopro.json", params, write)


def build_synthetic_gopro(
    root: str | Path,
    image_size: int = 64,
    load_size=None,
    flip: bool = True,
    seed: int = 0,
    train_sequences: int = 4,
    test_sequences: int = 2,
    frames_per_sequence: int = 25,
    source_size: int = 100,
    kernel_size: int = 7,
    shaky_fraction: float = 0.5,
):
    """``dataset=synthetic_gopro``: write once, read through the GoPro reader."""
    ensure_synthetic_gopro(
        root,
        seed,
        train_sequences,
        test_sequences,
        frames_per_sequence,
        source_size,
        kernel_size,
        shaky_fraction,
    )
    return build_gopro(root, image_size, load_size, flip, name="synthetic_gopro")


build_synthetic_gopro.kind = "blur_sharp"
