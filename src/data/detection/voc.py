"""Pascal VOC detection (``VOCdevkit/VOC2007``, ``VOC2012``): ``Annotations/<id>.xml``,
``JPEGImages/<id>.jpg``, ``ImageSets/Main/<split>.txt``.

Pixel convention: VOC coordinates are 1-based (``xmin = 1`` is the first pixel column) and
``xmax`` / ``ymax`` name the last pixel inside the box. We subtract 1 from all four, as the
reference detectors do (py-faster-rcnn, GluonCV ``VOCDetection``): boxes are 0-based and
``x2 - x1 + 1`` is the box width in pixels, the ``+1`` width the official VOC metric uses
(``offset=1`` in ``src.ops`` / ``src.nn`` box ops). Training and evaluation both use these
boxes; predictions are compared with them as they are.

* The 20 classes in the devkit's order (``VOC_CLASSES``), or ``class_names`` for a VOC-format
  dataset of other classes; an object of a class not in the list: ``DataError`` naming the
  file.
* ``difficult`` is kept (``difficult=True``; a missing tag is 0). Training targets usually
  keep them (the reference detectors do); the VOC metric ignores them.
* ``roots``: one root or a LIST of roots (``[VOC2007, VOC2012]`` trainval is "07+12"); images
  keep their order root by root, split file order within a root; ``image_id`` is the file
  stem.
* ``voc_ground_truth()``: per image the boxes, labels and difficult flags in ORIGINAL pixels
  as read from the xml (minus 1, not clipped; only boxes of zero or negative size dropped),
  what the VOC metric needs.

Bad input: a missing root, split file or xml: ``DataError`` naming it. A missing image:
``DataError`` (``on_missing="skip"``: counted skip). A malformed xml (not XML, no
``bndbox`` numbers): ``DataError`` naming the file. Degenerate boxes dropped and boxes outside
the ``<size>`` clipped, counted, one warning line each.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
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

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def parse_voc_xml(path: Path, class_index: dict[str, int]) -> dict:
    """``{"size": (h, w) or None, "boxes": (K, 4) float64 0-based, "labels", "difficult",
    "filename"}`` from one annotation file."""
    if not path.is_file():
        raise DataError(
            f"{path}: VOC annotation file not found; check the dataset root and the split file"
        )
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: not valid XML ({e}); replace the annotation file") from None
    size = None
    el = root.find("size")
    if el is not None:
        try:
            w, h = int(float(el.findtext("width"))), int(float(el.findtext("height")))
            size = (h, w) if h > 0 and w > 0 else None
        except (TypeError, ValueError):
            size = None
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DataError(
                f"{path}: object class {name!r} is not one of the dataset's "
                f"{len(class_index)} classes; fix the file or set class_names"
            )
        bb = obj.find("bndbox")
        try:
            box = [float(bb.findtext(k)) - 1.0 for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise DataError(
                f"{path}: object {name!r} has no numeric bndbox "
                "xmin/ymin/xmax/ymax; fix the annotation file"
            ) from None
        boxes.append(box)
        labels.append(class_index[name])
        flag = (obj.findtext("difficult") or "0").strip()
        difficult.append(flag not in ("0", ""))
    return {
        "filename": root.findtext("filename"),
        "size": size,
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
        "labels": np.array(labels, dtype=np.int64),
        "difficult": np.array(difficult, dtype=bool),
    }


class VOCDetection(DetectionDataset):
    """VOC-format detection over one or several roots (see the module docstring)."""

    def __init__(
        self,
        roots: str | os.PathLike | Sequence[str | os.PathLike],
        split: str = "trainval",
        image_size: int = 640,
        class_names: Sequence[str] = VOC_CLASSES,
        on_missing: str = "error",
        augment: Any = None,
        normalize: str = "imagenet",
        keep_uint8: bool = False,
        image_ext: str = ".jpg",
    ):
        check_on_missing(on_missing)
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        self.roots = [Path(r) for r in roots]
        self.split = split
        class_index = {str(c): i for i, c in enumerate(class_names)}
        records, gt = [], []
        for root in self.roots:
            if not root.is_dir():
                raise DataError(
                    f"{root}: VOC root not found (a folder like VOCdevkit/VOC2007 "
                    "with Annotations/, JPEGImages/, ImageSets/Main/)"
                )
            split_file = root / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise DataError(
                    f"{split_file}: VOC split file not found (split={split!r}; "
                    "train, val, trainval or test)"
                )
            cleaner = BoxCleaner(str(root / "Annotations"))
            ids = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
            for stem in ids:
                xml = root / "Annotations" / f"{stem}.xml"
                ann = parse_voc_xml(xml, class_index)
                h, w = ann["size"] or (None, None)
                keep_gt = (ann["boxes"][:, 2] >= ann["boxes"][:, 0]) & (
                    ann["boxes"][:, 3] >= ann["boxes"][:, 1]
                )
                ok, boxes = cleaner(ann["boxes"], h, w, str(xml))
                records.append(
                    DetectionRecord(
                        file=root / "JPEGImages" / f"{stem}{image_ext}",
                        image_id=stem,
                        boxes=boxes,
                        labels=ann["labels"][ok],
                        crowd=np.zeros(int(ok.sum()), dtype=bool),
                        difficult=ann["difficult"][ok],
                        size=ann["size"],
                    )
                )
                gt.append(
                    {
                        "boxes": ann["boxes"][keep_gt],
                        "labels": ann["labels"][keep_gt],
                        "difficult": ann["difficult"][keep_gt],
                    }
                )
            cleaner.report()
        source = ", ".join(str(r) for r in self.roots) + f" ({split})"
        kept, self.skipped_missing = drop_missing(records, on_missing, source)
        keep = {id(r) for r in kept}
        self._gt = [g for r, g in zip(records, gt) if id(r) in keep]
        super().__init__(kept, class_names, image_size, augment, normalize, keep_uint8)

    def voc_ground_truth(self) -> list[dict[str, Any]]:
        """Per sample (same order as the dataset): ``image_id``, ``boxes`` (K, 4) float64 in
        original pixels (VOC minus 1; +1 widths), ``labels`` (K,) int64, ``difficult`` (K,)
        bool, for the VOC metric."""
        return [{"image_id": r.image_id, **g} for r, g in zip(self.records, self._gt)]


def voc_splits(
    train_roots: str | Sequence[str],
    val_roots: str | Sequence[str],
    train_split: str = "trainval",
    val_split: str = "test",
    image_size: int = 640,
    class_names: Sequence[str] = VOC_CLASSES,
    on_missing: str = "error",
    augment: Any = None,
    normalize: str = "imagenet",
    keep_uint8: bool = False,
) -> dict[str, VOCDetection]:
    """``{"train": ..., "val": ...}``: by default 07+12 trainval / VOC2007 test (the yaml)."""
    common = dict(
        image_size=image_size,
        class_names=list(class_names),
        on_missing=on_missing,
        augment=augment,
        normalize=normalize,
        keep_uint8=keep_uint8,
    )
    return {
        "train": VOCDetection(_as_list(train_roots), train_split, **common),
        "val": VOCDetection(_as_list(val_roots), val_split, **common),
    }


def _as_list(roots) -> list[str]:
    if isinstance(roots, (str, os.PathLike)):
        return [roots]
    return list(roots)


voc_splits.kind = "detection"  # the dataset kind Tasks declare in `accepts`
