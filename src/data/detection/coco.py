"""COCO object detection (``instances_*.json`` + an image folder), read through pycocotools.

* Category ids (COCO's are 1..90 with gaps) map to contiguous labels 0..C-1 in increasing id
  order; ``label_to_category_id`` maps back (results must be written with the original ids).
* ``bbox`` ``[x, y, w, h]`` becomes corners ``x1 y1 x2 y2 = x, y, x + w, y + h`` (pixels, no +1,
  the convention COCOeval uses).
* ``iscrowd=1`` annotations are kept with ``crowd=True`` (training targets exclude them,
  COCOeval needs them as they are: use ``coco`` for evaluation, not the samples).
* Images without annotations stay as negatives; ``skip_empty=True`` drops images with no
  non-crowd box left (after cleaning).
* Images are in ``coco.getImgIds()`` order (increasing id).

Bad input: a missing or empty file, invalid JSON, or a json without ``images`` /
``categories``: ``DataError``. An annotation whose ``category_id`` is not in ``categories`` or
whose ``image_id`` is not in ``images``: ``DataError`` naming the file and the id. A missing
image file: ``DataError`` (``on_missing="skip"``: counted skip). Boxes of zero or negative size:
dropped; boxes reaching outside the image (``width`` / ``height`` of its ``images`` entry):
clipped; both counted, one warning line each.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from src.data.base import DataError
from src.data.detection.format import (
    BoxCleaner,
    DetectionDataset,
    DetectionRecord,
    check_on_missing,
    drop_missing,
)


def load_coco_json(path: str | os.PathLike):
    """A ``pycocotools.coco.COCO`` for ``path``, with the checks of the module docstring."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found; check the dataset root")
    text = path.read_text()
    if not text.strip():
        raise DataError(f"{path}: the annotation file is empty; download or regenerate it")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON (line {e.lineno}: {e.msg}); the file is "
            "truncated or not a COCO annotation file"
        ) from None
    if not isinstance(data, dict) or not {"images", "categories"} <= set(data):
        raise DataError(
            f"{path}: not a COCO instances file (needs 'images', 'annotations' and 'categories')"
        )
    data.setdefault("annotations", [])
    images = {img["id"] for img in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        if ann.get("category_id") not in categories:
            raise DataError(
                f"{path}: annotation {ann.get('id')} has category_id "
                f"{ann.get('category_id')}, which is not in 'categories' "
                f"{sorted(categories)[:10]}; fix the annotation file"
            )
        if ann.get("image_id") not in images:
            raise DataError(
                f"{path}: annotation {ann.get('id')} names image_id "
                f"{ann.get('image_id')}, which is not in 'images'; fix the "
                "annotation file"
            )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(DetectionDataset):
    """COCO json + image folder -> detection samples. Evaluation needs: ``coco`` (the
    pycocotools object of the whole file), ``annotation_file``, ``image_ids`` (the images of
    this dataset, a subset of the file's when images were skipped), ``label_to_category_id``
    and ``category_id_to_label``."""

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        images_dir: str | os.PathLike,
        image_size: int = 640,
        skip_empty: bool = False,
        on_missing: str = "error",
        augment: Any = None,
        normalize: str = "imagenet",
        keep_uint8: bool = False,
    ):
        check_on_missing(on_missing)
        self.annotation_file = Path(annotation_file)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataError(
                f"{self.images_dir}: COCO image folder not found; check the dataset root"
            )
        self.coco = coco = load_coco_json(self.annotation_file)
        cats = sorted(coco.cats.values(), key=lambda c: c["id"])
        self.label_to_category_id = [int(c["id"]) for c in cats]
        self.category_id_to_label = {cid: i for i, cid in enumerate(self.label_to_category_id)}
        cleaner = BoxCleaner(str(self.annotation_file))
        records = []
        for img_id in sorted(coco.getImgIds()):
            info = coco.imgs[img_id]
            anns = coco.imgToAnns.get(img_id, [])
            h, w = info.get("height"), info.get("width")
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            corners = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]
            where = f"image {img_id} ({info.get('file_name')})"
            ok, boxes = cleaner(corners, h, w, where)
            kept = [a for a, k in zip(anns, ok) if k]
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in kept], dtype=bool)
            if skip_empty and not (~crowd).any():
                continue
            records.append(
                DetectionRecord(
                    file=self.images_dir / info["file_name"],
                    image_id=int(img_id),
                    boxes=boxes,
                    labels=np.array(
                        [self.category_id_to_label[a["category_id"]] for a in kept], dtype=np.int64
                    ),
                    crowd=crowd,
                    difficult=np.zeros(len(kept), dtype=bool),
                    size=(int(h), int(w)) if h and w else None,
                )
            )
        cleaner.report()
        records, self.skipped_missing = drop_missing(records, on_missing, str(self.annotation_file))
        super().__init__(
            records, [c["name"] for c in cats], image_size, augment, normalize, keep_uint8
        )


def coco_splits(
    root: str | os.PathLike,
    image_size: int = 640,
    train_json: str = "annotations/instances_train2017.json",
    train_images: str = "train2017",
    val_json: str = "annotations/instances_val2017.json",
    val_images: str = "val2017",
    skip_empty: bool = False,
    on_missing: str = "error",
    augment: Any = None,
    normalize: str = "imagenet",
    keep_uint8: bool = False,
) -> dict[str, CocoDetection]:
    """``{"train": ..., "val": ...}`` from a COCO root (paths relative to ``root``).
    ``skip_empty`` applies to the training split only: evaluation keeps every image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: COCO root not found (set dataset.root)")
    common = dict(
        image_size=image_size,
        on_missing=on_missing,
        augment=augment,
        normalize=normalize,
        keep_uint8=keep_uint8,
    )
    return {
        "train": CocoDetection(
            root / train_json, root / train_images, skip_empty=skip_empty, **common
        ),
        "val": CocoDetection(root / val_json, root / val_images, **common),
    }


coco_splits.kind = "detection"  # the dataset kind Tasks declare in `accepts`
