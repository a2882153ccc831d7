"""The synthetic generators write real COCO / VOC / YOLO files that the real readers (and
pycocotools) read back, with every case the issue asks for, deterministically."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch
from hydra.utils import instantiate
from pycocotools.coco import COCO

from src.data.detection import VOCDetection, coco_splits, collate_detection, yolo_splits
from src.data.synthetic_detection import (
    COCO_CATEGORY_IDS,
    SHAPES,
    _raster,
    ensure_synthetic_coco,
    ensure_synthetic_yolo,
    make_image,
)

from .conftest import SMALL


def test_synthetic_coco_reads_back(synthetic_coco_root):
    splits = coco_splits(synthetic_coco_root, image_size=128)
    train, val = splits["train"], splits["val"]
    assert (len(train), len(val)) == (SMALL["num_train"], SMALL["num_val"])
    assert train.class_names == list(SHAPES)
    assert train.label_to_category_id == list(COCO_CATEGORY_IDS)
    oracle = COCO(str(synthetic_coco_root / "annotations/instances_train2017.json"))
    assert sum(len(r.boxes) for r in train.records) == len(oracle.getAnnIds())
    assert sum(int(r.crowd.sum()) for r in train.records) == len(oracle.getAnnIds(iscrowd=True)) > 0
    assert any(len(r.boxes) == 0 for r in train.records)  # negatives
    gray = [r for r in train.records if cv2.imread(str(r.file), cv2.IMREAD_UNCHANGED).ndim == 2]
    assert gray  # grayscale files are read as 3 channels
    assert train.load(train.records.index(gray[0]), None)["image"].shape == (3, 128, 128)
    sizes = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] for r in train.records])
    assert sizes.min() < 12 and sizes.max() > 60  # many scales
    batch = collate_detection([train.load(i, np.random.default_rng(i)) for i in range(4)])
    assert batch["image"].shape == (4, 3, 128, 128)


def test_synthetic_voc_reads_back(synthetic_voc_root):
    voc = synthetic_voc_root / "VOCdevkit" / "VOC2007"
    train = VOCDetection(voc, "trainval", image_size=64, class_names=SHAPES)
    test = VOCDetection(voc, "test", image_size=64, class_names=SHAPES)
    assert (len(train), len(test)) == (SMALL["num_train"], SMALL["num_val"])
    assert not set(train.image_ids) & set(test.image_ids)
    parts = [VOCDetection(voc, s, image_size=64, class_names=SHAPES) for s in ("train", "val")]
    assert parts[0].image_ids + parts[1].image_ids == train.image_ids
    assert any(r.difficult.any() for r in train.records)
    assert any(len(r.boxes) == 0 for r in train.records)
    gt = train.voc_ground_truth()
    assert sum(len(g["boxes"]) for g in gt) == sum(len(r.boxes) for r in train.records)


def test_synthetic_boxes_bound_their_shapes():
    """Every whole (untruncated) shape: its box bounds its rasterised polygon within 1 px and
    its area is that polygon's pixel count; the same draw twice gives the same picture."""
    checked = 0
    for index in range(16):
        img, objects = make_image(5, 0, index, 128, crowd=True)
        h, w = img.shape[:2]
        for o in objects:
            if o["crowd"]:
                ys, xs = np.nonzero(o["mask"])
            elif not o["truncated"]:
                mask = np.zeros((h, w), np.uint8)
                cv2.fillPoly(mask, _raster(o["polygon"]), 1, cv2.LINE_8, 4)
                assert mask.sum() == o["area"]
                ys, xs = np.nonzero(mask)
            else:
                continue
            drawn = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # OpenCV also fills a pixel an edge only touches; vertices are on a 1/16 px grid
            np.testing.assert_allclose(o["box"], drawn, atol=1.0 + 1 / 16)
            checked += 1
        again, _ = make_image(5, 0, index, 128, crowd=True)
        assert np.array_equal(img, again)
    assert checked > 20


def test_generation_is_deterministic(tmp_path):
    a = ensure_synthetic_coco(tmp_path / "a", seed=4, num_train=3, num_val=2, source_size=64)
    b = ensure_synthetic_coco(tmp_path / "b", seed=4, num_train=3, num_val=2, source_size=64)
    c = ensure_synthetic_coco(tmp_path / "c", seed=5, num_train=3, num_val=2, source_size=64)
    ja, jb, jc = (
        json.loads((r / "annotations/instances_train2017.json").read_text()) for r in (a, b, c)
    )
    assert ja == jb and ja != jc
    for img in ja["images"]:
        assert (a / "train2017" / img["file_name"]).read_bytes() == (
            b / "train2017" / img["file_name"]
        ).read_bytes()
    assert ensure_synthetic_coco(a, seed=4, num_train=3, num_val=2, source_size=64) == a


def test_synthetic_yolo_reads_back(tmp_path):
    root = ensure_synthetic_yolo(tmp_path / "y", num_train=4, num_val=2, source_size=64)
    splits = yolo_splits(root / "data.yaml", image_size=64)
    assert (len(splits["train"]), len(splits["val"])) == (4, 2)
    assert splits["train"].class_names == list(SHAPES)
    s = splits["train"].load(0, np.random.default_rng(0))
    assert s["boxes"].dtype == torch.float32


def test_dataset_configs_instantiate(tmp_path):
    from tests.test_config_compose import _compose

    for name, kind in (("synthetic_coco", "CocoDetection"), ("synthetic_voc", "VOCDetection")):
        cfg = _compose(
            f"dataset={name}",
            f"paths.data_dir={tmp_path}",
            "dataset.num_train=3",
            "dataset.num_val=2",
            "dataset.source_size=64",
            "dataset.image_size=32",
            "dataset.augment.hflip=0.0",
        )
        assert isinstance(cfg.dataset.image_size, int)
        splits = instantiate(cfg.dataset)
        assert type(splits["train"]).__name__ == kind and len(splits["val"]) == 2
        assert splits["train"].image_size == 32
        assert splits["train"].transform.compose.transforms[3].p == 0.0
        assert "s0_3x2_64px" in str(cfg.dataset.root)
