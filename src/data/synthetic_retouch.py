"""A synthetic photo-retouching dataset WRITTEN in the FiveK-style layouts of
src/data/fivek.py (paired ``{train,test}/{input,expert_c}/NNNN.png`` and unpaired
``trainA`` / ``trainB``), then read back through the real reader.

Each scene (the retouched target, ``expert_c``) is a well-exposed drawing: a two-colour
gradient ground, 3-6 filled discs and rectangles of saturated colours, mild per-pixel noise.
Its input is the same scene as a poor camera shot, one random global degradation per image:

* low contrast: ``m + c (x - m)`` around the image mean ``m``, ``c ~ U(contrast)``;
* a tone curve that darkens: ``x ** gamma``, ``gamma ~ U(gamma)`` (> 1);
* a colour cast: channel gains ``cast + N(0, cast_jitter)`` (default a blue-green shot: red
  dimmed most), then clipped to [0, 1].

Undoing them needs the whole picture (the global features of the DPE generator), and the
degradations are invertible, so the target is reachable. ``trainA`` holds the inputs of the
first half of the training scenes and ``trainB`` the targets of the second half (the DPE
paper's split of FiveK: no scene appears on both sides); ``test/`` is paired.

Deterministic by ``seed``; written once (temporary folder, marker last, renamed into place),
a root written with other options is one DataError line (``synthetic_translation``'s
mechanism).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from src.data.base import DataError
from src.data.fivek import build_fivek
from src.data.write_once import write_once

FORMAT_VERSION = 1
MARKER = "synthetic_fivek.json"


def render_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """One clean scene, (size, size, 3) float64 in [0, 1]."""
    c0, c1 = rng.uniform(0.35, 0.95, 3), rng.uniform(0.35, 0.95, 3)
    t = np.linspace(0, 1, size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(
        0.5 + (np.cos(angle) * (t[None, :] - 0.5) + np.sin(angle) * (t[:, None] - 0.5)), 0, 1
    )
    ground = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    image = Image.fromarray((ground * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        r = rng.uniform(0.08, 0.25) * size
        cx, cy = rng.uniform(0, size, 2)
        colour = rng.uniform(0.05, 1.0, 3)
        colour[int(rng.integers(0, 3))] = rng.uniform(0.8, 1.0)  # saturated
        fill = tuple(int(v) for v in (colour * 255).round())
        box = [cx - r, cy - r, cx + r, cy + r]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    x = np.asarray(image, dtype=np.float64) / 255.0
    return np.clip(x + rng.normal(0, 0.015, x.shape), 0, 1)


def degrade(
    x: np.ndarray,
    rng: np.random.Generator,
    contrast: tuple[float, float] = (0.55, 0.8),
    gamma: tuple[float, float] = (1.5, 2.2),
    cast: tuple[float, float, float] = (0.8, 0.95, 1.0),
    cast_jitter: float = 0.04,
) -> np.ndarray:
    """The input photo of a clean scene ``x`` (see the module docstring)."""
    m = x.mean()
    y = m + rng.uniform(*contrast) * (x - m)
    y = np.clip(y, 0, 1) ** rng.uniform(*gamma)
    gains = np.asarray(cast) + rng.normal(0, cast_jitter, 3)
    return np.clip(y * gains, 0, 1)


def _save(x: np.ndarray, path: Path) -> None:
    Image.fromarray((x * 255).round().astype(np.uint8)).save(path)


def ensure_synthetic_fivek(
    root: str | Path,
    seed: int = 0,
    num_train: int = 200,
    num_test: int = 16,
    source_size: int = 64,
    gamma: tuple[float, float] = (1.5, 2.2),
    contrast: tuple[float, float] = (0.55, 0.8),
    cast: tuple[float, float, float] = (0.8, 0.95, 1.0),
    cast_jitter: float = 0.04,
) -> Path:
    """Write the dataset under ``root`` once (see the module docstring); returns ``root``."""
    if num_train < 2 or num_test < 1 or source_size < 16:
        raise DataError("synthetic_fivek: needs num_train >= 2, num_test >= 1, source_size >= 16")
    options = dict(
        gamma=[float(v) for v in gamma],
        contrast=[float(v) for v in contrast],
        cast=[float(v) for v in cast],
        cast_jitter=float(cast_jitter),
    )
    params = {
        "format": FORMAT_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_test": int(num_test),
        "source_size": int(source_size),
        **options,
    }

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for d in (
            "train/input",
            "train/expert_c",
            "test/input",
            "test/expert_c",
            "trainA",
            "trainB",
        ):
            (folder / d).mkdir(parents=True)
        half = int(num_train) // 2
        for split, n in (("train", int(num_train)), ("test", int(num_test))):
            for i in range(n):
                clean = render_scene(rng, int(source_size))
                shot = degrade(
                    clean, rng, options["contrast"], options["gamma"], options["cast"], cast_jitter
                )
                name = f"{i:04d}.png"
                _save(shot, folder / split / "input" / name)
                _save(clean, folder / split / "expert_c" / name)
                if split == "train" and i < half:
                    _save(shot, folder / "trainA" / name)
                elif split == "train":
                    _save(clean, folder / "trainB" / name)

    return write_once(Path(root), MARKER, params, write)


def build_synthetic_fivek(
    root: str | Path,
    image_size: int = 64,
    load_size: int | None = None,
    flip: bool = True,
    mode: str = "unpaired",
    seed: int = 0,
    num_train: int = 200,
    num_test: int = 16,
    source_size: int = 64,
    gamma: tuple[float, float] = (1.5, 2.2),
    contrast: tuple[float, float] = (0.55, 0.8),
    cast: tuple[float, float, float] = (0.8, 0.95, 1.0),
    cast_jitter: float = 0.04,
):
    """``dataset=synthetic_fivek``: write once, read through ``build_fivek``."""
    ensure_synthetic_fivek(
        root, seed, num_train, num_test, source_size, gamma, contrast, cast, cast_jitter
    )
    return build_fivek(root, image_size, load_size, flip, mode, name="synthetic_fivek")


build_synthetic_fivek.kind = "photo_enhancement"
