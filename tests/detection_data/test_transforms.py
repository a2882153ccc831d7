"""Augmentation keeps boxes on the pixels they label, is a pure function of (seed, epoch,
index) through the engine's loader, and turns a crop that removes every box into a negative."""

from __future__ import annotations

import numpy as np
import torch

from src.data.detection import CocoDetection, DetectionTransform, collate_detection, letterbox
from src.data.detection.transforms import to_tensor, to_uint8, unletterbox_boxes
from src.engine.data import make_loader
from src.engine.seed import sample_rng

RECT = (30, 20, 110, 70)  # x1 y1 x2 y2 of the white rectangle on a 120 x 200 black image


def _picture() -> np.ndarray:
    img = np.zeros((120, 200, 3), np.uint8)
    x1, y1, x2, y2 = RECT
    img[y1:y2, x1:x2] = 255
    return img


def _drawn_bounds(img: np.ndarray):
    ys, xs = np.nonzero(img.min(axis=2) > 180)  # white after colour jitter; grey pad is 114
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_letterbox_maps_boxes_exactly_and_back():
    rng = np.random.default_rng(0)
    img = np.zeros((37, 91, 3), np.uint8)
    boxes = np.sort(rng.uniform(0, 37, (20, 4)), axis=1)[:, [0, 1, 2, 3]]
    canvas, out, scale, pad = letterbox(img, boxes, 64)
    assert canvas.shape == (64, 64, 3) and scale == 64 / 91
    assert pad == (0, (64 - round(37 * scale)) // 2)
    np.testing.assert_allclose(out, boxes * scale + [pad[0], pad[1]] * 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(unletterbox_boxes(out, scale, pad), boxes, rtol=0, atol=1e-12)
    assert (canvas[: pad[1]] == 114).all()  # padding rows above the picture are grey


def test_augmented_boxes_bound_the_drawn_pixels():
    t = DetectionTransform(128, scale_range=(0.4, 2.0), hsv_p=1.0, jitter_p=1.0)
    img, box = _picture(), np.array([RECT], np.float64)
    kept = dropped = flipped = 0
    for seed in range(40):
        out, boxes, keep, scale, pad = t(img, box, np.random.default_rng(seed))
        assert out.shape == (128, 128, 3) and out.dtype == np.uint8 and np.isnan(scale)
        drawn = _drawn_bounds(out)
        if len(boxes) == 0:
            dropped += 1  # under min_visibility: little or nothing of the rectangle is left
            assert drawn is None or (drawn[2:] - drawn[:2]).prod() < 0.5 * 128 * 128
            continue
        kept += 1
        assert keep.tolist() == [0]
        assert drawn is not None
        np.testing.assert_allclose(boxes[0], drawn, atol=1.0)
        flipped += (boxes[0, 0] + boxes[0, 2]) / 2 > 64
    assert kept >= 20 and flipped >= 3  # the checks ran on many different scales / crops / flips
    # evaluation: the letterbox alone, same check
    out, boxes, keep, scale, pad = t(img, box, None)
    np.testing.assert_allclose(boxes[0], _drawn_bounds(out), atol=1.0)
    assert scale == 128 / 200 and pad == (0, (128 - 77) // 2)


def test_crop_removing_every_box_gives_a_negative():
    t = DetectionTransform(64, scale_range=(4.0, 4.0), min_visibility=0.5)
    img = np.zeros((100, 100, 3), np.uint8)
    box = np.array([[0, 0, 6, 6]], np.float64)
    negatives = 0
    for seed in range(30):
        out, boxes, keep, _, _ = t(img, box, np.random.default_rng(seed))
        assert out.shape == (64, 64, 3) and boxes.shape[1] == 4 and len(keep) == len(boxes)
        negatives += len(boxes) == 0
    assert negatives > 0
    out, boxes, keep, _, _ = t(img, np.zeros((0, 4)), np.random.default_rng(0))  # no box at all
    assert boxes.shape == (0, 4) and keep.shape == (0,)


def test_normalisation_round_trip():
    img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for mode in ("imagenet", "unit", "none"):
        x = to_tensor(img, mode)
        assert x.shape == (3, 5, 7) and x.dtype == torch.float32
        assert torch.equal(to_uint8(x, mode), torch.from_numpy(img.transpose(2, 0, 1)))


def _loader(ds, workers, epoch=0):
    loader = make_loader(
        ds,
        train=True,
        batch_size=4,
        seed=3,
        collate=collate_detection,
        num_workers=workers,
        rank=0,
        world_size=1,
        limit=2,
    )
    loader.sampler.set_epoch(epoch)
    return [b for b in loader]


def _same(a, b) -> bool:
    return all(
        torch.equal(x["image"], y["image"])
        and torch.equal(x["boxes"], y["boxes"])
        and torch.equal(x["labels"], y["labels"])
        for x, y in zip(a, b)
    )


def test_same_seed_epoch_index_gives_the_same_sample(synthetic_coco_root):
    root = synthetic_coco_root
    ds = CocoDetection(
        root / "annotations/instances_train2017.json",
        root / "train2017",
        image_size=96,
        augment={"jitter_p": 1.0},
    )
    a = ds.load(5, sample_rng(3, 1, 5))
    b = ds.load(5, sample_rng(3, 1, 5))
    c = ds.load(5, sample_rng(3, 2, 5))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(a["image"], c["image"])
    # the engine's loader: twice, in the main process and in a worker, then another epoch
    first = _loader(ds, 0)
    assert len(first) == 2
    assert _same(first, _loader(ds, 0))
    assert _same(first, _loader(ds, 1))
    assert not _same(first, _loader(ds, 0, epoch=1))
