"""Priors against a plain loop formulation of the reference's PriorBox (the oracle)."""

from __future__ import annotations

import math
from itertools import product

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.models.retinaface.priors import (
    PriorBox,
    feature_map_sizes,
    num_priors,
    prior_boxes,
)

MIN_SIZES = [[16, 32], [64, 128], [256, 512]]
STEPS = [8, 16, 32]


def oracle_priors(h, w, min_sizes=MIN_SIZES, steps=STEPS, clip=False):
    """Straight loops: level -> row -> column -> size, normalised cx, cy, w, h."""
    out = []
    for k, step in enumerate(steps):
        rows, cols = math.ceil(h / step), math.ceil(w / step)
        for i, j in product(range(rows), range(cols)):
            for size in min_sizes[k]:
                out.append([(j + 0.5) * step / w, (i + 0.5) * step / h, size / w, size / h])
    t = torch.tensor(out, dtype=torch.float32).view(-1, 4)
    return t.clamp(0, 1) if clip else t


@pytest.mark.parametrize("hw", [(640, 640), (840, 840), (480, 640), (640, 480), (37, 53), (1, 1)])
def test_matches_loop_oracle_exactly(hw):
    got = prior_boxes(hw)
    want = oracle_priors(*hw)
    assert got.shape == want.shape
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_count_16800_at_640():
    assert prior_boxes((640, 640)).shape == (16800, 4)
    assert num_priors((640, 640)) == 16800 == (80 * 80 + 40 * 40 + 20 * 20) * 2
    assert num_priors((840, 840)) == (105 * 105 + 53 * 53 + 27 * 27) * 2


def test_feature_maps_use_ceil():
    assert feature_map_sizes((37, 53)) == [(5, 7), (3, 4), (2, 2)]
    assert feature_map_sizes((64, 64)) == [(8, 8), (4, 4), (2, 2)]


def test_order_level_row_column_size_on_non_square_image():
    h, w = 48, 80  # level 0: 6 rows x 10 columns x 2 sizes
    p = prior_boxes((h, w))
    first = p[: 6 * 10 * 2].view(6, 10, 2, 4)
    # sizes innermost
    assert torch.allclose(first[0, 0, :, 2], torch.tensor([16 / w, 32 / w]))
    assert torch.allclose(first[0, 0, :, 3], torch.tensor([16 / h, 32 / h]))
    # columns vary cx, rows vary cy
    assert torch.allclose(first[0, :, 0, 0], (torch.arange(10) + 0.5) * 8 / w)
    assert torch.allclose(first[:, 0, 0, 1], (torch.arange(6) + 0.5) * 8 / h)
    # then level 1 starts with its own first cell
    assert torch.allclose(p[120], torch.tensor([8 / w, 8 / h, 64 / w, 64 / h]))


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300))
def test_random_sizes_match_oracle(h, w):
    assert torch.equal(prior_boxes((h, w)), oracle_priors(h, w))


def test_clip_and_custom_config():
    sizes, steps = [[10], [20, 40, 60]], [4, 16]
    got = prior_boxes((30, 50), sizes, steps, clip=True)
    assert torch.equal(got, oracle_priors(30, 50, sizes, steps, clip=True))
    assert got.max() <= 1 and got.min() >= 0
    assert not torch.equal(prior_boxes((30, 50), sizes, steps), got)  # clipping did something


def test_cached_per_size_device_and_dtype():
    a = prior_boxes((96, 128))
    assert prior_boxes((96, 128)) is a
    assert PriorBox()((96, 128), device="cpu") is a
    assert prior_boxes((128, 96)) is not a
    d = prior_boxes((96, 128), dtype=torch.float64)
    assert d.dtype == torch.float64 and d is not a
    assert torch.allclose(d.float(), a)
    # float64 values are the exact double-precision formula
    assert d[3, 0].item() == (1 + 0.5) * 8 / 128


def test_prior_box_object_and_errors():
    pb = PriorBox()
    assert pb.num_priors((640, 640)) == 16800
    assert "min_sizes" in repr(pb)
    with pytest.raises(ValueError, match="levels"):
        prior_boxes((64, 64), [[16]], [8, 16])
    with pytest.raises(ValueError, match="positive"):
        prior_boxes((0, 64))
