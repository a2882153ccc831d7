"""COCO / VOC / YOLO readers against oracles: pycocotools on a hand-made json, hand-written VOC
xml, YOLO lines with known boxes."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools.coco import COCO

from src.data.detection import (
    VOC_CLASSES,
    CocoDetection,
    VOCDetection,
    unletterbox_boxes,
    yolo_splits,
)

from .conftest import make_coco, make_voc, voc_object, write_image


def test_coco_matches_pycocotools(tmp_path):
    ann, images = make_coco(tmp_path)
    ds = CocoDetection(ann, images, image_size=64)
    oracle = COCO(str(ann))
    cat_ids = sorted(oracle.getCatIds())
    assert ds.label_to_category_id == cat_ids == [2, 7, 90]
    assert ds.class_names == [oracle.cats[c]["name"] for c in cat_ids] == ["bike", "train", "zebra"]
    assert ds.num_classes == 3
    assert ds.image_ids == sorted(oracle.getImgIds()) == [7, 9, 11, 42]  # negatives kept
    for i, img_id in enumerate(ds.image_ids):
        anns = oracle.loadAnns(oracle.getAnnIds(imgIds=[img_id]))
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        want = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]]
        rec = ds.records[i]
        assert rec.boxes.dtype == np.float64
        np.testing.assert_array_equal(rec.boxes, want)
        assert [ds.label_to_category_id[k] for k in rec.labels] == [a["category_id"] for a in anns]
        assert rec.crowd.tolist() == [bool(a["iscrowd"]) for a in anns]
        assert rec.size == (oracle.imgs[img_id]["height"], oracle.imgs[img_id]["width"])
        # samples: letterboxed pixels that map back to the json's boxes
        s = ds.load(i, None)
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype.is_floating_point
        assert s["image_id"] == img_id and s["orig_size"] == rec.size
        assert s["labels"].dtype == torch.int64 and s["crowd"].dtype == torch.bool
        assert s["boxes"].dtype == torch.float32 and s["boxes"].shape == (len(anns), 4)
        back = unletterbox_boxes(s["boxes"].double().numpy(), s["scale"], s["pad"])
        np.testing.assert_allclose(back, want, atol=1e-4)
    assert ds.coco.getAnnIds() == oracle.getAnnIds()


def test_coco_letterbox_values(tmp_path):
    ann, images = make_coco(tmp_path)
    s = CocoDetection(ann, images, image_size=50).load(3, None)  # image 42: 60 x 100
    assert s["scale"] == 0.5 and s["pad"] == (0.0, 10.0)  # 30 x 50 centred: 10 rows above
    np.testing.assert_allclose(
        s["boxes"][0].numpy(), [10.25 * 0.5, 5.5 * 0.5 + 10, 30.375 * 0.5, 35.5 * 0.5 + 10]
    )
    assert s["labels"].tolist() == [2, 0, 1] and s["crowd"].tolist() == [False, True, False]


def test_coco_skip_empty_drops_images_without_plain_boxes(tmp_path):
    ann, images = make_coco(tmp_path)
    ds = CocoDetection(ann, images, image_size=32, skip_empty=True)
    assert ds.image_ids == [7, 42]  # 9 has nothing, 11 only a crowd region


def test_voc_boxes_are_one_based_minus_one(tmp_path):
    root = make_voc(
        tmp_path / "VOC2007",
        {
            "000005": (
                100,
                120,
                [
                    voc_object("chair", (1, 2, 50, 60)),
                    voc_object("dog", (48.5, 10, 120, 100), difficult=1),
                ],
            ),
            "000007": (40, 30, [voc_object("person", (3, 4, 10, 20), difficult=None)]),
            "000009": (40, 30, []),
        },
    )
    ds = VOCDetection(root, "trainval", image_size=64)
    assert ds.class_names == list(VOC_CLASSES) and ds.num_classes == 20
    assert ds.image_ids == ["000005", "000007", "000009"]
    np.testing.assert_array_equal(ds.records[0].boxes, [[0, 1, 49, 59], [47.5, 9, 119, 99]])
    assert ds.records[0].labels.tolist() == [VOC_CLASSES.index("chair"), VOC_CLASSES.index("dog")]
    assert ds.records[0].difficult.tolist() == [False, True]
    assert ds.records[1].difficult.tolist() == [False]  # a missing tag means 0
    assert len(ds.records[2].boxes) == 0
    gt = ds.voc_ground_truth()
    assert [g["image_id"] for g in gt] == ds.image_ids
    np.testing.assert_array_equal(gt[1]["boxes"], [[2, 3, 9, 19]])
    assert gt[0]["difficult"].tolist() == [False, True]
    s = ds.load(0, None)
    back = unletterbox_boxes(s["boxes"].double().numpy(), s["scale"], s["pad"])
    np.testing.assert_allclose(back, ds.records[0].boxes, atol=1e-4)
    assert s["difficult"].tolist() == [False, True]


def test_voc_07_plus_12_is_a_list_of_roots(tmp_path):
    v07 = make_voc(tmp_path / "VOC2007", {"000001": (20, 20, [voc_object("cat", (1, 1, 10, 10))])})
    v12 = make_voc(
        tmp_path / "VOC2012",
        {
            "2008_000002": (20, 20, [voc_object("bus", (2, 2, 12, 12))]),
            "2008_000003": (20, 20, [voc_object("cow", (3, 3, 13, 13))]),
        },
    )
    ds = VOCDetection([v07, v12], "trainval", image_size=32)
    assert ds.image_ids == ["000001", "2008_000002", "2008_000003"]
    assert [int(r.labels[0]) for r in ds.records] == [
        VOC_CLASSES.index(c) for c in ("cat", "bus", "cow")
    ]
    assert ds.records[1].file == v12 / "JPEGImages" / "2008_000002.jpg"


def test_voc_custom_classes(tmp_path):
    root = make_voc(tmp_path / "V", {"a": (20, 20, [voc_object("star", (1, 1, 5, 5))])})
    ds = VOCDetection(root, "trainval", image_size=16, class_names=["ellipse", "star"])
    assert ds.records[0].labels.tolist() == [1]


def _yolo_tree(root):
    write_image(root / "images" / "train" / "a.jpg", 50, 100)
    write_image(root / "images" / "train" / "b.jpg", 40, 40)  # no label file: a negative
    write_image(root / "images" / "val" / "c.jpg", 80, 60)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n\n2 0.25 0.1 0.5 0.2\n")
    (root / "labels" / "val" / "c.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    (root / "val.txt").write_text("images/val/c.jpg\n")
    data = root / "data.yaml"
    data.write_text(
        "path: .\ntrain: images/train\nval: val.txt\nnc: 3\n"
        "names: {0: ellipse, 1: square, 2: star}\n"
    )
    return data


def test_yolo_known_boxes(tmp_path):
    splits = yolo_splits(_yolo_tree(tmp_path), image_size=100)
    train, val = splits["train"], splits["val"]
    assert train.class_names == ["ellipse", "square", "star"]
    assert [r.file.name for r in train.records] == ["a.jpg", "b.jpg"]
    assert train.image_ids[0] == str(tmp_path / "images" / "train" / "a.jpg")
    a = train.load(0, None)  # 50 x 100 at scale 1, 25 rows of padding above
    assert a["scale"] == 1.0 and a["pad"] == (0.0, 25.0)
    want = np.array([[40, 15, 60, 35], [0, 0, 50, 10]], np.float64)
    np.testing.assert_allclose(
        unletterbox_boxes(a["boxes"].double().numpy(), 1.0, a["pad"]), want, atol=1e-4
    )
    assert a["labels"].tolist() == [0, 2]
    assert len(train.load(1, None)["boxes"]) == 0
    c = val.load(0, None)
    np.testing.assert_allclose(
        unletterbox_boxes(c["boxes"].double().numpy(), c["scale"], c["pad"]),
        [[0, 0, 60, 80]],
        atol=1e-4,
    )
