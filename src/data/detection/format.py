"""The one object-detection sample format, the dataset base class and the collate.

A sample (``DetectionDataset.load(index, rng)``) is a dict:

============== =================================================================================
``image``      float32 (3, S, S), ``S = image_size``, RGB, normalised as the ``normalize``
               option says (``imagenet`` | ``unit`` | ``none``); ``image_uint8`` (3, S, S)
               uint8 as well when ``keep_uint8=True`` (pictures); ``to_uint8`` inverts it
``boxes``      float32 (M, 4) corner boxes ``x1 y1 x2 y2`` in pixels of the returned image
``labels``     int64 (M,) contiguous 0..C-1
``crowd``      bool (M,) COCO ``iscrowd`` regions (kept; training targets exclude them)
``difficult``  bool (M,) VOC ``difficult`` flags
``image_id``   the original id: COCO int id, VOC file stem, YOLO image path
``index``      the sample's index in the dataset
``orig_size``  (h, w) of the image file
``scale``      letterbox scale; ``pad`` (left, top): ``original = (box - pad) / scale``
               (``unletterbox_boxes``); nan for augmented training samples
============== =================================================================================

``collate_detection`` stacks images (every sample of a batch has the same letterboxed size) and
pads boxes to (B, M_max, 4) with -1, labels to (B, M_max) with -1 and the flags with False: the
``src/nn`` convention, so every detector's targets come from one place.

Box hygiene is the readers' (``BoxCleaner``): boxes of zero or negative size are dropped,
boxes reaching outside their image are clipped (dropped if nothing is left), both counted and
reported as ONE warning line per annotation source with an example file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from src.data.base import DataError, SampleDataset
from src.data.detection.transforms import DetectionTransform, to_tensor, to_uint8

log = logging.getLogger(__name__)


@dataclass
class DetectionRecord:
    """One image: ``file`` on disk, boxes (K, 4) float64 corner pixels of the file (cleaned by
    ``BoxCleaner``), labels (K,) int64, flags (K,) bool, ``size`` (h, w) from the annotations
    (None when they do not say). ``normalized``: boxes are fractions of the image size (YOLO);
    the loader multiplies them by the decoded size."""

    file: Path
    image_id: Any
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    size: tuple[int, int] | None = None
    normalized: bool = False


class BoxCleaner:
    """Drops degenerate boxes and clips boxes to their image, counting both; ``report()`` logs
    one warning line per kind with the count and an example file. Excursions up to
    ``tolerance`` (rounding in the annotation files) are clipped without being counted."""

    def __init__(self, source: str, tolerance: float = 0.01):
        self.source = source
        self.tolerance = float(tolerance)
        self.degenerate = 0
        self.clipped = 0
        self.outside = 0
        self.examples: dict[str, str] = {}

    def __call__(self, boxes: np.ndarray, height: float | None, width: float | None, where: str):
        """Returns the mask of boxes kept and the kept boxes (clipped when the size is known)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not ok.all():
            self.degenerate += int((~ok).sum())
            self.examples.setdefault("degenerate", where)
        if height is not None and width is not None:
            clipped = boxes.copy()
            clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
            clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
            changed = ok & (np.abs(clipped - boxes) > self.tolerance).any(axis=1)
            empty = ok & ~((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))
            if changed.any():
                self.clipped += int((changed & ~empty).sum())
                self.outside += int(empty.sum())
                self.examples.setdefault("clipped", where)
            ok &= ~empty
            boxes = clipped
        return ok, boxes[ok]

    def report(self) -> None:
        if self.degenerate:
            log.warning(
                "%s: dropped %d box(es) of zero or negative size, e.g. in %s",
                self.source,
                self.degenerate,
                self.examples["degenerate"],
            )
        if self.clipped or self.outside:
            log.warning(
                "%s: %d box(es) reach outside their image: clipped (%d with nothing left inside "
                "dropped), e.g. in %s",
                self.source,
                self.clipped + self.outside,
                self.outside,
                self.examples["clipped"],
            )


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 HWC (grayscale and RGBA files become 3-channel); ``DataError`` when the file
    cannot be decoded."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        raise DataError(f"{path}: image file not found; check the dataset root") from None
    if empty:
        raise DataError(
            f"{path}: the image file is empty (0 bytes); replace it or remove it "
            "from the annotations"
        )
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(
            f"{path}: cannot decode the image (corrupt or not an image); replace it "
            "or remove it from the annotations"
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_on_missing(on_missing: str) -> None:
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")


def drop_missing(records: list[DetectionRecord], on_missing: str, source: str):
    """Records whose image file exists: ``DataError`` naming the first missing file unless
    ``on_missing='skip'`` (then one warning line with the count)."""
    check_on_missing(on_missing)
    missing = [r for r in records if not r.file.is_file()]
    if not missing:
        return records, 0
    msg = f"{source}: {len(missing)} of {len(records)} images are missing, e.g. {missing[0].file}"
    if on_missing == "error" or len(missing) == len(records):
        raise DataError(msg + "; check the dataset root (or pass on_missing=skip)")
    log.warning("%s; skipping them", msg)
    gone = {id(r) for r in missing}
    return [r for r in records if id(r) not in gone], len(missing)


class DetectionDataset(SampleDataset):
    """Object-detection samples over ``DetectionRecord`` s (see the module docstring).

    ``augment``: options of ``DetectionTransform`` (scale_range, hflip, hsv_p, hue,
    saturation, value, jitter_p, brightness, contrast, min_visibility); ``augment=False``
    letterboxes training samples too. ``rng=None`` (evaluation) is always letterbox only.
    """

    kind = "detection"

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        class_names: Sequence[str],
        image_size: int = 640,
        augment: Mapping[str, Any] | bool | None = None,
        normalize: str = "imagenet",
        keep_uint8: bool = False,
    ):
        self.records = list(records)
        self.class_names = [str(c) for c in class_names]
        self.image_size = int(image_size)
        self.normalize = normalize
        self.keep_uint8 = bool(keep_uint8)
        to_tensor(np.zeros((1, 1, 3), np.uint8), normalize)  # validates the option now
        self.augment = augment is not False
        options = dict(augment) if isinstance(augment, Mapping) else {}
        self.transform = DetectionTransform(self.image_size, **options)
        self._warned_size: set[int] = set()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[Any]:
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def read_image(self, index: int) -> np.ndarray:
        return read_rgb(self.records[index].file)

    def boxes_in_pixels(self, index: int, height: int, width: int) -> np.ndarray:
        """The record's boxes in pixels of the decoded ``height x width`` file, within it."""
        rec = self.records[index]
        boxes = rec.boxes.astype(np.float64).reshape(-1, 4)
        if rec.normalized:
            return boxes * np.array([width, height, width, height], dtype=np.float64)
        if rec.size is None or tuple(rec.size) != (height, width):
            # no size in the annotations: clipped to the file here; a different size: warned
            if rec.size is not None and index not in self._warned_size:
                self._warned_size.add(index)
                log.warning(
                    "%s: annotations say %dx%d (h x w), the file is %dx%d; boxes are "
                    "clipped to the file",
                    rec.file,
                    *rec.size,
                    height,
                    width,
                )
            boxes = boxes.copy()
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return boxes

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        rec = self.records[index]
        img = self.read_image(index)
        height, width = img.shape[:2]
        boxes = self.boxes_in_pixels(index, height, width)
        image, boxes, keep, scale, pad = self.transform(img, boxes, rng if self.augment else None)
        sample = {
            "image": to_tensor(image, self.normalize),
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(rec.labels[keep].astype(np.int64)),
            "crowd": torch.from_numpy(rec.crowd[keep].astype(bool)),
            "difficult": torch.from_numpy(rec.difficult[keep].astype(bool)),
            "image_id": rec.image_id,
            "index": int(index),
            "orig_size": (int(height), int(width)),
            "scale": float(scale),
            "pad": (float(pad[0]), float(pad[1])),
        }
        if self.keep_uint8:
            sample["image_uint8"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return sample

    def to_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised image (or batch) back to uint8 for pictures."""
        return to_uint8(image, self.normalize)


def collate_detection(samples: Sequence[dict]) -> dict:
    """Stack detection samples (all of one letterboxed size) into a batch:

    ``image`` (B, 3, S, S); ``boxes`` (B, M_max, 4) padded with -1; ``labels`` (B, M_max) padded
    with -1; ``crowd`` / ``difficult`` (B, M_max) padded with False; ``num_boxes`` (B,) int64;
    ``orig_size`` (B, 2) int64; ``scale`` (B,) and ``pad`` (B, 2) float64; ``index`` (B,)
    int64; ``image_id`` a list; ``image_uint8`` (B, 3, S, S) when the samples have it.
    """
    if not samples:
        raise ValueError("collate_detection: empty batch")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"collate_detection: images of different sizes in one batch {shapes}; "
            "every sample must be letterboxed to the same image_size"
        )
    b = len(samples)
    m = max(len(s["boxes"]) for s in samples)
    boxes = torch.full((b, m, 4), -1.0, dtype=torch.float32)
    labels = torch.full((b, m), -1, dtype=torch.int64)
    crowd = torch.zeros((b, m), dtype=torch.bool)
    difficult = torch.zeros((b, m), dtype=torch.bool)
    num = torch.zeros(b, dtype=torch.int64)
    for i, s in enumerate(samples):
        k = len(s["boxes"])
        num[i] = k
        boxes[i, :k] = s["boxes"]
        labels[i, :k] = s["labels"]
        crowd[i, :k] = s["crowd"]
        difficult[i, :k] = s["difficult"]
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "boxes": boxes,
        "labels": labels,
        "crowd": crowd,
        "difficult": difficult,
        "num_boxes": num,
        "orig_size": torch.tensor([s["orig_size"] for s in samples], dtype=torch.int64),
        "scale": torch.tensor([s["scale"] for s in samples], dtype=torch.float64),
        "pad": torch.tensor([s["pad"] for s in samples], dtype=torch.float64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        "image_id": [s["image_id"] for s in samples],
    }
    if all("image_uint8" in s for s in samples):
        batch["image_uint8"] = torch.stack([s["image_uint8"] for s in samples])
    return batch
