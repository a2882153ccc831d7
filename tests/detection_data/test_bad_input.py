"""Bad input: one clear DataError line naming the file and what to do, or a counted skip with
ONE warning line."""

from __future__ import annotations

import logging

import pytest

from src.data.base import DataError
from src.data.detection import CocoDetection, VOCDetection, coco_splits, yolo_splits

from .conftest import coco_dict, make_coco, make_voc, voc_object, write_image, write_json


def _error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_root_and_annotation_files(tmp_path):
    _error(coco_splits, tmp_path / "nope", match="COCO root not found")
    (tmp_path / "images").mkdir()
    msg = _error(
        CocoDetection,
        tmp_path / "none.json",
        tmp_path / "images",
        match="annotation file not found",
    )
    assert "none.json" in msg
    _error(CocoDetection, tmp_path / "x.json", tmp_path / "nothing", match="image folder not found")
    _error(VOCDetection, tmp_path / "VOC2007", match="VOC root not found")
    root = make_voc(tmp_path / "VOC2007", {"a": (10, 10, [])})
    _error(VOCDetection, root, "test", match=r"test\.txt: VOC split file not found")
    (root / "Annotations" / "a.xml").unlink()
    _error(VOCDetection, root, "trainval", match=r"a\.xml: VOC annotation file not found")
    _error(yolo_splits, tmp_path / "data.yaml", match="data.yaml not found")


def test_empty_and_invalid_json(tmp_path):
    (tmp_path / "images").mkdir()
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert "empty.json" in _error(CocoDetection, empty, tmp_path / "images", match="is empty")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    _error(CocoDetection, bad, tmp_path / "images", match="not valid JSON")
    other = write_json(tmp_path / "other.json", {"foo": 1})
    _error(CocoDetection, other, tmp_path / "images", match="not a COCO instances file")


def test_unknown_category_and_image_ids(tmp_path):
    data = coco_dict()
    data["annotations"][2]["category_id"] = 55
    ann, images = make_coco(tmp_path, data)
    msg = _error(CocoDetection, ann, images, match="category_id 55")
    assert str(ann) in msg and "not in 'categories'" in msg
    data = coco_dict()
    data["annotations"][0]["image_id"] = 1234
    ann = write_json(tmp_path / "ids.json", data)
    _error(CocoDetection, ann, images, match="image_id 1234")


def test_missing_image_error_or_skip(tmp_path, caplog):
    ann, images = make_coco(tmp_path)
    (images / "b.png").unlink()
    msg = _error(CocoDetection, ann, images, match="1 of 4 images are missing")
    assert "b.png" in msg and "on_missing=skip" in msg
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(ann, images, image_size=32, on_missing="skip")
    assert ds.image_ids == [9, 11, 42] and ds.skipped_missing == 1
    assert len([r for r in caplog.records if "missing" in r.getMessage()]) == 1
    root = make_voc(tmp_path / "VOC", {"a": (10, 10, []), "b": (10, 10, [])})
    (root / "JPEGImages" / "a.jpg").unlink()
    _error(VOCDetection, root, match="1 of 2 images are missing")
    assert VOCDetection(root, on_missing="skip", image_size=16).image_ids == ["b"]


def test_corrupt_and_zero_byte_images(tmp_path):
    ann, images = make_coco(tmp_path)
    (images / "b.png").write_bytes(b"")
    (images / "c.png").write_bytes(b"\x89PNG this is not an image")
    ds = CocoDetection(ann, images, image_size=32)
    msg = _error(ds.load, 0, None, match=r"empty \(0 bytes\)")
    assert "b.png" in msg
    assert "c.png" in _error(ds.load, 1, None, match="cannot decode the image")


def test_degenerate_boxes_dropped_with_one_warning(tmp_path, caplog):
    data = coco_dict()
    data["annotations"] += [
        {"id": 20, "image_id": 7, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 21, "image_id": 7, "category_id": 2, "bbox": [5, 5, 10, -3], "iscrowd": 0},
        {"id": 22, "image_id": 9, "category_id": 2, "bbox": [5, 5, -1, -1], "iscrowd": 0},
    ]
    ann, images = make_coco(tmp_path, data)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(ann, images, image_size=32)
    lines = [r.getMessage() for r in caplog.records if "zero or negative" in r.getMessage()]
    assert len(lines) == 1 and "dropped 3 box(es)" in lines[0] and "b.png" in lines[0]
    assert [len(r.boxes) for r in ds.records] == [1, 0, 1, 3]


def test_boxes_outside_are_clipped_with_one_warning(tmp_path, caplog):
    data = coco_dict()
    data["annotations"] += [  # image 7 is 40 wide, 80 high
        {"id": 20, "image_id": 7, "category_id": 2, "bbox": [30, -5, 20, 20], "iscrowd": 0},
        {"id": 21, "image_id": 7, "category_id": 2, "bbox": [50, 5, 10, 10], "iscrowd": 0},
        {"id": 22, "image_id": 7, "category_id": 2, "bbox": [1, 1, 39.005, 2], "iscrowd": 0},
    ]
    ann, images = make_coco(tmp_path, data)
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(ann, images, image_size=32)
    lines = [r.getMessage() for r in caplog.records if "outside" in r.getMessage()]
    assert len(lines) == 1 and "2 box(es)" in lines[0] and "1 with nothing left" in lines[0]
    rec = ds.records[0]
    assert rec.boxes.tolist() == [[1, 2, 4, 6], [30, 0, 40, 15], [1, 1, 40, 3]]  # 39.005: rounding


def test_malformed_yolo_lines_name_file_and_line(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", 20, 20)
    (tmp_path / "labels").mkdir()
    label = tmp_path / "labels" / "a.txt"
    data = tmp_path / "data.yaml"
    data.write_text("train: images\nnames: [a, b]\n")
    for text, match in (
        ("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.2\n", r"a\.txt:2: expected 'class cx cy w h'"),
        ("0 0.5 x 0.1 0.1\n", r"a\.txt:1: expected numbers"),
        ("\n2 0.5 0.5 0.1 0.1\n", r"a\.txt:2: class id 2 is not an integer in 0\.\.1"),
        ("0.5 0.5 0.5 0.1 0.1\n", r"a\.txt:1: class id"),
    ):
        label.write_text(text)
        _error(yolo_splits, data, match=match)
    data.write_text("train: images\nnc: 3\nnames: [a, b]\n")
    _error(yolo_splits, data, match="nc=3 but 2 names")
    data.write_text("train: missing_folder\nnames: [a, b]\n")
    _error(yolo_splits, data, match="split entry 'missing_folder' not found")


def test_voc_unknown_class_and_bad_xml(tmp_path):
    root = make_voc(tmp_path / "VOC", {"a": (10, 10, [voc_object("unicorn", (1, 1, 5, 5))])})
    msg = _error(VOCDetection, root, match="'unicorn' is not one of")
    assert "a.xml" in msg
    (root / "Annotations" / "a.xml").write_text("<annotation><object>")
    _error(VOCDetection, root, match="not valid XML")


def test_file_size_differing_from_the_annotation_warns_once_and_clips(tmp_path, caplog):
    """a.png is annotated 60 x 100 (h x w) but the file is 30 x 50: the boxes are clipped to
    the file and one warning names the file and both sizes (per image, not per epoch)."""
    ann, images = make_coco(tmp_path)
    write_image(images / "a.png", 30, 50)
    ds = CocoDetection(ann, images, image_size=32)
    i = [r.image_id for r in ds.records].index(42)
    with caplog.at_level(logging.WARNING):
        boxes = ds.boxes_in_pixels(i, 30, 50)
        ds.boxes_in_pixels(i, 30, 50)
    lines = [r.getMessage() for r in caplog.records if "annotations say" in r.getMessage()]
    assert len(lines) == 1 and "a.png" in lines[0] and "60x100" in lines[0] and "30x50" in lines[0]
    want = ds.records[i].boxes.astype(float).copy()
    want[:, 0::2] = want[:, 0::2].clip(0, 50)
    want[:, 1::2] = want[:, 1::2].clip(0, 30)
    assert boxes.tolist() == want.tolist() and (boxes[:, 2] <= 50).all()
    assert (ds.records[i].boxes[:, 2] > 50).any()  # the check above clipped something
    sample = ds.load(i, None)  # and the sample loads
    assert sample["orig_size"] == (30, 50)
