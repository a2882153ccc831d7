"""WIDER FACE readers, dataset and collate on small hand-written files."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from src.data.base import DataError
from src.data.widerface import (
    WiderFaceDataset,
    collate_faces,
    parse_retinaface_labels,
    parse_wider_val_gt,
    widerface_splits,
)

LM = "13.0 24.0 0.0 27.0 24.5 0.0 20.0 31.0 1.0 15.0 38.0 0.0 25.0 38.0 0.0"


def _write_images(root, paths, size=(60, 80)):
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        img = np.full((*size, 3), 90, np.uint8)
        img[:, : size[1] // 2] = 200
        cv2.imwrite(str(f), img)


def test_retinaface_labels(tmp_path, caplog):
    f = tmp_path / "label.txt"
    f.write_text(
        "# ev/a.jpg\n"
        f"10 20 20 25 {LM} 0.9\n"
        "30 5 10 12 " + " ".join(["-1.0"] * 16) + "\n"
        "1 2 3 4\n"
        "5 5 0 9 " + " ".join(["-1.0"] * 16) + "\n"  # degenerate: dropped, counted
        "# ev/empty.jpg\n"
        "# ev/b.jpg\n"
        f"0 0 8 8 {LM} 0.5\n"
    )
    with caplog.at_level(logging.WARNING):
        recs = parse_retinaface_labels(f)
    assert "skipped 1 degenerate" in caplog.text
    assert [r.path for r in recs] == ["ev/a.jpg", "ev/empty.jpg", "ev/b.jpg"]
    a = recs[0]
    np.testing.assert_array_equal(a.boxes, [[10, 20, 30, 45], [30, 5, 40, 17], [1, 2, 4, 6]])
    np.testing.assert_array_equal(a.labels, [1, -1, -1])
    np.testing.assert_array_equal(a.landmarks[0], [13, 24, 27, 24.5, 20, 31, 15, 38, 25, 38])
    assert (a.landmarks[1:] == -1).all()
    assert recs[1].boxes.shape == (0, 4) and recs[1].labels.shape == (0,)
    assert (a.event, a.name) == ("ev", "a")
    np.testing.assert_array_equal(a.xywh()[0], [10, 20, 20, 25])


@pytest.mark.parametrize(
    "body, where",
    [
        ("# a.jpg\n1 2 3 4 5\n", "label.txt:2: expected 20"),
        ("# a.jpg\n1 2 x 4\n", "label.txt:2: expected numbers"),
        ("1 2 3 4\n# a.jpg\n", "label.txt:1: face line before"),
        ("#\n", "label.txt:1: '#' line without"),
    ],
)
def test_retinaface_label_errors_name_file_and_line(tmp_path, body, where):
    f = tmp_path / "label.txt"
    f.write_text(body)
    with pytest.raises(DataError, match=where):
        parse_retinaface_labels(f)


def test_val_gt_text_with_empty_images(tmp_path):
    f = tmp_path / "gt.txt"
    f.write_text(
        "0--P/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0 \n10 10 5 6 2 0 0 0 1 0 \n"
        "0--P/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n"
        "1--Q/b.jpg\n1\n7 8 9 10 0 0 0 0 0 0 \n"
        "1--Q/last_empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n"
    )
    recs = parse_wider_val_gt(f)
    assert [r.path for r in recs] == [
        "0--P/a.jpg",
        "0--P/empty.jpg",
        "1--Q/b.jpg",
        "1--Q/last_empty.jpg",
    ]
    assert [len(r.boxes) for r in recs] == [2, 0, 1, 0]
    np.testing.assert_array_equal(recs[0].boxes[1], [10, 10, 15, 16])
    assert (recs[0].labels == -1).all()
    # a 0 count without the zeros line (some copies of the file) parses the same
    f.write_text("0--P/empty.jpg\n0\n1--Q/b.jpg\n1\n7 8 9 10\n")
    assert [len(r.boxes) for r in parse_wider_val_gt(f)] == [0, 1]


@pytest.mark.parametrize(
    "body, where",
    [
        ("a.jpg\n3\n1 2 3 4\n", "gt.txt:1: count says 3"),
        ("a.jpg\nthree\n", "gt.txt:2: expected a face count"),
        ("a.jpg\n1\n1 2 x\n", "gt.txt:3: expected numbers"),
        ("a.jpg\n1\n1 2\n", "gt.txt:3: expected 'x y w h"),
        ("a.jpg\n", "gt.txt:1: image line without"),
    ],
)
def test_val_gt_errors_name_file_and_line(tmp_path, body, where):
    f = tmp_path / "gt.txt"
    f.write_text(body)
    with pytest.raises(DataError, match=where):
        parse_wider_val_gt(f)


def _dataset(tmp_path, text, **kw):
    (tmp_path / "label.txt").write_text(text)
    recs = parse_retinaface_labels(tmp_path / "label.txt")
    return WiderFaceDataset(recs, tmp_path / "images", **kw)


def test_missing_images_error_or_counted_skip(tmp_path, caplog):
    _write_images(tmp_path / "images", ["e/a.jpg"])
    text = f"# e/a.jpg\n10 20 20 25 {LM} 0.9\n# e/gone.jpg\n"
    with pytest.raises(DataError, match=r"1 of 2 images .* missing .*e/gone.jpg"):
        _dataset(tmp_path, text)
    with caplog.at_level(logging.WARNING):
        ds = _dataset(tmp_path, text, on_missing="skip")
    assert len(ds) == 1 and ds.skipped_missing == 1 and "skipping" in caplog.text


def test_corrupt_image_is_a_clear_error(tmp_path):
    (tmp_path / "images" / "e").mkdir(parents=True)
    (tmp_path / "images" / "e" / "a.jpg").write_bytes(b"not a jpeg")
    ds = _dataset(tmp_path, "# e/a.jpg\n")
    with pytest.raises(DataError, match="a.jpg: cannot read"):
        ds[0]


def test_boxes_outside_image_clipped_or_dropped(tmp_path, caplog):
    _write_images(tmp_path / "images", ["e/a.jpg"])  # 80 wide, 60 high
    ds = _dataset(tmp_path, f"# e/a.jpg\n70 50 20 20 {LM} 0.9\n100 10 5 5\n10 10 5 5\n")
    with caplog.at_level(logging.WARNING):
        s = ds[0]
    np.testing.assert_allclose(
        s["boxes"].numpy(), [[70 / 80, 50 / 60, 1, 1], [10 / 80, 10 / 60, 15 / 80, 15 / 60]]
    )
    assert ds.clipped_boxes == 1 and ds.dropped_boxes == 1 and "clipped, 1 dropped" in caplog.text


def test_eval_sample_is_the_file_minus_mean(tmp_path):
    _write_images(tmp_path / "images", ["e/a.jpg"])
    ds = _dataset(tmp_path, f"# e/a.jpg\n10 20 20 25 {LM} 0.9\n30 5 10 12\n")
    s = ds[0]
    img = cv2.imread(str(tmp_path / "images" / "e" / "a.jpg")).astype(np.float32)
    ref = (img - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)
    assert s["image"].dtype == torch.float32
    np.testing.assert_array_equal(s["image"].numpy(), ref)
    np.testing.assert_allclose(s["boxes"].numpy()[0], [10 / 80, 20 / 60, 30 / 80, 45 / 60])
    np.testing.assert_allclose(s["landmarks"].numpy()[0, :2], [13 / 80, 24 / 60])
    assert (s["landmarks"].numpy()[1] == -1).all()
    assert s["labels"].tolist() == [1, -1] and s["orig_size"] == (60, 80) and s["scale"] == 1.0
    # eval_size: long side 40, padded to a 40 square; normalised by the canvas
    ds.eval_size = 40
    s = ds[0]
    assert s["image"].shape == (3, 40, 40) and s["scale"] == 0.5
    np.testing.assert_allclose(s["boxes"].numpy()[0], [5 / 40, 10 / 40, 15 / 40, 22.5 / 40])
    assert (s["image"][:, 30:, :] == 0).all()  # padding = mean colour


def test_train_samples_deterministic_by_rng(tmp_path):
    _write_images(tmp_path / "images", ["e/a.jpg", "e/empty.jpg"])
    ds = _dataset(tmp_path, f"# e/a.jpg\n10 20 20 25 {LM} 0.9\n# e/empty.jpg\n", image_size=32)
    a = ds.load(0, np.random.default_rng([1, 2, 0]))
    b = ds.load(0, np.random.default_rng([1, 2, 0]))
    assert a["image"].shape == (3, 32, 32)
    for k in ("image", "boxes", "landmarks", "labels"):
        assert torch.equal(a[k], b[k])
    outs = [ds.load(0, np.random.default_rng(s))["image"] for s in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    e = ds.load(1, np.random.default_rng(0))  # an image without faces: a valid empty sample
    assert e["image"].shape == (3, 32, 32) and e["boxes"].shape == (0, 4)
    assert e["landmarks"].shape == (0, 10) and e["labels"].shape == (0,)


def test_collate_pads_with_minus_one_rows(tmp_path):
    _write_images(tmp_path / "images", ["e/a.jpg", "e/b.jpg"])
    _write_images(tmp_path / "images", ["e/c.jpg"], size=(40, 100))
    ds = _dataset(
        tmp_path,
        f"# e/a.jpg\n10 20 20 25 {LM} 0.9\n30 5 10 12\n# e/b.jpg\n"
        f"# e/c.jpg\n50 10 20 20 {LM} 0.9\n",
    )
    batch = collate_faces([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 60, 100)
    assert batch["boxes"].shape == (3, 2, 4) and batch["landmarks"].shape == (3, 2, 10)
    assert batch["num_faces"].tolist() == [2, 0, 1]
    assert batch["labels"].tolist() == [[1, -1], [0, 0], [1, 0]]
    assert (batch["boxes"][1] == -1).all() and (batch["boxes"][2, 1] == -1).all()
    assert (batch["landmarks"][0, 1] == -1).all()
    # normalised to the padded canvas: back to pixels of the batch tensor
    px = batch["boxes"][0, 0] * torch.tensor([100, 60, 100, 60])
    torch.testing.assert_close(px, torch.tensor([10.0, 20.0, 30.0, 45.0]))
    lm = batch["landmarks"][2, 0, :2] * torch.tensor([100, 60])
    torch.testing.assert_close(lm, torch.tensor([13.0, 24.0]))
    assert (batch["image"][0, :, :, 80:] == 0).all()
    assert batch["orig_size"].tolist() == [[60, 80], [60, 80], [40, 100]]


def test_splits_factory_errors_on_missing_root(tmp_path):
    with pytest.raises(DataError, match="root not found"):
        widerface_splits(tmp_path / "nope")
    tmp_path.joinpath("w").mkdir()
    with pytest.raises(DataError, match="label.txt: label file not found"):
        widerface_splits(tmp_path / "w")
