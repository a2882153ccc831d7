"""SparseIOU: matchers and samplers on the kept rows equal the dense (B, N, M) IoU exactly.

Oracle: the same toolkit blocks on the dense ``BBoxBatchIOU`` matrix (whose own tests compare
with MXNet goldens, numpy scans and torchvision). Candidate sources: the minimal one (exactly
the pairs with IoU >= floor, so every guarantee rests on the builder) and every pair.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.nn import (
    BBoxBatchIOU,
    BipartiteMatcher,
    CompositeMatcher,
    MaximumMatcher,
    OHEMSampler,
    QuotaSampler,
    bipartite_matching,
)
from src.nn.sparse import SparseIOU


def grid_anchors(
    size=64, step=8, shapes=((8, 8), (16, 16), (24, 12), (12, 24)), dtype=torch.float64
):
    out = []
    for i in range(size // step):
        for j in range(size // step):
            cx, cy = (j + 0.5) * step, (i + 0.5) * step
            for w, h in shapes:
                out.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return torch.tensor(out, dtype=dtype)


def random_gts(gen, b, m, size=64, lo=2.0, hi=40.0, integer=False, dtype=torch.float64):
    wh = torch.rand(b, m, 2, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    xy = torch.rand(b, m, 2, generator=gen, dtype=torch.float64) * (size - wh * 0.5)
    boxes = torch.cat((xy, xy + wh), -1)
    if integer:  # coarse coordinates: many exactly tied IoUs
        boxes = torch.round(boxes / 4) * 4
        boxes[..., 2:] = torch.maximum(boxes[..., 2:], boxes[..., :2] + 4)
    # variable counts: image i keeps m - (i % 3) boxes, the rest is -1 padding
    keep = torch.arange(m)[None, :] < (m - torch.arange(b) % 3)[:, None]
    return torch.where(keep[..., None], boxes, torch.full_like(boxes, -1)).to(dtype)


def minimal_pairs(anchors, boxes, floor):
    iou = BBoxBatchIOU()(anchors, boxes)  # (B, N, M)
    b, a, g = (iou >= floor).nonzero(as_tuple=True)
    gt = b * boxes.shape[1] + g
    order = torch.argsort(gt * anchors.shape[0] + a)
    return gt[order], a[order]


def build(anchors, boxes, floor, source):
    if source == "minimal":
        gt, a = minimal_pairs(anchors, boxes, floor)
    else:
        gt, a = SparseIOU.dense_pairs(anchors.shape[0], boxes)
    return SparseIOU.from_pairs(anchors, boxes, gt, a, floor)


def matchers(floor=0.4):
    hi, lo = max(0.5, floor), max(0.4, floor)
    return {
        "bipartite_share": lambda: BipartiteMatcher(share_max=True),
        "bipartite_own": lambda: BipartiteMatcher(share_max=False),
        "maximum": lambda: MaximumMatcher(hi),
        "ssd": lambda: CompositeMatcher([BipartiteMatcher(share_max=False), MaximumMatcher(hi)]),
        "rcnn": lambda: CompositeMatcher([BipartiteMatcher(share_max=True), MaximumMatcher(lo)]),
    }


def assert_same_assignment(anchors, boxes, floor, source):
    dense = BBoxBatchIOU()(anchors, boxes)
    sparse = build(anchors, boxes, floor, source)
    assert sparse.shape == dense.shape
    hi, lo = max(0.5, floor), max(0.4, floor)
    for name, make in matchers(floor).items():
        assert torch.equal(make()(sparse), make()(dense)), name
    row_s, col_s = bipartite_matching(sparse)
    row_d, col_d = bipartite_matching(dense)
    assert torch.equal(row_s, row_d) and torch.equal(col_s, col_d)
    matches = matchers(floor)["ssd"]()(dense)
    logits = torch.randn(
        *matches.shape, 3, generator=torch.Generator().manual_seed(1), dtype=dense.dtype
    )
    ohem = OHEMSampler(3, thresh=hi)
    assert torch.equal(ohem(matches, logits, sparse), ohem(matches, logits, dense))

    def quota():
        return QuotaSampler(
            32,
            hi,
            lo,
            neg_thresh_low=0.0,
            pos_ratio=0.25,
            generator=torch.Generator().manual_seed(5),
        )

    assert torch.equal(quota()(matches, sparse), quota()(matches, dense))
    return dense, sparse


@pytest.mark.parametrize("source", ["minimal", "all"])
@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_matchers_and_samplers_equal_dense(source, integer, seed):
    gen = torch.Generator().manual_seed(seed)
    anchors = grid_anchors()
    boxes = random_gts(gen, 6, 7, integer=integer)
    dense, sparse = assert_same_assignment(anchors, boxes, 0.4, source)
    # the point of it: far fewer rows than anchors
    assert sparse.rows.shape[1] < anchors.shape[0] // 2


def test_tiny_boxes_keep_their_best_anchors():
    """Boxes far smaller than any anchor have no pair at the floor: their k best anchors come
    from the dense column, so bipartite matching still gives each its best anchor."""
    anchors = grid_anchors()
    boxes = torch.tensor(
        [[[3, 3, 4, 4], [30, 30, 31.5, 31], [10, 40, 12, 41], [-1] * 4], [[-1] * 4] * 4],
        dtype=torch.float64,
    )
    dense, sparse = assert_same_assignment(anchors, boxes, 0.4, "minimal")
    assert (BipartiteMatcher()(sparse)[0] >= 0).sum() == 3  # each tiny box got an anchor
    assert (dense.amax(1)[0, :3] < 0.4).all()  # none reaches the floor


def test_ties_at_the_kth_value_are_kept():
    """A box centred on a symmetric anchor grid ties many anchors at each IoU level; the
    k-best set must include every anchor tying the k-th value (greedy order depends on it)."""
    anchors = grid_anchors(shapes=((16, 16),))
    boxes = torch.tensor(
        [[[24, 24, 40, 40], [20, 20, 44, 44], [28, 28, 36, 36], [0, 0, 64, 64]]],
        dtype=torch.float64,
    )
    for floor in (0.2, 0.5, 0.9):
        for source in ("minimal", "all"):
            assert_same_assignment(anchors, boxes, floor, source)


def test_max_reports_below_floor_for_absent_rows():
    gen = torch.Generator().manual_seed(0)
    anchors = grid_anchors()
    boxes = random_gts(gen, 3, 5)
    boxes[2] = -1  # an image without ground truth
    dense = BBoxBatchIOU()(anchors, boxes).amax(-1)
    sparse = build(anchors, boxes, 0.3, "minimal").max()
    kept = dense >= 0.3
    assert torch.equal(sparse[kept], dense[kept])
    assert (sparse[~kept] < 0.3).all()
    assert (sparse[2] == -1).all() and (dense[2] == -1).all()


def test_empty_cases():
    anchors = grid_anchors()
    for boxes in (
        torch.zeros(2, 0, 4, dtype=torch.float64),
        torch.full((2, 3, 4), -1.0, dtype=torch.float64),
        torch.zeros(0, 3, 4, dtype=torch.float64),
    ):
        assert_same_assignment(anchors, boxes, 0.5, "all")


def test_float32_and_offset():
    gen = torch.Generator().manual_seed(7)
    anchors = grid_anchors(dtype=torch.float32)
    boxes = random_gts(gen, 4, 6, dtype=torch.float32)
    assert_same_assignment(anchors, boxes, 0.4, "minimal")
    dense = BBoxBatchIOU(offset=1)(anchors, boxes)
    b, a, g = (dense >= 0.4).nonzero(as_tuple=True)
    sparse = SparseIOU.from_pairs(anchors, boxes, b * 6 + g, a, 0.4, offset=1)
    assert torch.equal(matchers()["ssd"]()(sparse), matchers()["ssd"]()(dense))


def test_unservable_thresholds_raise():
    gen = torch.Generator().manual_seed(0)
    anchors = grid_anchors()
    sparse = build(anchors, random_gts(gen, 2, 3), 0.5, "minimal")
    with pytest.raises(ValueError, match="floor"):
        MaximumMatcher(0.35)(sparse)
    with pytest.raises(ValueError, match="floor"):
        CompositeMatcher([BipartiteMatcher(), MaximumMatcher(0.35)])(sparse)
    with pytest.raises(ValueError, match="is_ascend"):
        BipartiteMatcher(threshold=0.5, is_ascend=True)(sparse)
    with pytest.raises(ValueError, match="neg_thresh_high"):
        QuotaSampler(16, 0.5, 0.3)(torch.full((2, anchors.shape[0]), -1), sparse)
    with pytest.raises(ValueError, match="floor"):
        SparseIOU.from_pairs(
            anchors,
            random_gts(gen, 2, 3),
            *SparseIOU.dense_pairs(anchors.shape[0], random_gts(gen, 2, 3)),
            0.0,
        )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1), st.sampled_from([0.3, 0.5, 0.7]), st.integers(1, 9), st.booleans()
)
def test_property_equal_dense(seed, floor, m, integer):
    gen = torch.Generator().manual_seed(seed)
    anchors = grid_anchors(size=48, shapes=((8, 8), (16, 16), (24, 12)))
    boxes = random_gts(gen, 3, m, size=48, lo=1.0, hi=48.0, integer=integer)
    dense = BBoxBatchIOU()(anchors, boxes)
    sparse = build(anchors, boxes, floor, "minimal")
    for make in (
        lambda: BipartiteMatcher(share_max=False),
        lambda: BipartiteMatcher(share_max=True),
        lambda: CompositeMatcher([BipartiteMatcher(), MaximumMatcher(floor)]),
    ):
        assert torch.equal(make()(sparse), make()(dense))
    assert np.array_equal(
        bipartite_matching(sparse)[1].numpy(), bipartite_matching(dense)[1].numpy()
    )


def test_crowded_boxes_hand_out_lower_ranked_anchors():
    """Near-duplicate boxes compete for the same anchors: bipartite matching must give the
    later ones their 2nd, 3rd, ... best anchors, which lie below a high floor."""
    anchors = grid_anchors(shapes=((16, 16), (12, 20)))
    base = torch.tensor([[18.0, 21.0, 35.0, 36.0], [40.0, 8.0, 52.0, 27.0]], dtype=torch.float64)
    jitter = torch.arange(6, dtype=torch.float64)[:, None, None] * 0.25
    boxes = (base[None] + jitter).reshape(1, -1, 4)  # 12 boxes, two crowds of 6
    for floor in (0.6, 0.75):
        dense, sparse = assert_same_assignment(anchors, boxes, floor, "minimal")
        counts = (dense[0] >= floor).sum(0)
        assert ((counts > 0) & (counts < 12)).any()  # some boxes have a few pairs at floor


def test_sharing_tolerance_is_kept():
    """Anchors within eps of a box's best IoU share it (BipartiteMatcher's eps): the builder
    keeps them even below the floor when told the same eps."""
    gen = torch.Generator().manual_seed(3)
    anchors = grid_anchors()
    boxes = random_gts(gen, 8, 2, lo=14, hi=26)
    dense = BBoxBatchIOU()(anchors, boxes)
    b, a, g = (dense >= 0.5 - 0.2).nonzero(as_tuple=True)  # candidates down to floor - eps
    sparse = SparseIOU.from_pairs(anchors, boxes, b * 2 + g, a, 0.5, eps=0.2)
    assert ((dense >= 0.5).sum(1) >= 2).any()  # boxes served from the candidates, not short
    for share in (True, False):
        m = BipartiteMatcher(share_max=share, eps=0.2)
        assert torch.equal(m(sparse), m(dense))
    with pytest.raises(ValueError, match="eps"):
        BipartiteMatcher(eps=0.3)(sparse)


def test_refined_candidates_for_small_boxes():
    """A source that can serve subsets at lower floors (as AnchorGrid windows do) is asked
    again for the boxes short of k pairs; the result is still the dense one."""
    gen = torch.Generator().manual_seed(11)
    anchors = grid_anchors()
    boxes = random_gts(gen, 5, 8, lo=2.0, hi=30.0)
    dense = BBoxBatchIOU()(anchors, boxes)
    calls = []

    def source(idx, t):
        calls.append((None if idx is None else idx.numel(), t))
        b, a, g = (dense >= t - 1e-9).nonzero(as_tuple=True)
        gt = b * boxes.shape[1] + g
        if idx is not None:
            sel = torch.isin(gt, idx)
            gt, a = gt[sel], a[sel]
        return gt, a

    sparse = SparseIOU.from_candidates(anchors, boxes, source, 0.5, refine=(4.0, 16.0))
    assert calls[0] == (None, 0.5) and len(calls) >= 2 and calls[1][1] == 0.125
    for name, make in matchers(0.5).items():
        assert torch.equal(make()(sparse), make()(dense)), name


@pytest.mark.parametrize("normalized", [False, True])
def test_from_grid_equals_dense(normalized):
    """The CPU path as used: candidates from an AnchorGrid's windows (rectangular shapes,
    several levels), small boxes refined at lower floors, the rest dense."""
    from src.nn import AnchorGrid

    grid = AnchorGrid(
        (96, 128),
        steps=(8, 16, 32),
        sizes=[[(12, 12), (16, 24)], [(32, 32), (48, 24)], [(64, 64), (96, 96)]],
        normalized=normalized,
    )
    anchors = grid.anchors()
    gen = torch.Generator().manual_seed(2)
    boxes = random_gts(gen, 6, 9, size=96, lo=2.0, hi=80.0, dtype=torch.float32)
    if normalized:
        scale = torch.tensor([128.0, 96.0, 128.0, 96.0])
        boxes = torch.where(boxes == -1, boxes, boxes / scale)
    dense = BBoxBatchIOU()(anchors, boxes)
    sparse = SparseIOU.from_grid(grid, boxes, 0.4)
    assert sparse.rows.shape[1] < anchors.shape[0] // 2
    for name, make in matchers(0.4).items():
        assert torch.equal(make()(sparse), make()(dense)), name
    assert torch.equal(sparse.max()[dense.amax(-1) >= 0.4], dense.amax(-1)[dense.amax(-1) >= 0.4])
    with pytest.raises(ValueError, match="eps"):
        SparseIOU.from_grid(grid, boxes, 0.4, eps=0.1)


def test_crowd_of_tiny_boxes_through_refined_floors():
    """Near-duplicate boxes far smaller than the anchors: none reaches the floor, so each
    one's k best anchors come from the refining stages (trimmed to k, ties included), and
    bipartite matching hands the later boxes their k-th best anchors."""
    from src.nn import AnchorGrid

    grid = AnchorGrid(
        (64, 64), steps=(8, 16), sizes=[[(12, 12), (16, 8)], [(24, 24)]], normalized=False
    )
    anchors = grid.anchors(dtype=torch.float64)
    jitter = torch.tensor(
        [[0, 0], [1, 0], [0, 1], [1, 1], [2, 0], [0, 2], [2, 2], [3, 1]], dtype=torch.float64
    )
    crowd = torch.cat((20 + jitter, 26 + jitter), -1)  # eight 6 x 6 boxes
    boxes = torch.stack((crowd, crowd + 17.5))
    dense = BBoxBatchIOU()(anchors, boxes)
    assert (dense.amax(1) < 0.5).all()
    sparse = SparseIOU.from_grid(grid, boxes, 0.5)
    for make in (lambda: BipartiteMatcher(share_max=False), lambda: BipartiteMatcher()):
        got, want = make()(sparse), make()(dense)
        assert torch.equal(got, want)
        assert ((want >= 0).sum(1) == 8).all()  # every box of the crowd got an anchor
    row_s, col_s = bipartite_matching(sparse)
    assert torch.equal(col_s, bipartite_matching(dense)[1])


def assert_guarantees(sparse, dense, floor):
    """The builder's contract, checked against the dense IoU: every pair >= floor and each
    ground truth's k best anchors with IoU > 0 (ties at the k-th value included) are rows."""
    b, n, m = dense.shape
    kept = torch.zeros(b, n + 1, dtype=torch.bool).scatter_(1, sparse.rows, True)[:, :n]
    assert not ((dense >= floor).any(-1) & ~kept).any()
    k = sparse.k
    if k and n:
        kth = dense.topk(k, dim=1).values[:, -1:, :]  # (B, 1, M)
        need = ((dense >= kth) & (dense > 0) & (dense >= sparse.k_floor)).any(-1)
        assert not (need & ~kept).any()
    # kept rows carry the dense values
    ref = torch.gather(dense, 1, sparse.rows.clamp(max=n - 1)[..., None].expand(-1, -1, m))
    used = sparse.rows < n
    assert torch.equal(sparse.iou[used], ref[used])


@pytest.mark.parametrize("seed", range(3))
def test_builder_guarantees(seed):
    from src.nn import AnchorGrid

    grid = AnchorGrid(
        (64, 64), steps=(8, 16), sizes=[[(12, 12), (16, 8)], [(24, 24)]], normalized=False
    )
    anchors = grid.anchors(dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    boxes = random_gts(gen, 4, 8, lo=1.0, hi=40.0)  # tiny to large: every stage is used
    dense = BBoxBatchIOU()(anchors, boxes)
    for floor in (0.3, 0.6):
        assert_guarantees(SparseIOU.from_grid(grid, boxes, floor), dense, floor)
        assert_guarantees(build(anchors, boxes, floor, "minimal"), dense, floor)


@pytest.mark.parametrize("k", [1, 3])
def test_k_floor_limits_the_guarantee(k):
    """k_floor: a box's k best anchors are kept only among IoU >= k_floor (nothing dense),
    which serves consumers that ignore boxes whose best IoU is below it (RetinaFace's
    per-face best prior, bipartite matching with threshold >= k_floor)."""
    from src.nn import AnchorGrid

    grid = AnchorGrid(
        (64, 64), steps=(8, 16), sizes=[[(12, 12), (16, 8)], [(24, 24)]], normalized=False
    )
    anchors = grid.anchors(dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    boxes = random_gts(gen, 4, 8, lo=1.0, hi=40.0)
    dense = BBoxBatchIOU()(anchors, boxes)
    sparse = SparseIOU.from_grid(grid, boxes, 0.5, k=k, k_floor=0.2)
    full = SparseIOU.from_grid(grid, boxes, 0.5, k=k)
    n = anchors.shape[0]
    assert (sparse.rows < n).sum() < (full.rows < n).sum()
    assert_guarantees(sparse, dense, 0.5)
    # each box's best IoU and first best anchor, where it is >= k_floor
    best, arg = sparse.iou.max(dim=1)
    best_d, arg_d = dense.max(dim=1)
    kept = best_d >= 0.2
    assert torch.equal(best[kept], best_d[kept]) and (best[~kept] < 0.2).all()
    assert torch.equal(sparse.rows.gather(1, arg)[kept], arg_d[kept])
    if k == 3:
        m = CompositeMatcher([BipartiteMatcher(threshold=0.2), MaximumMatcher(0.5)])
        expected = CompositeMatcher([BipartiteMatcher(threshold=0.2), MaximumMatcher(0.5)])(dense)
        with pytest.raises(ValueError, match="k="):  # k=3 < min(N, M) = 8
            m(sparse)
        sparse8 = SparseIOU.from_grid(grid, boxes, 0.5, k_floor=0.2)
        assert torch.equal(m(sparse8), expected)
        with pytest.raises(ValueError, match="k_floor"):
            BipartiteMatcher()(sparse8)
