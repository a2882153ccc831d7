"""YOLO txt detection (the ultralytics/yolov3 layout): ``.../images/<name>.jpg`` with
``.../labels/<name>.txt`` beside, one ``class cx cy w h`` line per box, all four normalised to
[0, 1] by the image width / height, class ids 0..nc-1.

A ``data.yaml`` names the splits::

    path: ../datasets/shapes      # optional root (relative to the yaml's folder)
    train: images/train           # a folder of images, a .txt list of image files, or a list
    val: val.txt                  #   of those; relative to `path`
    nc: 3                         # optional when names is given (must agree)
    names: [ellipse, rectangle, triangle]   # or {0: ellipse, 1: rectangle, ...}

In a list file, a relative line is relative to ``path`` (``./`` lines to the list's folder, as
ultralytics does). The label file of ``a/images/b/c.jpg`` is ``a/labels/b/c.txt`` (the last
``images`` folder swapped for ``labels``); an image without a label file is a negative.
``image_id`` is the image path as a string.

Bad input: a missing yaml, split or list entry: ``DataError``. A malformed line (not 5
numbers, a class id not an integer in 0..nc-1): ``DataError`` naming ``file:line``. Boxes of
zero or negative size dropped, boxes reaching outside [0, 1] clipped, counted, one warning
line each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from src.data.base import DataError
from src.data.detection.format import (
    BoxCleaner,
    DetectionDataset,
    DetectionRecord,
    check_on_missing,
    drop_missing,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def parse_yolo_labels(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (K,) int64, boxes (K, 4) float64 normalised corners)``; no file = no boxes."""
    if not path.is_file():
        return np.zeros(0, np.int64), np.zeros((0, 4))
    labels, rows = [], []
    for ln, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path}:{ln}"
        if len(fields) != 5:
            raise DataError(
                f"{where}: expected 'class cx cy w h' (5 fields), got "
                f"{len(fields)} ({line.strip()[:60]!r}); polygon labels are not "
                "supported"
            )
        try:
            cls = float(fields[0])
            vals = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{where}: expected numbers, got {line.strip()!r}") from None
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DataError(
                f"{where}: class id {fields[0]} is not an integer in "
                f"0..{num_classes - 1} (nc={num_classes})"
            )
        if not np.isfinite(vals).all():
            raise DataError(f"{where}: non-finite value in {line.strip()!r}")
        labels.append(int(cls))
        rows.append(vals)
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    corners = np.c_[a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2]
    return np.array(labels, dtype=np.int64), corners


def read_data_yaml(path: str | os.PathLike) -> dict:
    """The data.yaml as a dict with ``root`` (Path) and ``names`` (list) resolved."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: YOLO data.yaml not found; check dataset.data")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: a YOLO data.yaml needs 'names' (and train / val)")
    names = data["names"]
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: names keys must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] for k in keys]
    names = [str(n) for n in names]
    if "nc" in data and int(data["nc"]) != len(names):
        raise DataError(f"{path}: nc={data['nc']} but {len(names)} names are listed")
    root = Path(data.get("path") or ".")
    if not root.is_absolute():
        root = path.parent / root
    return {**data, "names": names, "root": root}


def list_images(spec: Any, root: Path, source: str) -> list[Path]:
    """Image files of a split entry: a folder, a .txt list, an image file, or a list of those."""
    if isinstance(spec, (list, tuple)) or (
        hasattr(spec, "__iter__") and not isinstance(spec, (str, os.PathLike))
    ):
        return [p for s in spec for p in list_images(s, root, source)]
    p = Path(spec)
    p = p if p.is_absolute() else root / p
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file() and p.suffix.lower() == ".txt":
        out = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            q = Path(line)
            if not q.is_absolute():
                q = p.parent / q if line.startswith("./") else root / q
            out.append(q)
        return out
    if p.is_file():
        return [p]
    raise DataError(f"{source}: split entry {spec!r} not found (looked for {p})")


class YoloDetection(DetectionDataset):
    """YOLO txt detection over a list of image files (see the module docstring)."""

    def __init__(
        self,
        images: Sequence[str | os.PathLike],
        class_names: Sequence[str],
        image_size: int = 640,
        on_missing: str = "error",
        augment: Any = None,
        normalize: str = "imagenet",
        keep_uint8: bool = False,
        source: str = "the image list",
    ):
        check_on_missing(on_missing)
        cleaner = BoxCleaner(source, tolerance=1e-5)  # normalised units
        records = []
        for img in map(Path, images):
            lab = label_path(img)
            labels, boxes = parse_yolo_labels(lab, len(class_names))
            ok, boxes = cleaner(boxes, 1.0, 1.0, str(lab))
            records.append(
                DetectionRecord(
                    file=img,
                    image_id=str(img),
                    boxes=boxes,
                    labels=labels[ok],
                    crowd=np.zeros(int(ok.sum()), bool),
                    difficult=np.zeros(int(ok.sum()), bool),
                    normalized=True,
                )
            )
        cleaner.report()
        records, self.skipped_missing = drop_missing(records, on_missing, source)
        super().__init__(records, class_names, image_size, augment, normalize, keep_uint8)


def yolo_splits(
    data: str | os.PathLike,
    image_size: int = 640,
    on_missing: str = "error",
    augment: Any = None,
    normalize: str = "imagenet",
    keep_uint8: bool = False,
) -> dict[str, YoloDetection]:
    """``{"train": ..., "val": ...}`` from a YOLO ``data.yaml`` (val optional)."""
    cfg = read_data_yaml(data)
    out = {}
    for split in ("train", "val"):
        if cfg.get(split) is None:
            if split == "train":
                raise DataError(f"{data}: no 'train' entry")
            continue
        source = f"{data} ({split})"
        images = list_images(cfg[split], cfg["root"], source)
        if not images:
            raise DataError(f"{source}: no images found under {cfg[split]!r}")
        out[split] = YoloDetection(
            images,
            cfg["names"],
            image_size,
            on_missing,
            augment,
            normalize,
            keep_uint8,
            source=source,
        )
    return out


yolo_splits.kind = "detection"  # the dataset kind Tasks declare in `accepts`
