"""AnchorGrid: anchors against a plain loop port, candidate pairs against the dense IoU.

Oracles: ``loop_anchors`` (straight Python loops, level -> row -> column -> shape, Python
floats) and the dense IoU of every (anchor, ground truth) pair from ``src.ops.box_iou`` in
float32 and float64: every pair reaching ``min_iou`` there must be a candidate.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.models.retinaface.priors import MIN_SIZES, STEPS, anchor_grid, prior_boxes
from src.nn.anchor import AnchorGrid
from src.ops import box_iou

F64 = torch.float64
RETINA_SIZES = [[(s, s) for s in level] for level in MIN_SIZES]


def loop_anchors(h, w, steps, sizes, offset=0.5, normalized=True, fmt="corner"):
    """Straight loops in Python floats: level -> row -> column -> shape."""
    sx, sy = (w, h) if normalized else (1, 1)
    out = []
    for step, shapes in zip(steps, sizes):
        for i in range(math.ceil(h / step)):
            for j in range(math.ceil(w / step)):
                for aw, ah in shapes:
                    cx, cy = (j + offset) * step / sx, (i + offset) * step / sy
                    bw, bh = aw / sx, ah / sy
                    if fmt == "center":
                        out.append([cx, cy, bw, bh])
                    else:
                        out.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return torch.tensor(out, dtype=F64).reshape(-1, 4)


CONFIGS = {
    # name: (image_size, steps, sizes, offset, normalized)
    "retinaface_640": ((640, 640), STEPS, RETINA_SIZES, 0.5, True),
    "ssd_rect_pixels": (
        (300, 500),
        (8, 16, 32, 64, 100, 300),
        [
            [(30, 30), (42, 42), (42, 21), (21, 42)],
            [(60, 60), (85, 85), (85, 42.5), (42.5, 85), (104, 35), (35, 104)],
            [(111, 111), (135, 135), (157, 78.5), (78.5, 157)],
            [(162, 162), (185, 185), (229, 114.5)],
            [(213, 213), (237, 237), (301, 150.5), (150.5, 301)],
            [(264, 264), (288, 288)],
        ],
        0.5,
        False,
    ),
    "odd_rect_normalized": (
        (37, 53),
        (8, 16, 32),
        [[(10, 6), (6, 10)], [(24, 24)], [(40, 30), (64, 48), (20, 50)]],
        0.5,
        True,
    ),
    "yolo_offset0_pixels": (
        (97, 131),
        (8, 16, 32),
        [
            [(10, 13), (16, 30), (33, 23)],
            [(30, 61), (62, 45), (59, 119)],
            [(116, 90), (156, 198), (373, 326)],
        ],
        0.0,
        False,
    ),
    # tiny anchors far from the origin: float32 rounding of the coordinates is a sizeable
    # fraction of a box side there (the absolute slack of the bounds matters)
    "tiny_far_pixels": ((16, 20000), (3.3,), [[(2.2, 1.7), (1.3, 2.9)]], 0.5, False),
}


def grid_of(name: str) -> AnchorGrid:
    size, steps, sizes, offset, normalized = CONFIGS[name]
    return AnchorGrid(size, steps, sizes, offset=offset, normalized=normalized)


# ------------------------------------------------------------------------------ anchors
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("fmt", ["corner", "center"])
def test_anchors_equal_loop_port(name, fmt):
    size, steps, sizes, offset, normalized = CONFIGS[name]
    grid = grid_of(name)
    want = loop_anchors(*size, steps, sizes, offset, normalized, fmt)
    got64 = grid.anchors(fmt, dtype=F64)
    assert got64.shape == want.shape == (grid.num_anchors, 4)
    assert torch.equal(got64, want)
    got32 = grid.anchors(fmt)
    assert got32.dtype == torch.float32 and torch.equal(got32, want.float())
    assert len(grid) == grid.num_anchors == sum(grid.num_anchors_per_level)


def test_feature_maps_use_ceil_and_float_steps():
    grid = grid_of("ssd_rect_pixels")  # SSD300-style strides, 300 x 500 image
    assert grid.feature_map_sizes == [(38, 63), (19, 32), (10, 16), (5, 8), (3, 5), (1, 2)]
    assert AnchorGrid((37, 53), (8, 16, 32), [[(1, 1)]] * 3).feature_map_sizes == [
        (5, 7),
        (3, 4),
        (2, 2),
    ]
    g = AnchorGrid((300, 300), (7.5,), [[(10, 20)]], normalized=False)
    assert g.feature_map_sizes == [(40, 40)]
    assert torch.equal(
        g.anchors("center", dtype=F64),
        loop_anchors(300, 300, (7.5,), [[(10, 20)]], normalized=False, fmt="center"),
    )


@pytest.mark.parametrize("hw", [(640, 640), (480, 640), (37, 53), (1, 1), (841, 613)])
def test_square_grid_is_retinaface_priors(hw):
    grid = AnchorGrid.square(hw, STEPS, MIN_SIZES)
    assert grid == anchor_grid(hw) and hash(grid) == hash(anchor_grid(hw))
    assert anchor_grid(hw) is anchor_grid(hw)  # cached
    for dtype in (torch.float32, F64):
        assert torch.equal(grid.anchors("center", dtype=dtype), prior_boxes(hw, dtype=dtype))
    assert grid.num_anchors == prior_boxes(hw).shape[0]


def test_constructor_and_argument_errors():
    with pytest.raises(ValueError, match="levels"):
        AnchorGrid((64, 64), (8, 16), [[(16, 16)]])
    with pytest.raises(ValueError, match="positive"):
        AnchorGrid((0, 64), (8,), [[(16, 16)]])
    with pytest.raises(ValueError, match="positive"):
        AnchorGrid((64, 64), (8,), [[(16, 0)]])
    with pytest.raises(ValueError, match="steps"):
        AnchorGrid((64, 64), (-8,), [[(16, 16)]])
    with pytest.raises(ValueError, match="no anchor shape"):
        AnchorGrid((64, 64), (8,), [[]])
    with pytest.raises(ValueError, match=r"\(w, h\)"):
        AnchorGrid((64, 64), (8,), [[(16, 16, 3)]])
    grid = AnchorGrid.square((64, 64), (8,), [[16]])
    with pytest.raises(ValueError, match="fmt"):
        grid.anchors("xywh")
    boxes = torch.tensor([[[0.1, 0.1, 0.4, 0.4]]])
    for bad in (0, 0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_iou"):
            grid.candidates(boxes, bad)
    with pytest.raises(ValueError, match="corners"):
        grid.candidates(torch.zeros(1, 2, 5), 0.5)
    assert "AnchorGrid(" in repr(grid)


# --------------------------------------------------------------------------- candidates
def boundary_gts(gen: torch.Generator, grid: AnchorGrid, n: int, min_iou: float):
    """``n`` float32 boxes, each a copy of a random anchor (``src``) shifted or reshaped so that
    its IoU with that anchor is ``min_iou`` up to rounding: the hardest case for a bound."""
    anc = grid.anchors("center", dtype=F64)
    src = torch.randint(0, anc.shape[0], (n,), generator=gen)
    cx, cy, aw, ah = anc[src].unbind(1)
    t = min_iou
    kind = torch.randint(0, 4, (n,), generator=gen)
    cx = torch.where(kind == 0, cx + aw * (1 - t) / (1 + t), cx)  # IoU (w - d) / (w + d)
    cy = torch.where(kind == 1, cy - ah * (1 - t) / (1 + t), cy)
    aw = torch.where(kind == 2, aw * t, aw)  # nested, narrower: IoU = t
    ah = torch.where(kind == 3, ah / t, ah)  # nested, taller: IoU = t
    return torch.stack([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2], 1).float(), src


def random_gts(
    gen: torch.Generator, grid: AnchorGrid, b: int, m: int, mode: str, min_iou: float
) -> torch.Tensor:
    """(b, m, 4) float32 corner boxes in the grid's coordinates, about 25 % padding rows.

    ``typical``: sides log-uniform from 2 px to the image, anywhere (also partly outside);
    ``boundary``: ``boundary_gts``; ``huge``: larger than the image.
    """
    h, w = grid.image_size
    sx, sy = (w, h) if grid.normalized else (1, 1)
    n = b * m
    if mode == "boundary":
        box = boundary_gts(gen, grid, n, min_iou)[0]
    else:
        lo, hi = (
            (math.log(2), math.log(max(h, w)))
            if mode == "typical"
            else (math.log(max(h, w)), math.log(3 * max(h, w)))
        )
        side = torch.exp(torch.empty(n, 1, dtype=F64).uniform_(lo, hi, generator=gen))
        wh = side * torch.empty(n, 2, dtype=F64).uniform_(0.5, 2.0, generator=gen)
        c = torch.rand(n, 2, generator=gen, dtype=F64) * 1.2 - 0.1
        c = c * torch.tensor([w, h], dtype=F64)
        box = (torch.cat([c - wh / 2, c + wh / 2], 1) / torch.tensor([sx, sy, sx, sy])).float()
    box = box.reshape(b, m, 4)
    pad = torch.rand(b, m, generator=gen) < 0.25
    return torch.where(pad[..., None], torch.full_like(box, -1.0), box)


def check_superset(grid: AnchorGrid, boxes: torch.Tensor, min_iou: float):
    """Candidates contain every pair whose float32 / float64 IoU reaches min_iou; contract
    on dtype, ordering and padding. Returns (gt, anchor, number of pairs needed)."""
    gt, anc = grid.candidates(boxes, min_iou)
    assert gt.dtype == anc.dtype == torch.long and gt.shape == anc.shape and gt.dim() == 1
    n = grid.num_anchors
    flat = boxes.reshape(-1, 4)
    key = gt * n + anc
    assert torch.all(key[1:] > key[:-1])  # gt-major, ascending anchor, no duplicate
    if gt.numel():
        assert 0 <= int(anc.min()) and int(anc.max()) < n
        assert 0 <= int(gt.min()) and int(gt.max()) < flat.shape[0]
    pad = (flat == -1).all(1)
    assert not pad[gt].any()  # padding rows get no pair
    have = torch.zeros(flat.shape[0], n, dtype=torch.bool)
    have[gt, anc] = True
    needed = 0
    for dtype in (torch.float32, F64):
        iou = box_iou(flat.to(dtype), grid.anchors("corner", dtype=dtype))  # (G, N)
        need = (iou >= min_iou) & ~pad[:, None]
        missed = need & ~have
        assert not missed.any(), (dtype, missed.nonzero()[:5].tolist(), iou[missed][:5].tolist())
        needed = max(needed, int(need.sum()))
    return gt, anc, needed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(CONFIGS)),
    mode=st.sampled_from(["typical", "typical", "boundary", "boundary", "huge"]),
    min_iou=st.sampled_from([0.05, 0.2, 0.3, 0.35, 0.5, 0.7, 0.95, 1.0]),
    b=st.integers(1, 3),
    m=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_candidates_contain_every_pair_reaching_min_iou(name, mode, min_iou, b, m, seed):
    grid = grid_of(name)
    boxes = random_gts(torch.Generator().manual_seed(seed), grid, b, m, mode, min_iou)
    check_superset(grid, boxes, min_iou)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("min_iou", [0.2, 0.5])
def test_boundary_pairs_are_found_and_tight(name, min_iou):
    # gts at IoU == min_iou (up to rounding) with one anchor each: every pair the dense IoU
    # keeps is there, and the candidates are few compared to all pairs
    grid = grid_of(name)
    boxes = random_gts(torch.Generator().manual_seed(7), grid, 4, 16, "boundary", min_iou)
    gt, _, needed = check_superset(grid, boxes, min_iou)
    assert needed > 0
    assert gt.numel() < 0.05 * grid.num_anchors * boxes.shape[0] * boxes.shape[1]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pairs_at_the_threshold_are_never_missed(name):
    # many gts whose IoU with one anchor is min_iou up to rounding: that pair is a candidate
    # whenever its float32 or float64 IoU reaches min_iou (both margins of the bounds matter:
    # the relative one on min_iou and, far from the origin, the absolute one on the sides)
    grid = grid_of(name)
    n = grid.num_anchors
    for k, t in enumerate((0.2, 0.35, 0.5, 0.7, 0.9)):
        boxes, src = boundary_gts(torch.Generator().manual_seed(k), grid, 5000, t)
        gt, anc = grid.candidates(boxes, t)
        for dtype in (torch.float32, F64):
            a = grid.anchors("corner", dtype=dtype)[src]
            iou = box_iou(boxes.to(dtype)[:, None], a[:, None])[:, 0, 0]
            need = (iou >= t).nonzero()[:, 0]
            assert need.numel() > 0.1 * boxes.shape[0]  # the test has teeth
            found = torch.isin(need * n + src[need], gt * n + anc)
            assert found.all(), (t, dtype, iou[need[~found]][:5].tolist())


@pytest.mark.parametrize("min_iou", [0.2, 0.35])
def test_tight_on_the_retinaface_grid(min_iou):
    # typical faces (8..250 px) on the 640 px grid: a trivial "all pairs" answer fails
    grid = AnchorGrid.square((640, 640), STEPS, MIN_SIZES)
    gen = torch.Generator().manual_seed(3)
    side = torch.exp(
        torch.empty(32, 10, 1, dtype=F64).uniform_(math.log(8), math.log(250), generator=gen)
    )
    wh = side * torch.empty(32, 10, 2, dtype=F64).uniform_(0.7, 1.3, generator=gen) / 640
    c = torch.rand(32, 10, 2, generator=gen, dtype=F64)
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1).float()
    gt, _, needed = check_superset(grid, boxes, min_iou)
    assert gt.numel() < 0.05 * grid.num_anchors * 320
    assert gt.numel() < 0.005 * grid.num_anchors * 320  # in fact far below 5 %
    assert gt.numel() < 2.5 * needed  # about 1.6x the pairs that do reach min_iou


def test_min_iou_one_finds_the_identical_anchor():
    grid = grid_of("ssd_rect_pixels")
    anc = grid.anchors("corner")
    pick = torch.tensor([0, 5, 1234, grid.num_anchors - 1])
    gt, a = grid.candidates(anc[pick][None], 1.0)
    got = set(zip(gt.tolist(), a.tolist()))
    assert {(k, int(p)) for k, p in enumerate(pick)} <= got
    assert len(got) <= 4 * 4  # only shapes that could be identical


def test_edge_cases():
    grid = AnchorGrid.square((640, 640), STEPS, MIN_SIZES)
    empty = grid.candidates(torch.zeros(3, 0, 4), 0.35)  # M = 0
    assert [t.shape for t in empty] == [(0,), (0,)] and empty[0].dtype == torch.long
    pad = grid.candidates(torch.full((4, 5, 4), -1.0), 0.35)  # all padding
    assert pad[0].numel() == 0 and pad[1].numel() == 0
    # a 1 px face: best IoU 1/256 < 0.2 with the 16 px priors, so no feasible anchor at all
    tiny = torch.tensor([[[0.5, 0.5, 0.5 + 1 / 640, 0.5 + 1 / 640]]])
    assert grid.candidates(tiny, 0.2)[0].numel() == 0
    # zero-area, inverted and non-finite boxes reach no IoU > 0: no pair
    odd = torch.tensor(
        [
            [
                [0.2, 0.2, 0.2, 0.4],
                [0.5, 0.5, 0.4, 0.4],
                [float("nan"), 0.1, 0.2, 0.2],
                [0.1, 0.1, float("inf"), 0.3],
            ]
        ]
    )
    assert grid.candidates(odd, 0.05)[0].numel() == 0
    # larger than the image / partly outside: the dense oracle decides (and pairs exist)
    big = torch.tensor(
        [
            [
                [-0.5, -0.5, 1.5, 1.5],
                [-0.3, 0.2, 1.1, 0.9],
                [-0.05, -0.05, 0.05, 0.05],
                [0.97, 0.4, 1.03, 0.45],
            ]
        ]
    )
    for t in (0.1, 0.3, 0.6):
        check_superset(grid, big, t)
    gt, _ = grid.candidates(big, 0.1)
    assert set(gt.tolist()) == {0, 1, 2, 3}
    # padding rows between real ones keep the flat gt index
    mixed = torch.full((2, 3, 4), -1.0)
    mixed[1, 2] = torch.tensor([0.4, 0.4, 0.45, 0.46])
    gt, _ = grid.candidates(mixed, 0.35)
    assert gt.numel() > 0 and set(gt.tolist()) == {5}
    # any (..., 4) layout: the flat index is the same
    one, _ = grid.candidates(mixed[1], 0.35)
    assert torch.equal(one, gt - 3)


def test_float64_boxes_and_integer_steps_agree_with_float_steps():
    g_int = AnchorGrid.square((320, 320), (8, 16, 32), MIN_SIZES)
    g_flt = AnchorGrid.square((320, 320), (8.0, 16.0, 32.0), [[16.0, 32.0], [64, 128], [256, 512]])
    assert torch.equal(g_int.anchors(), g_flt.anchors())
    boxes = random_gts(torch.Generator().manual_seed(1), g_int, 2, 6, "typical", 0.3)
    a = g_int.candidates(boxes, 0.3)
    b = g_flt.candidates(boxes.double(), 0.3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for name in sorted(CONFIGS):
        grid = grid_of(name)
        boxes = random_gts(torch.Generator().manual_seed(5), grid, 4, 12, "typical", 0.3)
        cpu = grid.candidates(boxes, 0.3)
        gpu = grid.candidates(boxes.cuda(), 0.3)
        assert gpu[0].device.type == "cuda"
        assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
