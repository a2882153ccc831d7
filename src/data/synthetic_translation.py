"""Small synthetic image-to-image datasets WRITTEN in the pix2pix and CycleGAN layouts, then
read back through the real readers (src/data/image_translation.py).

* ``synthetic_pix2pix`` (aligned, ``{root}/{train,val,test}/NNNN.jpg``, A | B side by side):
  A is an edge map (black outlines of 1-3 discs, squares and triangles on white), B the same
  shapes filled with the colour of their kind (disc red, square blue, triangle green) on a
  light grey ground. Translating A to B means recognising each outline's kind and filling its
  inside: local, learnable, and far from the identity.
* ``synthetic_cyclegan`` (unaligned, ``{root}/{trainA,trainB,testA,testB}/NNNN.jpg``): the same
  kinds of shapes in two colour palettes (A warm on a dark ground, B cool on a light ground),
  drawn independently for each domain (no pairs).

Deterministic by ``seed`` (same seed -> identical files). Written into a temporary sibling
folder, marker file last, then renamed into place, so concurrent processes never see half a
dataset; a root whose marker records other options is one DataError line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from src.data.base import DataError
from src.data.image_translation import build_paired_images, build_unpaired_images
from src.data.write_once import write_once

FORMAT_VERSION = 1
KINDS = ("disc", "square", "triangle")
PAIRED_FILL = {"disc": (220, 40, 40), "square": (40, 70, 220), "triangle": (30, 170, 60)}
PALETTE_A = {"disc": (230, 60, 30), "square": (240, 160, 20), "triangle": (250, 230, 60)}
PALETTE_B = {"disc": (30, 200, 220), "square": (50, 80, 230), "triangle": (150, 60, 220)}


def _shapes(rng: np.random.Generator, size: int) -> list[tuple[str, float, float, float]]:
    """1-3 shapes: (kind, centre x, centre y, radius)."""
    out = []
    for _ in range(int(rng.integers(1, 4))):
        r = float(rng.uniform(0.12, 0.22)) * size
        cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
        out.append((KINDS[int(rng.integers(0, 3))], cx, cy, r))
    return out


def _draw(draw: ImageDraw.ImageDraw, kind: str, cx, cy, r, fill, outline, width: int) -> None:
    if kind == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    elif kind == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill, outline=outline, width=width)
    else:
        points = [(cx, cy - r), (cx - 0.95 * r, cy + 0.8 * r), (cx + 0.95 * r, cy + 0.8 * r)]
        draw.polygon(points, fill=fill, outline=outline, width=width)


def render_pair(rng: np.random.Generator, size: int) -> Image.Image:
    """One A | B picture (2 * size x size)."""
    shapes = _shapes(rng, size)
    width = max(1, size // 32)
    edges = Image.new("RGB", (size, size), (255, 255, 255))
    filled = Image.new("RGB", (size, size), (225, 225, 225))
    de, df = ImageDraw.Draw(edges), ImageDraw.Draw(filled)
    for kind, cx, cy, r in shapes:
        _draw(de, kind, cx, cy, r, None, (0, 0, 0), width)
        _draw(df, kind, cx, cy, r, PAIRED_FILL[kind], (40, 40, 40), width)
    pair = Image.new("RGB", (2 * size, size))
    pair.paste(edges, (0, 0))
    pair.paste(filled, (size, 0))
    return pair


def render_domain(rng: np.random.Generator, size: int, domain: str) -> Image.Image:
    palette, ground = (PALETTE_A, (40, 40, 50)) if domain == "A" else (PALETTE_B, (235, 235, 225))
    image = Image.new("RGB", (size, size), ground)
    draw = ImageDraw.Draw(image)
    for kind, cx, cy, r in _shapes(rng, size):
        _draw(draw, kind, cx, cy, r, palette[kind], None, 1)
    return image


def _check(name: str, counts: dict[str, int], source_size: int) -> None:
    if min(counts.values()) < 1 or source_size < 16:
        raise DataError(f"{name}: every split needs >= 1 image and source_size >= 16")


def ensure_synthetic_pix2pix(
    root: str | Path,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 32,
    num_test: int = 8,
    source_size: int = 72,
) -> Path:
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    params = {"format": FORMAT_VERSION, "seed": int(seed), **counts, "source_size": source_size}
    _check("synthetic_pix2pix", counts, source_size)

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, n in counts.items():
            (folder / split).mkdir(parents=True)
            for i in range(n):
                picture = render_pair(rng, source_size)
                picture.save(folder / split / f"{i:04d}.jpg", format="JPEG", quality=95)

    return write_once(Path(root), "synthetic_pix2pix.json", params, write)


def ensure_synthetic_cyclegan(
    root: str | Path,
    seed: int = 0,
    num_train_a: int = 120,
    num_train_b: int = 100,
    num_test: int = 16,
    source_size: int = 72,
) -> Path:
    counts = {"trainA": num_train_a, "trainB": num_train_b, "testA": num_test, "testB": num_test}
    counts = {k: int(v) for k, v in counts.items()}
    params = {"format": FORMAT_VERSION, "seed": int(seed), **counts, "source_size": source_size}
    _check("synthetic_cyclegan", counts, source_size)

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, n in counts.items():
            (folder / split).mkdir(parents=True)
            for i in range(n):
                picture = render_domain(rng, source_size, split[-1])
                picture.save(folder / split / f"{i:04d}.jpg", format="JPEG", quality=95)

    return write_once(Path(root), "synthetic_cyclegan.json", params, write)


def build_synthetic_pix2pix(
    root: str | Path,
    image_size: int = 64,
    load_size: int | None = None,
    direction: str = "AtoB",
    flip: bool = True,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 32,
    num_test: int = 8,
    source_size: int = 72,
):
    """``dataset=synthetic_pix2pix``: write once, read through the aligned reader."""
    ensure_synthetic_pix2pix(root, seed, num_train, num_val, num_test, source_size)
    return build_paired_images(
        root, image_size, load_size, direction, flip, name="synthetic_pix2pix"
    )


build_synthetic_pix2pix.kind = "paired_images"


def build_synthetic_cyclegan(
    root: str | Path,
    image_size: int = 64,
    load_size: int | None = None,
    flip: bool = True,
    seed: int = 0,
    num_train_a: int = 120,
    num_train_b: int = 100,
    num_test: int = 16,
    source_size: int = 72,
):
    """``dataset=synthetic_cyclegan``: write once, read through the unaligned reader."""
    ensure_synthetic_cyclegan(root, seed, num_train_a, num_train_b, num_test, source_size)
    return build_unpaired_images(root, image_size, load_size, flip, name="synthetic_cyclegan")


build_synthetic_cyclegan.kind = "unpaired_images"
