"""Box ops vs torchvision.ops, a plain Python formulation (offset 1) and worked examples, on the
torch reference and on the g++-emulated kernels."""

import pytest
import torch
import torchvision
from torch.autograd import gradcheck, gradgradcheck

from src.ops import box_area, box_iou, generalized_box_iou, giou_loss, use_backend
from src.ops.boxes import giou_loss_reference

D = torch.float64


@pytest.fixture(params=["reference", "emulate"])
def backend(request):
    with use_backend(request.param):
        yield request.param


def _boxes(n, gen, dtype=D, scale=20.0):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * scale / 2 + 0.5
    return torch.cat([xy, xy + wh], 1)


def _plain_iou(a, b, offset, giou=False):
    """Scalar formula, one pair at a time."""

    def area(x1, y1, x2, y2):
        return max(x2 - x1 + offset, 0.0) * max(y2 - y1 + offset, 0.0)

    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + offset, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + offset, 0.0)
    inter = iw * ih
    union = area(*a) + area(*b) - inter
    iou = inter / union
    if not giou:
        return iou
    c = area(min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
    return iou - (c - union) / c


def test_worked_example(backend):
    a = torch.tensor([[0.0, 0, 10, 10]], dtype=D)
    b = torch.tensor([[5.0, 5, 15, 15]], dtype=D)
    assert box_iou(a, b).item() == pytest.approx(25 / 175, abs=1e-12)  # 0.142857
    assert box_iou(a, b, offset=1).item() == pytest.approx(36 / 206, abs=1e-12)  # 0.174757
    assert round(box_iou(a, b, offset=1).item(), 6) == 0.174757
    assert generalized_box_iou(a, b).item() == pytest.approx(25 / 175 - 50 / 225, abs=1e-12)
    assert giou_loss(a, b).item() == pytest.approx(1 - (25 / 175 - 50 / 225), abs=1e-12)
    assert box_area(a, offset=1).item() == 121.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pairwise_match_torchvision(backend, dtype):
    gen = torch.Generator().manual_seed(0)
    a, b = _boxes(7, gen, dtype), _boxes(9, gen, dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == D else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(box_iou(a, b), torchvision.ops.box_iou(a, b), **tol)
    torch.testing.assert_close(
        generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b), **tol
    )


def test_offset_one_matches_plain_formula(backend):
    gen = torch.Generator().manual_seed(1)
    a, b = _boxes(5, gen).round(), _boxes(6, gen).round()  # integer pixel boxes (VOC style)
    for giou, fn in ((False, box_iou), (True, generalized_box_iou)):
        got = fn(a, b, offset=1)
        want = torch.tensor(
            [[_plain_iou(p.tolist(), q.tolist(), 1, giou) for q in b] for p in a], dtype=D
        )
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_pairwise_broadcasts_batch_dims(backend):
    gen = torch.Generator().manual_seed(2)
    a = torch.stack([_boxes(4, gen) for _ in range(2)])[:, None]  # (2, 1, 4, 4)
    b = torch.stack([_boxes(3, gen) for _ in range(3)])  # (3, 3, 4)
    for fn in (box_iou, generalized_box_iou):
        got = fn(a, b)
        assert got.shape == (2, 3, 4, 3)
        for i in range(2):
            for j in range(3):
                torch.testing.assert_close(got[i, j], fn(a[i, 0], b[j]), rtol=0, atol=1e-15)
    assert box_iou(a[0, 0], b[0][:0]).shape == (4, 0)


def test_degenerate_boxes_give_zero_not_nan(backend):
    z = torch.tensor([[1.0, 1, 1, 1]], dtype=D)
    assert box_iou(z, z).item() == 0.0
    assert generalized_box_iou(z, z).item() == 0.0


def test_pairwise_gradients_flow(backend):
    gen = torch.Generator().manual_seed(3)
    a, b = _boxes(3, gen).requires_grad_(), _boxes(4, gen).requires_grad_()
    assert gradcheck(lambda p, q: generalized_box_iou(p, q, offset=1), (a, b))
    assert gradcheck(lambda p, q: box_iou(p, q), (a, b))


@pytest.mark.parametrize("offset", [0, 1])
def test_giou_loss_matches_torchvision_and_gradcheck(backend, offset):
    gen = torch.Generator().manual_seed(4)
    a, b = _boxes(6, gen).requires_grad_(), _boxes(6, gen).requires_grad_()
    ours = giou_loss(a, b, offset=offset)
    if offset == 0:
        oracle = torchvision.ops.generalized_box_iou_loss(a, b)  # has eps=1e-7 inside
        torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-7)
        g1 = torch.autograd.grad(ours.sum(), (a, b))
        g2 = torch.autograd.grad(oracle.sum(), (a, b))
        for x, y in zip(g1, g2):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-7)
    else:
        want = torch.tensor(
            [1 - _plain_iou(p.tolist(), q.tolist(), 1, True) for p, q in zip(a, b)], dtype=D
        )
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    fn = lambda p, q: giou_loss(p, q, offset=offset)
    assert gradcheck(fn, (a, b))
    assert gradgradcheck(fn, (a, b))
    assert giou_loss(a, b, offset, "sum").item() == pytest.approx(ours.sum().item())
    assert giou_loss(a, b, offset, "mean").item() == pytest.approx(ours.mean().item())


def test_giou_loss_kernel_grads_equal_reference_with_ties():
    """Shared edges and identical boxes hit min/max ties and clamp boundaries, where the
    kernel must use torch's sub-gradients (ties split in halves, clamp passes at 0)."""
    gen = torch.Generator().manual_seed(5)
    a = _boxes(8, gen).round()
    b = _boxes(8, gen).round()
    b[0] = a[0]  # identical
    b[1, :2] = a[1, :2]  # shared top-left corner
    b[2] = torch.tensor([a[2, 2], a[2, 1], a[2, 2] + 3, a[2, 3]])  # touching edge: iw == 0
    b[3] = torch.tensor([a[3, 2] + 2, a[3, 3] + 2, a[3, 2] + 5, a[3, 3] + 6])  # disjoint
    a[4, 2] = a[4, 0]  # zero-width box: clamp(min=0) boundary
    up = torch.randn(8, generator=gen, dtype=D)
    grads = {}
    for mode in ("reference", "emulate"):
        p, q = a.clone().requires_grad_(), b.clone().requires_grad_()
        with use_backend(mode):
            loss = giou_loss(p, q, offset=0)
        grads[mode] = (loss.detach(), *torch.autograd.grad(loss, (p, q), up))
    for x, y in zip(grads["reference"], grads["emulate"]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_giou_loss_batched_and_errors(backend):
    gen = torch.Generator().manual_seed(6)
    a = _boxes(6, gen).reshape(2, 3, 4)
    b = _boxes(3, gen)
    got = giou_loss(a, b)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, giou_loss_reference(a, b.expand(2, 3, 4)))
    with pytest.raises(ValueError, match="last dim of 4"):
        box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        giou_loss(a, b, reduction="avg")
