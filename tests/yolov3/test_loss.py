"""src.losses.yolo against the independent per-image port of the archive (archive_port.py),
in float64 on seeded inputs: targets exactly, losses to 1e-10; then the places where we differ
on purpose (edge cells, shared cells), the archive's scalings, darknet assignment, MSE, and
degenerate boxes."""

from __future__ import annotations

import pytest
import torch
import torchvision

from src.losses.yolo import YoloLoss, YoloLossConfigError
from src.models.yolov3 import ANCHORS, MASKS
from src.ops import giou_loss

from .archive_port import (
    archive_build_targets,
    archive_compute_loss,
    darknet_build_targets,
    darknet_ignore,
    xyxy_px_to_archive,
)

HYP = {"giou": 3.54, "obj": 64.3, "cls": 37.4, "iou_t": 0.2}
STRIDES = (32, 16, 8)
LAYER_ANCHORS = [torch.tensor([ANCHORS[i] for i in m], dtype=torch.float64) for m in MASKS]


def seeded_batch(seed=0, B=3, M=6, size=256, nc=4, dtype=torch.float64):
    """Heads, boxes with quarter-pixel corners (exact in binary at power-of-two sizes) and
    -1 padding; image b has M - b boxes."""
    g = torch.Generator().manual_seed(seed)
    p = [
        torch.randn(B, 3, size // s, size // s, 5 + nc, generator=g, dtype=dtype) * 0.7
        for s in STRIDES
    ]
    boxes = torch.full((B, M, 4), -1.0, dtype=dtype)
    labels = torch.full((B, M), -1, dtype=torch.long)
    for b in range(B):
        k = M - b
        wh = torch.randint(8, size // 2, (k, 2), generator=g).to(dtype)
        xy = torch.rand(k, 2, generator=g, dtype=dtype) * (size - wh)
        boxes[b, :k] = torch.round(torch.cat((xy, xy + wh), 1) * 4) / 4
        labels[b, :k] = torch.randint(0, nc, (k,), generator=g)
    return p, boxes, labels


def plain_loss(**kw):
    return YoloLoss(cls_gain_by_classes=False, batch_scale=False, **kw)


def port_inputs(boxes, labels, size):
    targets = xyxy_px_to_archive(boxes, labels, (size, size))
    vecs = [a / s for a, s in zip(LAYER_ANCHORS, STRIDES)]
    return targets, vecs


def _has_shared_cells(built) -> bool:
    for t in built:
        keys = list(zip(t["b"].tolist(), t["a"].tolist(), t["gj"].tolist(), t["gi"].tolist()))
        if len(keys) != len(set(keys)):
            return True
    return False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_equal_archive_port(seed):
    size = 256
    p, boxes, labels = seeded_batch(seed, size=size)
    targets, vecs = port_inputs(boxes, labels, size)
    ref = archive_build_targets(p, targets, vecs)
    ours = plain_loss().build_targets(
        [x.shape[2:4] for x in p], boxes, labels, LAYER_ANCHORS, STRIDES
    )
    assert sum(r["b"].numel() for r in ref) > 10  # the test has positives on every path
    for r, o in zip(ref, ours):
        c = o.compact()
        for k in ("b", "a", "gj", "gi", "cls"):
            assert torch.equal(c[k], r[k]), k
        assert torch.equal(c["tbox"], r["tbox"])
        assert torch.equal(c["anchor"], r["anchor"])


@pytest.mark.parametrize("seed", [0, 1, 6])  # seeds without shared cells (see below)
def test_loss_equals_archive_port(seed):
    size = 256
    p, boxes, labels = seeded_batch(seed, size=size)
    targets, vecs = port_inputs(boxes, labels, size)
    assert not _has_shared_cells(archive_build_targets(p, targets, vecs))  # see the next test
    lbox, lobj, lcls = archive_compute_loss(p, targets, vecs, HYP, nc=4)
    out = plain_loss()(p, boxes, labels, LAYER_ANCHORS, STRIDES)
    assert abs(out["box"] - lbox) < 1e-10 and abs(out["obj"] - lobj) < 1e-10
    assert abs(out["cls"] - lcls) < 1e-10
    assert abs(out["loss"] - (lbox + lobj + lcls)) < 1e-10
    assert out["box"] > 0 and out["obj"] > 0 and out["cls"] > 0


def test_loss_at_416_close_to_port():
    """At 416 (not a power of two) normalised-then-gained and pixel/stride coordinates differ by
    ulps: the same positives, losses to 1e-10."""
    p, boxes, labels = seeded_batch(7, size=416)
    targets, vecs = port_inputs(boxes, labels, 416)
    assert not _has_shared_cells(archive_build_targets(p, targets, vecs))
    ref = archive_compute_loss(p, targets, vecs, HYP, nc=4)
    out = plain_loss()(p, boxes, labels, LAYER_ANCHORS, STRIDES)
    for k, r in zip(("box", "obj", "cls"), ref):
        assert abs(out[k] - r) < 1e-10, k


def test_gradients_match_port():
    p, boxes, labels = seeded_batch(5, B=2, size=128)
    p1 = [x.clone().requires_grad_() for x in p]
    p2 = [x.clone().requires_grad_() for x in p]
    targets, vecs = port_inputs(boxes, labels, 128)
    assert not _has_shared_cells(archive_build_targets(p, targets, vecs))
    sum(archive_compute_loss(p1, targets, vecs, HYP, nc=4)).backward()
    plain_loss()(p2, boxes, labels, LAYER_ANCHORS, STRIDES)["loss"].backward()
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_shared_cell_higher_giou_wins_archive_last_write():
    """Two targets on one cell and anchor: the archive's objectness target is whichever comes
    last; ours is the higher one, whatever the order."""
    size = 128
    p, _, _ = seeded_batch(0, B=1, size=size, nc=2)
    good = torch.tensor([[40.0, 40.0, 88.0, 88.0]], dtype=torch.float64)
    near = torch.tensor([[42.0, 38.0, 86.0, 92.0]], dtype=torch.float64)  # same cells, anchors
    orders = [torch.cat((good, near))[None], torch.cat((near, good))[None]]
    labels = torch.tensor([[0, 1]])
    ours, port, port_max = [], [], []
    for boxes, lab in zip(orders, (labels, labels.flip(1))):
        targets, vecs = port_inputs(boxes, lab, size)
        assert _has_shared_cells(archive_build_targets(p, targets, vecs))
        port.append(archive_compute_loss(p, targets, vecs, HYP, nc=2)[1])
        port_max.append(archive_compute_loss(p, targets, vecs, HYP, nc=2, writes="max")[1])
        ours.append(plain_loss()(p, boxes, lab, LAYER_ANCHORS, STRIDES)["obj"])
    assert abs(port[0] - port[1]) > 1e-6  # last write wins: order matters in the archive
    assert abs(ours[0] - ours[1]) < 1e-12  # ours: the same whatever the order
    assert abs(ours[0] - port_max[0]) < 1e-10 and abs(ours[1] - port_max[1]) < 1e-10


def test_edge_target_uses_its_cell():
    """A target centred exactly on the right edge (g_x = nx): the cell is the last column;
    our box offset is 1.0 (the true centre), the archive's 0.0 (one cell off)."""
    size = 128
    p, _, _ = seeded_batch(0, B=1, size=size)
    boxes = torch.tensor([[[112.0, 40.0, 144.0, 80.0]]], dtype=torch.float64)  # cx = 128
    labels = torch.tensor([[1]])
    shapes = [x.shape[2:4] for x in p]
    ours = plain_loss().build_targets(shapes, boxes, labels, LAYER_ANCHORS, STRIDES)
    ref_mode = plain_loss(reference_edge=True).build_targets(
        shapes, boxes, labels, LAYER_ANCHORS, STRIDES
    )
    targets, vecs = port_inputs(boxes, labels, size)
    port = archive_build_targets(p, targets, vecs)
    n = 0
    for o, r, pr, x in zip(ours, ref_mode, port, p):
        c, cr = o.compact(), r.compact()
        if not c["b"].numel():
            continue
        n += 1
        assert (c["gi"] == x.shape[3] - 1).all()
        assert (c["tbox"][:, 0] == 1.0).all()
        assert (pr["tbox"][:, 0] == 0.0).all()
        assert torch.equal(cr["tbox"], pr["tbox"]) and torch.equal(cr["gi"], pr["gi"])
    assert n


def test_archive_scalings():
    p, boxes, labels = seeded_batch(1)
    plain = plain_loss()(p, boxes, labels, LAYER_ANCHORS, STRIDES)
    scaled = YoloLoss()(p, boxes, labels, LAYER_ANCHORS, STRIDES)
    assert abs(scaled["cls"] - plain["cls"] * 4 / 80) < 1e-12  # hyp['cls'] *= nc / 80
    total = plain["box"] + plain["obj"] + plain["cls"] * 4 / 80
    assert abs(scaled["loss"] - total * 3 / 64) < 1e-12  # loss *= batch_size / 64


def test_crowd_and_padding_excluded():
    p, boxes, labels = seeded_batch(2)
    crowd = torch.zeros_like(labels, dtype=torch.bool)
    crowd[0, 0] = True
    with_crowd = plain_loss()(p, boxes, labels, LAYER_ANCHORS, STRIDES, crowd=crowd)
    dropped = labels.clone()
    dropped[0, 0] = -1
    without = plain_loss()(p, boxes, dropped, LAYER_ANCHORS, STRIDES)
    assert with_crowd["loss"] == without["loss"]
    assert (
        with_crowd["num_targets"]
        < plain_loss()(p, boxes, labels, LAYER_ANCHORS, STRIDES)["num_targets"]
    )


def test_darknet_assignment_one_anchor_and_ignore():
    p, boxes, labels = seeded_batch(0)
    loss = plain_loss(assignment="darknet")
    shapes = [x.shape[2:4] for x in p]
    built = loss.build_targets(shapes, boxes, labels, LAYER_ANCHORS, STRIDES)
    per_target = sum(t.mask.sum(0) for t in built)  # (B, M) positives per target
    assert torch.equal(per_target, (labels >= 0).long())
    out = loss(p, boxes, labels, LAYER_ANCHORS, STRIDES)
    assert torch.isfinite(out["loss"])
    # an ignore threshold of 0 ignores every anchor overlapping a box: objectness drops
    lo = plain_loss(assignment="darknet", ignore_thresh=0.0)(
        p, boxes, labels, LAYER_ANCHORS, STRIDES
    )
    hi = plain_loss(assignment="darknet", ignore_thresh=1.0)(
        p, boxes, labels, LAYER_ANCHORS, STRIDES
    )
    assert lo["obj"] < hi["obj"]
    assert hi["obj"] == out["obj"] or out["obj"] <= hi["obj"]


@pytest.mark.parametrize(("seed", "ignore_thresh"), [(0, 0.7), (1, 0.5), (2, 0.7)])
def test_darknet_assignment_equals_per_image_port(seed, ignore_thresh):
    """``assignment: darknet`` against the per-target / per-image port (darknet_build_targets,
    darknet_ignore): the same positives, and lbox, lobj, lcls to 1e-10 with the ignored anchors
    (decoded IoU > ignore_thresh with a ground truth, not positive) out of the objectness sum."""
    size = 256
    p, boxes, labels = seeded_batch(seed, size=size)
    p = [x.clone() for x in p]
    for x in p:  # wider boxes than seeded_batch's, so that some predictions overlap the truths
        x[..., 2:4] += 1.0
    targets, vecs = port_inputs(boxes, labels, size)
    loss = plain_loss(assignment="darknet", ignore_thresh=ignore_thresh)
    ref = darknet_build_targets(p, targets, LAYER_ANCHORS, STRIDES, (size, size))
    ours = loss.build_targets([x.shape[2:4] for x in p], boxes, labels, LAYER_ANCHORS, STRIDES)
    assert sum(r["b"].numel() for r in ref) == int((labels >= 0).sum())  # one anchor each
    assert sum(r["b"].numel() > 0 for r in ref) >= 2  # more than one layer is used
    for r, o in zip(ref, ours):
        c = o.compact()
        for k in ("b", "a", "gj", "gi", "cls", "tbox", "anchor"):
            assert torch.equal(c[k], r[k]), k
    ignore = darknet_ignore(p, targets, LAYER_ANCHORS, STRIDES, (size, size), ignore_thresh)
    assert sum(int(m.sum()) for m in ignore) > 0  # the ignore rule is exercised
    assert not _has_shared_cells(ref)
    lbox, lobj, lcls = archive_compute_loss(p, targets, vecs, HYP, 4, built=ref, ignore=ignore)
    out = loss(p, boxes, labels, LAYER_ANCHORS, STRIDES)
    assert abs(out["box"] - lbox) < 1e-10 and abs(out["cls"] - lcls) < 1e-10
    assert abs(out["obj"] - lobj) < 1e-10
    no_ignore = archive_compute_loss(p, targets, vecs, HYP, 4, built=ref)[1]
    assert lobj < no_ignore - 1e-6  # the mask changes the value the test compares


def test_mse_loss_matches_formula():
    p, boxes, labels = seeded_batch(4, B=1, M=1, size=128)
    loss = plain_loss(box_loss="mse")
    out = loss(p, boxes, labels, LAYER_ANCHORS, STRIDES)
    built = loss.build_targets([x.shape[2:4] for x in p], boxes, labels, LAYER_ANCHORS, STRIDES)
    want = 0.0
    for x, t, s in zip(p, built, STRIDES):
        c = t.compact()
        for k in range(c["b"].numel()):
            ps = x[c["b"][k], c["a"][k], c["gj"][k], c["gi"][k]]
            tb = c["tbox"][k]
            err = ((ps[:2].sigmoid() - tb[:2]) ** 2).sum() + (
                (ps[2:4] - torch.log(tb[2:4] / c["anchor"][k])) ** 2
            ).sum()
            want += float(err * (2 - tb[2] * tb[3] * s * s / 128**2)) / c["b"].numel()
    assert abs(float(out["box"]) - want * 3.54) < 1e-10


def test_giou_op_equals_torchvision_on_regular_pairs():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g, dtype=torch.float64) * 50
    a = torch.cat((xy, xy + 1 + torch.rand(200, 2, generator=g, dtype=torch.float64) * 30), 1)
    xy = torch.rand(200, 2, generator=g, dtype=torch.float64) * 50
    b = torch.cat((xy, xy + 1 + torch.rand(200, 2, generator=g, dtype=torch.float64) * 30), 1)
    want = torchvision.ops.generalized_box_iou_loss(a, b, eps=0.0)
    torch.testing.assert_close(giou_loss(a, b), want, rtol=0, atol=1e-12)


def test_degenerate_boxes_give_finite_loss_and_gradients():
    """Zero / negative width targets, and predictions whose exp underflows to zero size or
    overflows to the clamp: finite loss and gradients (torchvision's GIoU is NaN on
    zero-area pairs)."""
    zero = torch.tensor([[5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    assert torch.isnan(torchvision.ops.generalized_box_iou_loss(zero, zero, eps=0.0)).all()
    assert torch.isfinite(giou_loss(zero, zero)).all()
    p, boxes, labels = seeded_batch(0, dtype=torch.float32)
    boxes = boxes.float()
    boxes[0, 0] = torch.tensor([50.0, 50.0, 50.0, 90.0])  # zero width
    boxes[0, 1] = torch.tensor([60.0, 60.0, 40.0, 90.0])  # negative width
    boxes[1, 0] = torch.tensor([10.0, 10.0, 10.001, 10.001])  # nearly nothing
    for x in p:
        x[0, :, :, :, 2:4] = -200.0  # exp underflows: zero-size predictions
        x[1, :, :, :, 2:4] = 200.0  # exp overflows: clamped at 1e3
    for kw in ({}, {"box_loss": "mse"}, {"assignment": "darknet"}):
        ps = [x.clone().requires_grad_() for x in p]
        out = YoloLoss(**kw)(ps, boxes, labels, LAYER_ANCHORS, STRIDES)
        assert torch.isfinite(out["loss"]), kw
        out["loss"].backward()
        assert all(torch.isfinite(x.grad).all() for x in ps), kw


def test_empty_targets_and_bad_options():
    p, boxes, labels = seeded_batch(0)
    out = YoloLoss()(p, boxes[:, :0], labels[:, :0], LAYER_ANCHORS, STRIDES)
    assert out["box"] == 0 and out["cls"] == 0 and out["obj"] > 0
    with pytest.raises(YoloLossConfigError, match="loss.box_loss"):
        YoloLoss(box_loss="l1")
    with pytest.raises(YoloLossConfigError, match="loss.assignment"):
        YoloLoss(assignment="best")
