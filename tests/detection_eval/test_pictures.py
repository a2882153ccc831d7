"""Detection pictures: W&B box overlays recorded in an offline run, and the drawn PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from src.logging import RunLogger
from src.logging.detections import (
    DetectionItem,
    draw_detections,
    save_detections_png,
    wandb_boxes,
)
from src.logging.wandb_logger import WandbLogger

NAMES = ["cat", "dog", "bird"]


def item(image=None, caption="val 0"):
    img = np.zeros((64, 96, 3), np.uint8) if image is None else image
    preds = {
        "boxes": np.array([[10.0, 20.0, 40.0, 50.0], [50.5, 5.0, 90.0, 30.0]]),
        "scores": np.array([0.875, 0.25]),
        "labels": np.array([1, 0]),
    }
    gt = {"boxes": np.array([[12.0, 22.0, 41.0, 52.0]]), "labels": np.array([1])}
    return DetectionItem(img, preds, gt, NAMES, caption)


def test_wandb_boxes_structure():
    b = wandb_boxes(item())
    p, g = b["predictions"], b["ground_truth"]
    assert p["class_labels"] == {0: "cat", 1: "dog", 2: "bird"} == g["class_labels"]
    first = p["box_data"][0]  # highest score first
    assert first == {
        "position": {"minX": 10.0, "minY": 20.0, "maxX": 40.0, "maxY": 50.0},
        "domain": "pixel",
        "class_id": 1,
        "box_caption": "dog 0.88",
        "scores": {"score": 0.875},
    }
    assert p["box_data"][1]["class_id"] == 0 and p["box_data"][1]["scores"] == {"score": 0.25}
    assert g["box_data"] == [
        {
            "position": {"minX": 12.0, "minY": 22.0, "maxX": 41.0, "maxY": 52.0},
            "domain": "pixel",
            "class_id": 1,
            "box_caption": "dog",
        }
    ]
    # score filter and cap; a label beyond class_names still gets a name
    it = item()
    it.predictions["labels"][1] = 7
    b = wandb_boxes(it, min_score=0.5)
    assert len(b["predictions"]["box_data"]) == 1
    assert len(wandb_boxes(it, max_boxes=1)["predictions"]["box_data"]) == 1
    assert wandb_boxes(it)["predictions"]["class_labels"][7] == "class_7"
    # no ground truth: predictions only; a plain tuple works
    assert set(wandb_boxes((it.image, it.predictions, None, NAMES))) == {"predictions"}
    with pytest.raises(ValueError, match="uint8 RGB"):
        wandb_boxes(item(image=np.zeros((8, 8), np.uint8)))


def test_drawn_png_has_box_pixels_on_the_box(tmp_path):
    it = item()
    only_pred = it._replace(ground_truth=None)
    pic = draw_detections(only_pred, min_score=0.5)  # the 0.875 dog box only
    assert pic.shape == it.image.shape and pic is not it.image
    assert it.image.max() == 0  # input untouched
    lit = pic.max(axis=2) > 0
    # edges of [10, 20, 40, 50] (thickness 1 at this size) are drawn ...
    assert lit[20, 10:41].all() and lit[50, 10:41].all()
    assert lit[20:51, 10].all() and lit[20:51, 40].all()
    # ... in the class colour, and nothing inside the box or where the 0.25 box would be
    assert not lit[21:50, 11:40].any()
    assert not lit[:, 45:].any()
    assert not lit[55:, :].any()
    from src.logging.detections import class_colour

    assert tuple(pic[50, 25]) == class_colour(1)
    # the label text sits above the box
    assert lit[:20, 10:60].any()
    # ground truth adds white edges at its own place
    with_gt = draw_detections(it, min_score=0.5)
    assert tuple(with_gt[52, 30]) == (255, 255, 255) and not lit[52, 30]
    # PNG on disk = the drawn array (RGB)
    path = save_detections_png(tmp_path / "pred" / "x.png", it, min_score=0.5)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), with_gt)


def test_wandb_offline_run_records_the_boxes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    backend = WandbLogger(mode="offline", num_images=2)
    logger = RunLogger(tmp_path, backend)
    logger.start({"x": 1}, "detections-test", None)
    rng = np.random.default_rng(0)

    def shifted(k):  # distinct pictures and boxes (W&B stores media by content hash)
        it = item(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), f"img {k}")
        it.predictions["boxes"] += k
        it.ground_truth["boxes"] += k
        return it

    logger.log_detections("val/detections", [shifted(0), shifted(1), shifted(2)], 1)
    # the Task path: visualize() -> log_images with detection items among plain pictures
    plain = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    logger.log_images({"val/mixed": [shifted(3)], "val/plain": [(plain, "plain")]}, 2)
    logger.finish({"done": 1})

    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    media = run / "files" / "media"
    box_files = sorted(media.rglob("*.boxes2D.json"))
    records = [json.loads(f.read_text()) for f in box_files]
    preds = [r for r in records if r["box_data"] and "scores" in r["box_data"][0]]
    gts = [r for r in records if r["box_data"] and "scores" not in r["box_data"][0]]
    # num_images=2 of the 3 items of val/detections, and the one of val/mixed
    assert len(preds) == 3 and len(gts) == 3, box_files
    firsts = sorted(r["box_data"][0]["position"]["minX"] for r in preds)
    assert firsts == [10.0, 11.0, 13.0]  # items 0, 1 and 3 (item 2 is past num_images)
    p0 = next(r for r in preds if r["box_data"][0]["position"]["minX"] == 10.0)
    assert p0["box_data"][0]["position"] == {"minX": 10.0, "minY": 20.0, "maxX": 40.0, "maxY": 50.0}
    assert p0["box_data"][0]["domain"] == "pixel"
    assert p0["box_data"][0]["scores"] == {"score": 0.875}
    assert p0["class_labels"] == {"0": "cat", "1": "dog", "2": "bird"}
    assert all(r["box_data"][0]["class_id"] == 1 for r in gts)
    data = next(run.glob("run-*.wandb")).read_bytes()
    assert b"val/detections" in data and b"boxes2D" in data and b"val/plain" in data
    # a wandb.Table of per-image predictions next to the overlays (not for plain pictures)
    assert b"val/detections_table" in data and b"val/plain_table" not in data
    assert list(media.rglob("*.table.json"))
    assert b'"dog"' in data  # class labels are in the logged image records
    assert len(list(media.rglob("*.png"))) == 4
