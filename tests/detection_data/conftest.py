"""Shared helpers of the detection data tests: tiny files written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from src.data.synthetic_detection import ensure_synthetic_coco, ensure_synthetic_voc


def write_image(path: Path, h: int, w: int, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def coco_dict() -> dict:
    """3 categories with gapped ids, 4 images (one without annotations, one with only a crowd)."""
    return {
        "images": [
            {"id": 42, "file_name": "a.png", "height": 60, "width": 100},
            {"id": 7, "file_name": "b.png", "height": 80, "width": 40},
            {"id": 9, "file_name": "c.png", "height": 50, "width": 50},
            {"id": 11, "file_name": "d.png", "height": 50, "width": 50},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 42,
                "category_id": 90,
                "bbox": [10.25, 5.5, 20.125, 30.0],
                "area": 600.0,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 42,
                "category_id": 2,
                "bbox": [50.0, 10.0, 40.0, 40.0],
                "area": 1600.0,
                "iscrowd": 1,
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 7,
                "bbox": [1.0, 2.0, 3.0, 4.0],
                "area": 12.0,
                "iscrowd": 0,
            },
            {
                "id": 4,
                "image_id": 42,
                "category_id": 7,
                "bbox": [0.0, 0.0, 100.0, 60.0],
                "area": 6000.0,
                "iscrowd": 0,
            },
            {
                "id": 5,
                "image_id": 11,
                "category_id": 2,
                "bbox": [5.0, 5.0, 10.0, 10.0],
                "area": 100.0,
                "iscrowd": 1,
            },
        ],
        "categories": [
            {"id": 90, "name": "zebra"},
            {"id": 2, "name": "bike"},
            {"id": 7, "name": "train"},
        ],
    }


def make_coco(root: Path, data: dict | None = None) -> tuple[Path, Path]:
    data = coco_dict() if data is None else data
    for img in data["images"]:
        write_image(root / "images" / img["file_name"], img["height"], img["width"])
    return write_json(root / "instances.json", data), root / "images"


VOC_XML = """<annotation>
  <filename>{stem}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>
"""


def voc_object(name: str, box, difficult: int | None = 0) -> str:
    tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    x1, y1, x2, y2 = box
    return (
        f"  <object><name>{name}</name>{tag}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>\n"
    )


def make_voc(root: Path, images: dict[str, tuple[int, int, list[str]]], split: str = "trainval"):
    """``images``: stem -> (h, w, object xml strings)."""
    for stem, (h, w, objects) in images.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg", h, w)
        xml = root / "Annotations" / f"{stem}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(VOC_XML.format(stem=stem, w=w, h=h, objects="".join(objects)))
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (main / f"{split}.txt").write_text("".join(f"{s}\n" for s in images))
    return root


SMALL = dict(seed=0, num_train=24, num_val=8, source_size=128)


@pytest.fixture(scope="session")
def synthetic_coco_root(data_dir) -> Path:
    return ensure_synthetic_coco(data_dir / "det_coco", **SMALL)


@pytest.fixture(scope="session")
def synthetic_voc_root(data_dir) -> Path:
    return ensure_synthetic_voc(data_dir / "det_voc", **SMALL)
