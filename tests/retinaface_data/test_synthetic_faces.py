"""Synthetic WIDER FACE: written in the real formats, deterministic, read by the real readers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src.data.base import DataError
from src.data.synthetic_faces import (
    MARKER,
    draw_face,
    ensure_synthetic_faces,
    make_image,
    synthetic_faces_splits,
)
from src.data.widerface import collate_faces, parse_retinaface_labels, parse_wider_val_gt
from src.metrics.widerface import evaluate_widerface, load_widerface_gt
from tests.retinaface_data import widerface_reference as ref

SMALL = {"seed": 3, "num_train": 24, "num_val": 30, "image_size": 128}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sf") / "synthetic_faces"
    return ensure_synthetic_faces(root, **SMALL)


def test_layout_and_formats(small_root):
    for rel in (
        "train/label.txt",
        "val/label.txt",
        "wider_face_split/wider_face_val_bbx_gt.txt",
        "ground_truth/wider_face_val.mat",
        "ground_truth/wider_easy_val.mat",
        "ground_truth/wider_medium_val.mat",
        "ground_truth/wider_hard_val.mat",
        MARKER,
    ):
        assert (small_root / rel).is_file(), rel
    train = parse_retinaface_labels(small_root / "train/label.txt")
    val = parse_wider_val_gt(small_root / "wider_face_split/wider_face_val_bbx_gt.txt")
    assert len(train) == 24 and len(val) == 30
    assert any(len(r.boxes) == 0 for r in val)  # images without faces, "0" + zeros line
    assert any(len(r.boxes) == 0 for r in train)
    labels = np.concatenate([r.labels for r in train])
    assert (labels == 1).any() and (labels == -1).any()  # some faces without landmarks
    sides = np.concatenate([r.boxes[:, 2] - r.boxes[:, 0] for r in train + val])
    assert sides.min() < 16 and sides.max() > 48  # many scales
    text = (small_root / "wider_face_split/wider_face_val_bbx_gt.txt").read_text()
    assert "\n0\n0 0 0 0 0 0 0 0 0 0 \n" in text


def test_idempotent_and_regenerated_when_incomplete_or_changed(small_root, tmp_path):
    marker = small_root / MARKER
    stamp = marker.stat().st_mtime_ns
    label = (small_root / "train/label.txt").read_text()
    assert ensure_synthetic_faces(small_root, **SMALL) == small_root
    assert marker.stat().st_mtime_ns == stamp  # nothing rewritten
    # same seed elsewhere -> identical labels and image bytes
    other = ensure_synthetic_faces(tmp_path / "copy", **SMALL)
    assert (other / "train/label.txt").read_text() == label
    img = "train/images/0--Synthetic_Portrait/0_Synthetic_Portrait_train_0.jpg"
    assert (other / img).read_bytes() == (small_root / img).read_bytes()
    # an interrupted generation (no marker) is redone; so is one with other parameters
    (other / MARKER).unlink()
    (other / "train/label.txt").write_text("garbage")
    ensure_synthetic_faces(other, **SMALL)
    assert (other / "train/label.txt").read_text() == label
    ensure_synthetic_faces(other, **{**SMALL, "num_train": 5})
    assert len(parse_retinaface_labels(other / "train/label.txt")) == 5
    assert json.loads((other / MARKER).read_text())["num_train"] == 5
    assert not list(tmp_path.glob(".copy.tmp-*"))


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="not a synthetic_faces directory"):
        ensure_synthetic_faces(tmp_path, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_landmarks_are_where_the_features_are_drawn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        img = np.full((120, 120, 3), 255, np.uint8)
        w = int(rng.integers(20, 80))
        box = np.array([10, 12, w, int(w * 1.2)])
        lm = draw_face(img, box, rng)
        assert (lm * 16 == np.round(lm * 16)).all()  # exact 1/16 px, as drawn with shift=4
        for e in lm[:2]:  # the eye pixel under the landmark is the dark eye colour
            px = img[int(round(e[1])), int(round(e[0]))].astype(int)
            assert px.max() < 80, px
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left = smaller x
        inside = (lm >= box[:2]) & (lm <= box[:2] + box[2:])
        assert inside.all()


def test_make_image_is_deterministic_and_independent_of_count():
    a = make_image(1, 0, 7, 96)
    b = make_image(1, 0, 7, 96)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = make_image(2, 0, 7, 96)
    assert not np.array_equal(a[0], c[0])


def test_splits_factory_gt_and_evaluator(small_root):
    splits = synthetic_faces_splits(small_root.parent / "synthetic_faces", **SMALL, train_size=64)
    tr, va = splits["train"], splits["val"]
    assert len(tr) == 24 and len(va) == 30
    batch = collate_faces([tr.load(i, np.random.default_rng([0, 0, i])) for i in range(4)])
    assert batch["image"].shape == (4, 3, 64, 64)
    # perfect detections score AP 1 in every setting on the written .mat files
    gt = va.widerface_gt()
    assert gt is load_widerface_gt(small_root / "ground_truth")
    preds = {}
    for rec in va.records:
        xywh = rec.xywh()
        preds[(rec.event, rec.name)] = np.c_[xywh, np.linspace(0.9, 0.5, len(xywh))]
    aps = evaluate_widerface(preds, gt)
    assert aps == pytest.approx({"easy": 1.0, "medium": 1.0, "hard": 1.0}, abs=1e-12)
    # and jittered ones agree with the reference formulation on the same files
    arrays = ref.load_mat_gt(str(small_root / "ground_truth"))
    noisy = ref.synthetic_predictions(*arrays[:3], seed=4)
    ours = evaluate_widerface(noisy, gt)
    assert ours == ref.reference_evaluation(ref.nested(noisy), *arrays)
    assert 0 < ours["hard"] < 1
