"""Reader of the official CUB-200-2011 layout.

    root/images/<class dir>/<file>.jpg
    root/images.txt               <image id> <path relative to images/>
    root/image_class_labels.txt   <image id> <class id>
    root/train_test_split.txt     <image id> <1 = train, 0 = test>
    root/classes.txt              <class id> <class name, e.g. 001.Black_footed_Albatross>
    root/bounding_boxes.txt       <image id> <x> <y> <width> <height>

Ids are 1-based; labels returned are 0-based. Samples are
``{"image": float32 CHW, "label": int64, "index": int}``; with ``uint8_images``
(``dataset.uint8_images``, the default of ``build_cub``) ``image`` is the uint8 RGB crop and
augmented training samples add ``"jitter"`` (2,) float32 (brightness, saturation factors, NaN
= not applied): the Task finishes them on the device (``src.data.transforms.normalize_batch``,
a quarter of the bytes through the loader and the host-to-device copy). Every user-fixable
problem raises ``src.data.base.DataError`` with one line naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from src.data.base import DataError, SampleDataset
from src.data.transforms import ClassificationTransform

CUB_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "classes.txt",
    "bounding_boxes.txt",
)
HOW_TO_GET = (
    "download CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vjz87 and extract it "
    "there (or set dataset.root / paths.data_dir), or run with dataset=synthetic_cub for a "
    "quick run"
)


@dataclass
class CUBIndex:
    """The parsed metadata, one row per image in ``images.txt`` order."""

    root: Path
    image_ids: list[int]
    paths: list[str]  # relative to root/images
    labels: np.ndarray  # int64, 0-based
    is_train: np.ndarray  # bool
    boxes: np.ndarray  # float32 (N, 4) x, y, width, height
    class_names: list[str]  # raw names from classes.txt, index = label

    def split(self, name: str) -> np.ndarray:
        """Row positions of ``train`` or ``test`` (alias ``val``) images."""
        if name == "train":
            return np.flatnonzero(self.is_train)
        if name in ("test", "val"):
            return np.flatnonzero(~self.is_train)
        raise ValueError(f"CUB split must be train, test or val, got {name!r}")


def pretty_class_name(raw: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross``."""
    head, dot, tail = raw.partition(".")
    name = tail if dot and head.isdigit() else raw
    return name.replace("_", " ")


def _read_table(path: Path, columns: int) -> list[tuple[int, list[str]]]:
    """Rows ``<id> <values...>``; blank lines skipped; a malformed line names file and line."""
    if not path.is_file():
        raise DataError(f"CUB-200-2011: missing {path}; {HOW_TO_GET}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=columns)
            try:
                if len(parts) != columns + 1:
                    raise ValueError
                rows.append((int(parts[0]), [p.strip() for p in parts[1:]]))
            except ValueError:
                raise DataError(
                    f"CUB-200-2011: {path} line {number}: expected an integer id and "
                    f"{columns} value(s), got {line.strip()!r}"
                ) from None
    return rows


def read_cub(root: str | Path) -> CUBIndex:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"CUB-200-2011 not found: {root} is not a directory; {HOW_TO_GET}")
    for name in CUB_FILES:
        if not (root / name).is_file():
            raise DataError(f"CUB-200-2011: missing {root / name}; {HOW_TO_GET}")
    if not (root / "images").is_dir():
        raise DataError(f"CUB-200-2011: missing {root / 'images'}/; {HOW_TO_GET}")

    classes_path = root / "classes.txt"
    classes = _read_table(classes_path, 1)
    class_ids = [cid for cid, _ in classes]
    if sorted(class_ids) != list(range(1, len(classes) + 1)):
        raise DataError(f"CUB-200-2011: {classes_path}: class ids must be 1..N without gaps")
    class_names = [""] * len(classes)
    for cid, (name,) in classes:
        class_names[cid - 1] = name

    images = _read_table(root / "images.txt", 1)
    if not images:
        raise DataError(f"CUB-200-2011: {root / 'images.txt'} lists no images")
    image_ids = [iid for iid, _ in images]
    if len(set(image_ids)) != len(image_ids):
        raise DataError(f"CUB-200-2011: {root / 'images.txt'}: duplicate image ids")

    def by_id(name: str, columns: int) -> dict[int, list[str]]:
        table = dict(_read_table(root / name, columns))
        missing = [i for i in image_ids if i not in table]
        if missing:
            raise DataError(
                f"CUB-200-2011: {root / name} has no row for image id {missing[0]} "
                f"({len(missing)} missing); the files do not belong together"
            )
        return table

    label_rows = by_id("image_class_labels.txt", 1)
    split_rows = by_id("train_test_split.txt", 1)
    box_rows = by_id("bounding_boxes.txt", 4)
    labels, is_train, boxes = [], [], []
    for iid in image_ids:
        try:
            label = int(label_rows[iid][0])
            split = int(split_rows[iid][0])
            box = [float(v) for v in box_rows[iid]]
        except ValueError:
            raise DataError(
                f"CUB-200-2011: non-numeric value for image id {iid} in {root}"
            ) from None
        if not 1 <= label <= len(class_names):
            raise DataError(
                f"CUB-200-2011: {root / 'image_class_labels.txt'}: image id {iid} has class "
                f"{label}, outside 1..{len(class_names)} of classes.txt"
            )
        if split not in (0, 1):
            raise DataError(
                f"CUB-200-2011: {root / 'train_test_split.txt'}: image id {iid} has {split}, "
                "expected 1 (train) or 0 (test)"
            )
        labels.append(label - 1)
        is_train.append(bool(split))
        boxes.append(box)
    return CUBIndex(
        root=root,
        image_ids=image_ids,
        paths=[path for _, (path,) in images],
        labels=np.asarray(labels, dtype=np.int64),
        is_train=np.asarray(is_train, dtype=bool),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        class_names=class_names,
    )


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB (grayscale, palette, CMYK converted); DataError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error} (corrupt or not an image)") from None


class CUBDataset(SampleDataset):
    """One split of CUB-200-2011. ``load(i, rng)``: training transform when ``rng`` is given
    and ``augment`` is on, else the deterministic evaluation transform."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int | Sequence[int] = 448,
        augment: bool | None = None,
        index: CUBIndex | None = None,
        uint8_images: bool = False,
    ):
        self.meta = index if index is not None else read_cub(root)
        self.uint8_images = bool(uint8_images)
        self.split = split
        self.rows = self.meta.split(split)
        self.augment = (split == "train") if augment is None else bool(augment)
        self.transform = ClassificationTransform(image_size)

    @property
    def num_classes(self) -> int:
        return len(self.meta.class_names)

    @property
    def class_names(self) -> list[str]:
        return [pretty_class_name(name) for name in self.meta.class_names]

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, index: int) -> Path:
        return self.meta.root / "images" / self.meta.paths[self.rows[index]]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The evaluation transform, for ``predict`` on arbitrary images (uint8 CHW with
        ``uint8_images``: ``normalize_batch`` finishes it)."""
        return (
            self.transform.uint8(image, None)[0]
            if self.uint8_images
            else self.transform(image, None)
        )

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        row = self.rows[index]
        image = open_rgb(self.image_path(index))
        rng = rng if self.augment else None
        sample = {"label": torch.tensor(self.meta.labels[row]), "index": int(index)}
        if not self.uint8_images:
            return {"image": self.transform(image, rng), **sample}
        image, jitter = self.transform.uint8(image, rng)
        if jitter is None:
            return {"image": image, **sample}
        return {"image": image, **sample, "jitter": jitter}


def build_cub(
    root: str | Path,
    image_size: int | Sequence[int] = 448,
    num_classes: int | None = None,
    uint8_images: bool = True,
) -> dict[str, CUBDataset]:
    """``{"train": ..., "val": ...}`` (val = the official test split). ``uint8_images``
    (``dataset.uint8_images``, default true): uint8 samples finished on the device by the Task
    (``false``: float32 normalised samples, the host path)."""
    index = read_cub(root)
    if num_classes is not None and int(num_classes) != len(index.class_names):
        raise DataError(
            f"CUB-200-2011: dataset.num_classes={num_classes} but {index.root / 'classes.txt'} "
            f"lists {len(index.class_names)} classes; fix dataset.num_classes"
        )
    train = CUBDataset(root, "train", image_size, index=index, uint8_images=uint8_images)
    val = CUBDataset(root, "val", image_size, index=index, uint8_images=uint8_images)
    for name, ds in (("train", train), ("test", val)):
        if len(ds) == 0:
            raise DataError(
                f"CUB-200-2011: {index.root / 'train_test_split.txt'} has no {name} images"
            )
    return {"train": train, "val": val}


build_cub.kind = "classification"  # the dataset kind Tasks declare in `accepts`
