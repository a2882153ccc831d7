"""A small synthetic label-map <-> scene dataset WRITTEN in pix2pixHD's layout, then read back
by the real reader (src/data/pix2pixhd.py).

Each street-like scene (``source_width`` x ``source_height``, 2:1 as Cityscapes) has six labels:
0 sky, 1 road (stuff, above / below a random horizon), 2 building (stuff: 1-3 blocks standing
on the horizon), and the things 3 car (1-3 boxes on the road, often overlapping), 4 person
(0-2 triangles), 5 sign (0-2 squares above the road). Written as Cityscapes writes them:

* ``{phase}_label/NNNN.png``: 8-bit label ids;
* ``{phase}_inst/NNNN.png``: 16-bit instance ids, ``label * 1000 + k`` for things, the label id
  for stuff;
* ``{phase}_img/NNNN.png``: the rendered scene: a colour per label, a light window band over the
  upper third of each car, a white inset in each sign, and every instance boundary (the
  reference's ``get_edges`` of the instance map) darkened. Two overlapping cars are one
  label region; only the instance-edge channel tells where one ends.

``label_nc: 0`` writes the RGB variant instead: ``{phase}_A/`` the label map in palette colours,
``{phase}_B/`` the scene (and ``{phase}_inst/``). Phases ``train`` and ``test`` (read as val).
Deterministic by ``seed``; written once into a temporary sibling folder and renamed into place
(the marker file records the options).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from src.data.base import DataError
from src.data.pix2pixhd import build_pix2pixhd_dataset, colorize, instance_edges, palette_colors
from src.data.write_once import write_once

FORMAT_VERSION = 1
LABELS = ("sky", "road", "building", "car", "person", "sign")
SKY, ROAD, BUILDING, CAR, PERSON, SIGN = range(len(LABELS))
COLORS = np.array(
    [(135, 185, 235), (95, 95, 100), (170, 120, 85), (205, 40, 40), (240, 200, 60), (40, 60, 200)],
    dtype=np.float32,
)
WINDOW, INSET = np.array((185, 215, 235), np.float32), np.array((245, 245, 245), np.float32)


def _mask(size: tuple[int, int], draw) -> np.ndarray:
    image = Image.new("L", size, 0)
    draw(ImageDraw.Draw(image))
    return np.asarray(image) > 0


def render_scene(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label ids (H, W) uint8, instance ids (H, W) int32, scene HxWx3 uint8)."""
    w, h = width, height
    horizon = int(rng.uniform(0.4, 0.6) * h)
    ids = np.full((h, w), SKY, np.uint8)
    ids[horizon:] = ROAD
    inst = ids.astype(np.int32)
    extras: list[tuple[np.ndarray, np.ndarray, int]] = []  # (mask, colour, instance)

    def put(mask: np.ndarray, label: int, instance: int) -> None:
        ids[mask] = label
        inst[mask] = instance

    for _ in range(int(rng.integers(1, 4))):
        x0 = rng.uniform(0, 0.85) * w
        bw, top = rng.uniform(0.15, 0.35) * w, rng.uniform(0.1, 0.35) * h
        box = [x0, top, x0 + bw, horizon - 1]
        put(_mask((w, h), lambda d, b=box: d.rectangle(b, fill=1)), BUILDING, BUILDING)
    for k in range(int(rng.integers(0, 3))):
        s = rng.uniform(0.1, 0.16) * h
        x0, y0 = rng.uniform(0, w - s), rng.uniform(0.05 * h, max(0.06 * h, horizon - s))
        box = [x0, y0, x0 + s, y0 + s]
        mask = _mask((w, h), lambda d, b=box: d.rectangle(b, fill=1))
        put(mask, SIGN, SIGN * 1000 + k)
        m = 0.3 * s
        inner = _mask(
            (w, h),
            lambda d, b=box, m=m: d.rectangle([b[0] + m, b[1] + m, b[2] - m, b[3] - m], fill=1),
        )
        extras.append((mask & inner, INSET, SIGN * 1000 + k))
    for k in range(int(rng.integers(1, 4))):
        cw, ch = rng.uniform(0.2, 0.35) * w, rng.uniform(0.18, 0.28) * h
        bottom = rng.uniform(min(horizon + ch, h - 1), h)
        x0 = rng.uniform(-0.1 * w, w - 0.9 * cw)
        box = [x0, bottom - ch, x0 + cw, bottom]
        mask = _mask((w, h), lambda d, b=box: d.rectangle(b, fill=1))
        put(mask, CAR, CAR * 1000 + k)
        band = np.zeros((h, w), bool)
        band[max(0, int(bottom - ch)) : max(0, int(bottom - ch + ch / 3))] = True
        extras.append((mask & band, WINDOW, CAR * 1000 + k))
    for k in range(int(rng.integers(0, 3))):
        ph = rng.uniform(0.25, 0.4) * h
        cx, bottom = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(horizon, h)
        tri = [(cx, bottom - ph), (cx - 0.2 * ph, bottom), (cx + 0.2 * ph, bottom)]
        put(_mask((w, h), lambda d, t=tri: d.polygon(t, fill=1)), PERSON, PERSON * 1000 + k)

    scene = COLORS[ids]
    for mask, colour, instance in extras:  # only where that thing is still visible
        scene[mask & (inst == instance)] = colour
    scene[instance_edges(inst)] *= 0.4
    return ids, inst, scene.round().clip(0, 255).astype(np.uint8)


def ensure_synthetic_pix2pixhd(
    root: str | Path,
    seed: int = 0,
    num_train: int = 200,
    num_test: int = 32,
    source_width: int = 96,
    source_height: int = 48,
    rgb_inputs: bool = False,
) -> Path:
    counts = {"train": int(num_train), "test": int(num_test)}
    if min(counts.values()) < 1 or min(source_width, source_height) < 16:
        raise DataError("synthetic_pix2pixhd: every phase needs >= 1 image and sides >= 16 px")
    params = {
        "format": FORMAT_VERSION,
        "seed": int(seed),
        **counts,
        "size": [int(source_width), int(source_height)],
        "layout": "A_B" if rgb_inputs else "label_inst_img",
    }
    colors = palette_colors(len(LABELS))

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for phase, n in counts.items():
            names = ("A", "inst", "B") if rgb_inputs else ("label", "inst", "img")
            dirs = [folder / f"{phase}_{name}" for name in names]
            for d in dirs:
                d.mkdir(parents=True)
            for i in range(n):
                ids, inst, scene = render_scene(rng, int(source_width), int(source_height))
                label = (
                    Image.fromarray(colorize(ids, colors)) if rgb_inputs else Image.fromarray(ids)
                )
                label.save(dirs[0] / f"{i:04d}.png")
                Image.fromarray(inst.astype(np.uint16)).save(dirs[1] / f"{i:04d}.png")
                Image.fromarray(scene).save(dirs[2] / f"{i:04d}.png")

    return write_once(Path(root), "synthetic_pix2pixhd.json", params, write)


def build_synthetic_pix2pixhd(
    root: str | Path,
    label_nc: int = len(LABELS),
    instance: bool = True,
    preprocess: str = "scale_width",
    image_size: int = 64,
    load_size: int | None = 64,
    flip: bool = True,
    size_multiple: int = 16,
    seed: int = 0,
    num_train: int = 200,
    num_test: int = 32,
    source_width: int = 96,
    source_height: int = 48,
):
    """``dataset=synthetic_pix2pixhd``: write once, read through the pix2pixHD reader."""
    if int(label_nc) not in (0, len(LABELS)):
        raise DataError(
            f"synthetic_pix2pixhd has {len(LABELS)} labels ({', '.join(LABELS)}): set "
            f"dataset.label_nc={len(LABELS)}, or 0 for its RGB-input variant"
        )
    ensure_synthetic_pix2pixhd(
        root, seed, num_train, num_test, source_width, source_height, rgb_inputs=label_nc == 0
    )
    return build_pix2pixhd_dataset(
        root,
        label_nc=label_nc,
        instance=instance,
        preprocess=preprocess,
        image_size=image_size,
        load_size=load_size,
        flip=flip,
        size_multiple=size_multiple,
        palette=[tuple(int(v) for v in c) for c in palette_colors(len(LABELS))],
        name="synthetic_pix2pixhd",
    )


build_synthetic_pix2pixhd.kind = "label_to_image"
