"""collate_detection: -1 / False padding (the src/nn convention), stacking, metadata."""

from __future__ import annotations

import pytest
import torch

from src.data.detection import collate_detection


def _sample(n: int, index: int, size: int = 8) -> dict:
    return {
        "image": torch.full((3, size, size), float(index)),
        "boxes": torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) + index,
        "labels": torch.arange(n, dtype=torch.int64),
        "crowd": torch.tensor([k == 1 for k in range(n)]),
        "difficult": torch.tensor([k == 0 for k in range(n)]),
        "image_id": f"img{index}",
        "index": index,
        "orig_size": (10 + index, 20),
        "scale": 0.5,
        "pad": (1.0, 2.0),
    }


def test_pads_boxes_and_labels():
    b = collate_detection([_sample(2, 0), _sample(0, 1), _sample(3, 2)])
    assert b["image"].shape == (3, 3, 8, 8) and b["image"][2].eq(2).all()
    assert b["boxes"].shape == (3, 3, 4) and b["labels"].shape == (3, 3)
    assert b["num_boxes"].tolist() == [2, 0, 3]
    assert torch.equal(b["boxes"][0, :2], _sample(2, 0)["boxes"])
    assert b["boxes"][0, 2].eq(-1).all() and b["boxes"][1].eq(-1).all()
    assert b["labels"].tolist() == [[0, 1, -1], [-1, -1, -1], [0, 1, 2]]
    assert b["crowd"].tolist() == [[False, True, False], [False] * 3, [False, True, False]]
    assert b["difficult"].tolist() == [[True, False, False], [False] * 3, [True, False, False]]
    assert b["labels"].dtype == torch.int64 and b["crowd"].dtype == torch.bool
    assert b["orig_size"].tolist() == [[10, 20], [11, 20], [12, 20]]
    assert b["scale"].dtype == torch.float64 and b["pad"].tolist() == [[1.0, 2.0]] * 3
    assert b["index"].tolist() == [0, 1, 2] and b["image_id"] == ["img0", "img1", "img2"]
    assert "image_uint8" not in b


def test_all_negative_batch_and_uint8():
    samples = [_sample(0, 0), _sample(0, 1)]
    for s in samples:
        s["image_uint8"] = torch.zeros((3, 8, 8), dtype=torch.uint8)
    b = collate_detection(samples)
    assert b["boxes"].shape == (2, 0, 4) and b["labels"].shape == (2, 0)
    assert b["image_uint8"].shape == (2, 3, 8, 8)


def test_mixed_sizes_are_refused():
    with pytest.raises(ValueError, match="same image_size"):
        collate_detection([_sample(1, 0, 8), _sample(1, 1, 16)])
