"""A small synthetic fine-grained dataset WRITTEN in the CUB-200-2011 layout.

Every image shows the same kind of scene: a smooth, noisy background and a "bird" (body
ellipse, head, beak, tail) of random position, size, orientation and dull colour. The class
is decided only by a small mark on the bird's body: its colour (a saturated palette) and its
shape (disc, square, triangle), at a random place on the body. So the class is a local
detail, a few percent of the image: the setting WS-DAN's attention is made for.

``ensure_synthetic_cub(root, ...)`` writes ``images/``, ``images.txt``,
``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt`` and
``bounding_boxes.txt`` (the bird's box) under ``root`` on first use, deterministically from
``seed`` (same seed -> byte-identical files). It builds everything in a temporary sibling
folder, writes the marker file ``synthetic_cub.json`` last and renames the folder into place,
so concurrent processes (DDP ranks) and interrupted runs never see a half-written dataset.
``build_synthetic_cub`` then reads it back through the real CUB reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from src.data.base import DataError
from src.data.cub import build_cub
from src.data.write_once import write_once

MARKER = "synthetic_cub.json"
FORMAT_VERSION = 1
PALETTE = {  # saturated colours, far from the dull bird and background colours
    "red": (220, 30, 30),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 20),
    "green": (20, 200, 60),
    "magenta": (220, 30, 220),
    "cyan": (20, 220, 230),
    "orange": (250, 140, 10),
    "white": (250, 250, 250),
}
SHAPES = ("disc", "square", "triangle")


def class_table(num_classes: int) -> list[tuple[str, str]]:
    """(colour, shape) of each class: colours vary fastest, then shapes."""
    if not 1 <= num_classes <= len(PALETTE) * len(SHAPES):
        raise DataError(
            f"synthetic_cub: num_classes must be in 1..{len(PALETTE) * len(SHAPES)}, "
            f"got {num_classes}"
        )
    colours = list(PALETTE)
    return [(colours[k % len(colours)], SHAPES[k // len(colours)]) for k in range(num_classes)]


def _mark(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon(
            [(cx, cy - 1.2 * r), (cx - 1.1 * r, cy + 0.8 * r), (cx + 1.1 * r, cy + 0.8 * r)],
            fill=fill,
        )


def render(rng: np.random.Generator, size: int, colour: str, shape: str):
    """One picture (PIL RGB) and the bird's (x, y, w, h) box."""
    # Background: a random two-colour vertical gradient (sky to ground tones) plus noise.
    top = rng.uniform([120, 150, 170], [190, 210, 240])
    bottom = rng.uniform([90, 110, 60], [160, 170, 120])
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    background = (1 - t) * top + t * bottom + rng.normal(0.0, 6.0, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    # Bird: body ellipse, head, beak, tail; dull random colour; faces left or right.
    body_colour = tuple(int(v) for v in rng.uniform([70, 50, 30], [150, 120, 100]))
    cx, cy = rng.uniform(0.38, 0.62, 2) * size
    ax, ay = rng.uniform(0.17, 0.25) * size, rng.uniform(0.11, 0.15) * size
    facing = 1 if rng.random() < 0.5 else -1
    head_r = rng.uniform(0.07, 0.09) * size
    hx, hy = cx + facing * (ax + 0.4 * head_r), cy - ay * 0.8
    tail = [
        (cx - facing * ax * 0.8, cy),
        (cx - facing * (ax + 0.12 * size), cy - 0.07 * size),
        (cx - facing * (ax + 0.12 * size), cy + 0.07 * size),
    ]
    beak = [
        (hx + facing * head_r * 0.8, hy - 0.3 * head_r),
        (hx + facing * head_r * 1.8, hy),
        (hx + facing * head_r * 0.8, hy + 0.3 * head_r),
    ]
    draw.polygon(tail, fill=body_colour)
    draw.ellipse([cx - ax, cy - ay, cx + ax, cy + ay], fill=body_colour)
    draw.ellipse([hx - head_r, hy - head_r, hx + head_r, hy + head_r], fill=body_colour)
    draw.polygon(beak, fill=(200, 160, 60))
    eye = 0.18 * head_r
    ex = hx + facing * 0.35 * head_r
    draw.ellipse(
        [ex - eye, hy - 0.2 * head_r - eye, ex + eye, hy - 0.2 * head_r + eye], fill=(10, 10, 10)
    )
    # Legs.
    for dx in (-0.25, 0.25):
        x = cx + dx * ax
        draw.line([(x, cy + ay * 0.9), (x, cy + ay + 0.08 * size)], fill=(60, 40, 20), width=2)

    # The class: a small coloured mark somewhere on the body.
    angle, radius = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * 0.55
    mx, my = cx + radius * ax * np.cos(angle), cy + radius * ay * np.sin(angle)
    mark_r = rng.uniform(0.05, 0.065) * size
    jitter = rng.integers(-20, 21, 3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(PALETTE[colour], jitter))
    _mark(draw, shape, mx, my, mark_r, fill)

    x0 = min(cx - ax, tail[1][0], tail[2][0], hx - head_r, beak[1][0])
    x1 = max(cx + ax, tail[1][0], tail[2][0], hx + head_r, beak[1][0])
    y0 = min(cy - ay, hy - head_r)
    y1 = cy + ay + 0.08 * size
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(size), x1), min(float(size), y1)
    return image, (x0, y0, x1 - x0, y1 - y0)


def generate(
    folder: Path,
    seed: int,
    num_classes: int,
    train_per_class: int,
    test_per_class: int,
    source_size: int,
) -> None:
    """Write the dataset into ``folder`` (which must be empty or missing)."""
    rng = np.random.default_rng(seed)
    classes = class_table(num_classes)
    images, labels, split, boxes, names = [], [], [], [], []
    image_id = 0
    for k, (colour, shape) in enumerate(classes):
        name = f"{k + 1:03d}.{colour}_{shape}"
        names.append(f"{k + 1} {name}")
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        for j in range(train_per_class + test_per_class):
            image_id += 1
            picture, box = render(rng, source_size, colour, shape)
            rel = f"{name}/{colour}_{shape}_{j + 1:04d}.jpg"
            picture.save(folder / "images" / rel, format="JPEG", quality=92)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {k + 1}")
            split.append(f"{image_id} {1 if j < train_per_class else 0}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
    for filename, lines in (
        ("classes.txt", names),
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
    ):
        (folder / filename).write_text("\n".join(lines) + "\n", encoding="utf-8")


def ensure_synthetic_cub(
    root: str | Path,
    seed: int = 0,
    num_classes: int = 10,
    train_per_class: int = 40,
    test_per_class: int = 20,
    source_size: int = 128,
) -> Path:
    """Generate the dataset under ``root`` unless it is already there; returns ``root``."""
    root = Path(root).expanduser()
    params = {
        "format": FORMAT_VERSION,
        "seed": int(seed),
        "num_classes": int(num_classes),
        "train_per_class": int(train_per_class),
        "test_per_class": int(test_per_class),
        "source_size": int(source_size),
    }
    if not (root / MARKER).is_file():
        class_table(num_classes)  # validate before writing anything
        if min(train_per_class, test_per_class) < 1 or source_size < 32:
            raise DataError(
                "synthetic_cub: train_per_class and test_per_class must be >= 1 and "
                f"source_size >= 32, got {train_per_class}, {test_per_class}, {source_size}"
            )

    def write(tmp: Path) -> None:
        generate(tmp, **{k: v for k, v in params.items() if k != "format"})

    return write_once(root, MARKER, params, write)


def build_synthetic_cub(
    root: str | Path,
    image_size: int | Sequence[int] = 96,
    num_classes: int = 10,
    seed: int = 0,
    train_per_class: int = 40,
    test_per_class: int = 20,
    source_size: int = 128,
    uint8_images: bool = True,
):
    """Dataset factory for ``dataset=synthetic_cub``: generate if needed, read as CUB."""
    ensure_synthetic_cub(root, seed, num_classes, train_per_class, test_per_class, source_size)
    return build_cub(
        root, image_size=image_size, num_classes=num_classes, uint8_images=uint8_images
    )


build_synthetic_cub.kind = "classification"  # the dataset kind Tasks declare in `accepts`
