"""NMS vs torchvision.ops.nms / batched_nms (offset 0) and a plain greedy Python loop (any
offset), on the vectorised torch reference and on the g++-emulated kernels."""

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from src.ops import batched_nms, nms, use_backend
from src.ops.nms import nms_reference

D = torch.float64


@pytest.fixture(params=["reference", "emulate", "auto"])  # auto on CPU: torchvision's nms
def backend(request):
    with use_backend(request.param):
        yield request.param


def _greedy_loop(boxes, scores, thr, offset=0, idxs=None):
    """The textbook algorithm, one box at a time, scalar IoU formula."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    b = boxes.tolist()

    def iou(p, q):
        iw = max(min(p[2], q[2]) - max(p[0], q[0]) + offset, 0.0)
        ih = max(min(p[3], q[3]) - max(p[1], q[1]) + offset, 0.0)
        inter = iw * ih
        area = lambda r: max(r[2] - r[0] + offset, 0.0) * max(r[3] - r[1] + offset, 0.0)
        union = area(p) + area(q) - inter
        return inter / union if union > 0 else 0.0

    keep = []
    for i in order:
        if all(
            iou(b[k], b[i]) <= thr or (idxs is not None and int(idxs[k]) != int(idxs[i]))
            for k in keep
        ):
            keep.append(i)
    return keep


def _random(n, gen, dtype=D, spread=60.0):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * spread
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * 20 + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=gen, dtype=dtype)


def test_hand_example(backend):
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0]], dtype=D
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], dtype=D)
    # box 3 (best) suppresses 0 (IoU 0.9) and 1 (IoU 81/119 = 0.68); box 2 is far away
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]  # 0 vs 1: IoU 81/119 <= 0.95
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]  # IoU(3, 1) = 0.68 <= 0.7


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision(backend, thr, dtype):
    gen = torch.Generator().manual_seed(int(thr * 10))
    boxes, scores = _random(150, gen, dtype)  # > 64 boxes: several mask words per row
    got = nms(boxes, scores, thr)
    assert got.dtype == torch.int64
    assert got.tolist() == torchvision.ops.nms(boxes, scores, thr).tolist()
    idxs = torch.randint(0, 4, (150,), generator=gen)
    assert (
        batched_nms(boxes, scores, idxs, thr).tolist()
        == torchvision.ops.batched_nms(boxes, scores, idxs, thr).tolist()
    )


@pytest.mark.parametrize("offset", [0, 1])
def test_matches_greedy_loop(backend, offset):
    gen = torch.Generator().manual_seed(7 + offset)
    boxes, scores = _random(90, gen, spread=40.0)
    boxes = boxes.round()  # integer (VOC-style) boxes, where the +1 matters
    scores[5] = scores[6]  # a score tie: the lower index ranks first
    for thr in (0.4, 0.6):
        assert nms(boxes, scores, thr, offset=offset).tolist() == _greedy_loop(
            boxes, scores, thr, offset
        )
        idxs = torch.randint(0, 3, (90,), generator=gen)
        assert batched_nms(boxes, scores, idxs, thr, offset=offset).tolist() == _greedy_loop(
            boxes, scores, thr, offset, idxs
        )
        for block in (1, 7, 64):  # the reference's block-wise solve at several block sizes
            assert nms_reference(boxes, scores, thr, offset, idxs, block=block).tolist() == (
                _greedy_loop(boxes, scores, thr, offset, idxs)
            )


def test_offset_changes_the_result(backend):
    # IoU 0.142857 with offset 0 and 0.174757 with offset 1: a threshold of 0.16 separates them
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15.0]], dtype=D)
    scores = torch.tensor([0.9, 0.8], dtype=D)
    assert nms(boxes, scores, 0.16, offset=0).tolist() == [0, 1]
    assert nms(boxes, scores, 0.16, offset=1).tolist() == [0]


def test_long_suppression_chain(backend):
    # each box overlaps only its neighbours: greedy keeps every other box
    x = torch.arange(40, dtype=D) * 6
    boxes = torch.stack([x, torch.zeros_like(x), x + 10, torch.full_like(x, 10)], 1)
    scores = torch.linspace(1, 0.5, 40, dtype=D)
    got = nms(boxes, scores, 0.2)
    assert got.tolist() == list(range(0, 40, 2))
    assert got.tolist() == _greedy_loop(boxes, scores, 0.2)


def test_batched_never_crosses_classes_even_with_negative_coords(backend):
    boxes = torch.tensor(
        [[-50, -50, -40, -40], [-50, -50, -40, -40], [-49, -50, -40, -40.0]], dtype=D
    )
    scores = torch.tensor([0.5, 0.9, 0.7], dtype=D)
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [1, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.5).tolist() == [1, 2, 0]


def test_empty_and_errors(backend):
    empty = torch.zeros(0, 4, dtype=D)
    assert nms(empty, torch.zeros(0, dtype=D), 0.5).tolist() == []
    assert (
        batched_nms(empty, torch.zeros(0, dtype=D), torch.zeros(0, dtype=torch.long), 0.5).tolist()
        == []
    )
    with pytest.raises(ValueError, match="scores must be"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="boxes must be"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 12),
            st.integers(0, 12),
            st.integers(1, 8),
            st.integers(1, 8),
            st.integers(0, 4),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from([0.0, 0.3, 0.5]),
    st.sampled_from([0, 1]),
)
def test_property_reference_kernel_and_loop_agree(rows, thr, offset):
    """Small integer boxes with many exact duplicates, score ties and IoU ties."""
    t = torch.tensor(rows, dtype=D)
    boxes = torch.stack([t[:, 0], t[:, 1], t[:, 0] + t[:, 2], t[:, 1] + t[:, 3]], 1)
    scores, idxs = t[:, 4], t[:, 5].long()
    want = _greedy_loop(boxes, scores, thr, offset)
    want_b = _greedy_loop(boxes, scores, thr, offset, idxs)
    for mode in ("reference", "emulate"):
        with use_backend(mode):
            assert nms(boxes, scores, thr, offset).tolist() == want
            assert batched_nms(boxes, scores, idxs, thr, offset).tolist() == want_b


def test_offset_one_iou_is_offset_zero_iou_of_far_corner_shifted_boxes():
    """Why the torchvision path can take the legacy +1 widths: IoU with offset 1 equals IoU
    with offset 0 after moving (x2, y2) by +1 (torchvision.ops.box_iou as the offset-0 oracle)."""
    from src.ops import box_iou

    g = torch.Generator().manual_seed(5)
    a, _ = _random(40, g)
    b, _ = _random(30, g)
    a[:3, 2:] = a[:3, :2]  # zero-size boxes (area 1 with the offset)
    shift = lambda x: torch.cat([x[:, :2], x[:, 2:] + 1], 1)  # noqa: E731
    torch.testing.assert_close(
        box_iou(a, b, offset=1), torchvision.ops.box_iou(shift(a), shift(b)), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("offset", [0, 1])
def test_cpu_torchvision_path_equals_reference_float32_and_score_ties(offset):
    """Default (auto) CPU path = the pure-torch reference on float32 boxes, many score ties,
    class-aware, several thousand boxes."""
    g = torch.Generator().manual_seed(11)
    boxes, scores = _random(3000, g, torch.float32, spread=300.0)
    scores = (scores * 50).round() / 50  # ties
    idxs = torch.randint(0, 7, (3000,), generator=g)
    with use_backend("auto"):
        got = nms(boxes, scores, 0.5, offset), batched_nms(boxes, scores, idxs, 0.5, offset)
    want = (
        nms_reference(boxes, scores, 0.5, offset),
        nms_reference(boxes, scores, 0.5, offset, idxs),
    )
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
