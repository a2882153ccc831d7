"""A small synthetic folder of images WRITTEN as PNG files, then read back through the real
folder reader (``src.data.image_folder``): ``dataset=synthetic_images``.

Layout ``{root}/{train,val}/{warm,cool}/NNNN.png`` (class-like subfolders, so the recursive
search is exercised). Each picture is one of two kinds, drawn with probability 1/2: ``warm``
(1-3 discs, squares and triangles in warm colours on a dark ground) or ``cool`` (cool colours on
a light ground), by the shape drawer of ``src.data.synthetic_translation`` (its CycleGAN
domains A and B). A two-mode distribution: a generator that covers only one mode, or paints
the average of both, stays far from it in ``fd_random``.

Deterministic by ``seed``; written once into a temporary sibling folder, marker file last,
then renamed into place (``src.data.write_once``), so concurrent runs never see half
a dataset, and a root generated with other options is one DataError line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data.base import DataError
from src.data.image_folder import build_image_folder
from src.data.synthetic_translation import render_domain
from src.data.write_once import write_once

FORMAT_VERSION = 1
KINDS = {"warm": "A", "cool": "B"}


def ensure_synthetic_images(
    root: str | Path, seed: int = 0, num_train: int = 512, num_val: int = 128, source_size: int = 36
) -> Path:
    counts = {"train": int(num_train), "val": int(num_val)}
    if min(counts.values()) < 1 or int(source_size) < 16:
        raise DataError("synthetic_images: every split needs >= 1 image and source_size >= 16")
    params = {"format": FORMAT_VERSION, "seed": int(seed), **counts, "source_size": source_size}

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, n in counts.items():
            for kind in KINDS:
                (folder / split / kind).mkdir(parents=True)
            for i in range(n):
                kind = "warm" if rng.random() < 0.5 else "cool"
                picture = render_domain(rng, int(source_size), KINDS[kind])
                picture.save(folder / split / kind / f"{i:04d}.png", format="PNG")

    return write_once(Path(root), "synthetic_images.json", params, write)


def build_synthetic_images(
    root: str | Path,
    image_size: int = 32,
    flip: bool = False,
    seed: int = 0,
    num_train: int = 512,
    num_val: int = 128,
    source_size: int = 36,
):
    """``dataset=synthetic_images``: write once, read through the folder reader."""
    root = ensure_synthetic_images(root, seed, num_train, num_val, source_size)
    return build_image_folder(
        root / "train", image_size, val_root=root / "val", flip=flip, name="synthetic_images"
    )


build_synthetic_images.kind = "images"
