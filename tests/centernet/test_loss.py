"""CenterNet targets and loss against independent float64 numpy / torch ports of the
reference formulas (CornerNet's gaussian_radius / draw_gaussian, the kp_detection target loop,
_neg_loss, _ae_loss, _regr_loss), and the reference bugs that are fixed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.losses.centernet import (
    CenterNetLoss,
    ae_loss,
    build_targets,
    focal_loss,
    gaussian_radius,
    reference_push_constant,
)


# ---- ports ------------------------------------------------------------------------------
def port_radius(h, w, o=0.7, exact=False):
    a1, b1, c1 = 1, h + w, w * h * (1 - o) / (1 + o)
    sq1 = math.sqrt(b1**2 - 4 * a1 * c1)
    a2, b2, c2 = 4, 2 * (h + w), (1 - o) * w * h
    sq2 = math.sqrt(b2**2 - 4 * a2 * c2)
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    sq3 = math.sqrt(b3**2 - 4 * a3 * c3)
    if exact:
        return min((b1 - sq1) / (2 * a1), (b2 - sq2) / (2 * a2), (b3 + sq3) / (2 * a3))
    return min((b1 + sq1) / 2, (b2 + sq2) / 2, (b3 + sq3) / 2)


def port_draw(heat, cx, cy, r, delte):
    d = 2 * r + 1
    sigma = d / delte
    m = (d - 1) / 2
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    hh, ww = heat.shape
    left, right = min(cx, r), min(ww - cx, r + 1)
    top, bottom = min(cy, r), min(hh - cy, r + 1)
    sub = heat[cy - top : cy + bottom, cx - left : cx + right]
    np.maximum(sub, g[r - top : r + bottom, r - left : r + right], out=sub)


def port_targets(boxes, labels, c, in_size, out_size, k=128, exact=False):
    """The reference's per-image target loop (boxes clipped to size - 1, degenerate dropped)."""
    b = len(boxes)
    ho, wo = out_size
    rx, ry = wo / in_size[1], ho / in_size[0]
    heats = {n: np.zeros((b, c, ho, wo)) for n in ("tl", "br", "ct")}
    regrs = {n: np.zeros((b, k, 2)) for n in ("tl", "br", "ct")}
    inds = {n: np.zeros((b, k), np.int64) for n in ("tl", "br", "ct")}
    mask = np.zeros((b, k), np.uint8)
    for i in range(b):
        n = 0
        for box, lab in zip(boxes[i], labels[i]):
            if lab < 0:
                continue
            x1, y1, x2, y2 = [float(v) for v in box]
            x1, x2 = np.clip([x1, x2], 0, in_size[1] - 1)
            y1, y2 = np.clip([y1, y2], 0, in_size[0] - 1)
            if not (x2 > x1 and y2 > y1):
                continue
            pts = {
                "tl": (x1 * rx, y1 * ry),
                "br": (x2 * rx, y2 * ry),
                "ct": ((x1 + x2) / 2 * rx, (y1 + y2) / 2 * ry),
            }
            w, h = math.ceil((x2 - x1) * rx), math.ceil((y2 - y1) * ry)
            r = max(0, int(port_radius(h, w, exact=exact)))
            for name, (fx, fy) in pts.items():
                ix, iy = int(fx), int(fy)
                port_draw(heats[name][i, lab], ix, iy, r, 5 if name == "ct" else 6)
                regrs[name][i, n] = [fx - ix, fy - iy]
                inds[name][i, n] = iy * wo + ix
            n += 1
        mask[i, :n] = 1
    return heats, regrs, inds, mask


def port_neg_loss(pred_logits, gt):
    pred = torch.clamp(torch.sigmoid(pred_logits), 1e-4, 1 - 1e-4)
    pos_inds, neg_inds = gt.eq(1), gt.lt(1)
    neg_weights = torch.pow(1 - gt[neg_inds], 4)
    pos_pred, neg_pred = pred[pos_inds], pred[neg_inds]
    pos_loss = (torch.log(pos_pred) * torch.pow(1 - pos_pred, 2)).sum()
    neg_loss = (torch.log(1 - neg_pred) * torch.pow(neg_pred, 2) * neg_weights).sum()
    if pos_pred.nelement() == 0:
        return -neg_loss
    return -(pos_loss + neg_loss) / pos_inds.float().sum()


def port_ae_loss(tag0, tag1, mask, squeeze=True):
    """The reference _ae_loss, as written (tags (B, K, 1), mask uint8 or bool)."""
    num = mask.sum(dim=1, keepdim=True).float().double()
    if squeeze:
        tag0, tag1 = tag0.squeeze(), tag1.squeeze()
    else:
        tag0, tag1 = tag0[..., 0], tag1[..., 0]
    tag_mean = (tag0 + tag1) / 2
    t0 = (torch.pow(tag0 - tag_mean, 2) / (num + 1e-4))[mask.bool()].sum()
    t1 = (torch.pow(tag1 - tag_mean, 2) / (num + 1e-4))[mask.bool()].sum()
    pull = t0 + t1
    m = mask.unsqueeze(1) + mask.unsqueeze(2)
    m = m.eq(2)
    num = num.unsqueeze(2)
    num2 = (num - 1) * num
    dist = tag_mean.unsqueeze(1) - tag_mean.unsqueeze(2)
    dist = torch.relu(1 - torch.abs(dist))
    dist = dist - 1 / (num + 1e-4)
    dist = dist / (num2 + 1e-4)
    return pull, dist[m].sum()


def port_regr(regr, gt, mask):
    num = mask.float().sum()
    m = mask.bool().unsqueeze(2).expand_as(gt)
    loss = torch.nn.functional.smooth_l1_loss(regr[m], gt[m], reduction="sum")
    return loss / (num + 1e-4)


# ---- tests ------------------------------------------------------------------------------
def test_gaussian_radius_reference_and_exact():
    rng = np.random.default_rng(0)
    hw = rng.uniform(1, 200, (50, 2))
    for exact in (False, True):
        got = gaussian_radius(
            torch.tensor(hw[:, 0]), torch.tensor(hw[:, 1]), 0.7, "exact" if exact else "reference"
        )
        want = [port_radius(h, w, exact=exact) for h, w in hw]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # the exact radius is the largest shift keeping IoU >= 0.7 (both corners out: IoU = 0.7)
    h = w = 100.0
    r = float(
        gaussian_radius(
            torch.tensor(h, dtype=torch.float64), torch.tensor(w, dtype=torch.float64), 0.7, "exact"
        )
    )
    iou_out = h * w / ((h + 2 * r) * (w + 2 * r))
    iou_in = (h - 2 * r) * (w - 2 * r) / (h * w)
    iou_shift = (h - r) * (w - r) / (2 * h * w - (h - r) * (w - r))
    assert min(iou_out, iou_in, iou_shift) == pytest.approx(0.7, abs=1e-9)


def _random_batch(seed, b=3, m=6, size=96):
    g = np.random.default_rng(seed)
    xy = g.uniform(-10, size, (b, m, 2))
    wh = g.uniform(2, 60, (b, m, 2))
    boxes = np.concatenate([xy, xy + wh], -1)
    labels = g.integers(0, 3, (b, m))
    labels[0, -2:] = -1
    boxes[0, -2:] = -1
    return boxes, labels


@pytest.mark.parametrize("exact", [False, True])
def test_targets_equal_reference_loop(exact):
    boxes, labels = _random_batch(1)
    t = build_targets(
        torch.tensor(boxes),
        torch.tensor(labels),
        3,
        (96, 128),
        (24, 32),
        radius="exact" if exact else "reference",
    )
    heats, regrs, inds, mask = port_targets(boxes, labels, 3, (96, 128), (24, 32), exact=exact)
    assert torch.equal(t["mask"], torch.from_numpy(mask).bool())
    for n in ("tl", "br", "ct"):
        np.testing.assert_array_equal(t[f"{n}_heat"].numpy(), heats[n].astype(np.float32))
        np.testing.assert_array_equal(t[f"{n}_inds"].numpy(), inds[n])
        np.testing.assert_allclose(t[f"{n}_regr"].numpy(), regrs[n], atol=1e-6)
    assert (t["ct_heat"] == 1).sum() == mask.sum()  # one peak per object (distinct here)


def test_crowd_and_max_objects():
    boxes = torch.tensor([[[0, 0, 20, 20], [30, 30, 60, 60], [5, 40, 25, 60]]], dtype=torch.float32)
    labels = torch.tensor([[0, 1, 1]])
    crowd = torch.tensor([[False, True, False]])
    t = build_targets(boxes, labels, 2, (64, 64), (16, 16), crowd=crowd, max_objects=1)
    assert t["mask"].tolist() == [[True]]  # crowd excluded, then at most one object
    assert t["tl_heat"][0, 1].max() == 0 and t["tl_heat"][0, 0].max() == 1


def test_focal_equals_reference_port():
    g = torch.Generator().manual_seed(0)
    boxes, labels = _random_batch(2)
    t = build_targets(torch.tensor(boxes), torch.tensor(labels), 3, (96, 96), (24, 24))
    logits = torch.randn(3, 3, 24, 24, generator=g, dtype=torch.float64)
    gt = t["tl_heat"].double()
    torch.testing.assert_close(
        focal_loss(logits, gt), port_neg_loss(logits, gt), rtol=1e-12, atol=1e-12
    )
    empty = torch.zeros_like(gt)  # no positives anywhere: -neg
    torch.testing.assert_close(
        focal_loss(logits, empty), port_neg_loss(logits, empty), rtol=1e-12, atol=1e-12
    )


def _tags(seed, b=3, k=8):
    g = torch.Generator().manual_seed(seed)
    t0 = torch.randn(b, k, 1, generator=g, dtype=torch.float64)
    t1 = t0 + 0.3 * torch.randn(b, k, 1, generator=g, dtype=torch.float64)
    mask = torch.zeros(b, k, dtype=torch.uint8)
    for i, n in enumerate((5, 1, 3)[:b]):  # image 1 has one object
        mask[i, :n] = 1
    return t0, t1, mask


def test_pull_push_equal_reference_with_uint8_masks():
    t0, t1, mask = _tags(0)
    pull, push = ae_loss(t0[..., 0], t1[..., 0], mask)
    ref_pull, ref_push = port_ae_loss(t0, t1, mask)
    torch.testing.assert_close(pull, ref_pull, rtol=1e-12, atol=1e-12)
    # the reference adds a constant per image (~1 for the one-object image): no gradient
    torch.testing.assert_close(
        push + reference_push_constant(mask), ref_push, rtol=1e-12, atol=1e-12
    )
    assert float(reference_push_constant(mask)) > 0.99
    a = t0.clone().requires_grad_()
    b = t0.clone().requires_grad_()
    (g_ours,) = torch.autograd.grad(ae_loss(a[..., 0], t1[..., 0], mask)[1], a)
    (g_ref,) = torch.autograd.grad(port_ae_loss(b, t1, mask)[1], b)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


def test_reference_push_is_zero_with_bool_masks_ours_is_not():
    t0, t1, mask = _tags(1)
    t0 = t0 * 0.1  # close embeddings: a real push
    _, ref_push_bool = port_ae_loss(t0, t1, mask.bool())
    assert float(ref_push_bool) == 0.0  # the reference bug
    _, ours_bool = ae_loss(t0[..., 0], t1[..., 0], mask.bool())
    _, ours_u8 = ae_loss(t0[..., 0], t1[..., 0], mask)
    assert float(ours_bool) > 0 and torch.equal(ours_bool, ours_u8)


def test_one_object_adds_no_constant():
    t0, t1, mask = _tags(2)
    one = torch.zeros_like(mask)
    one[:, 0] = 1
    _, push = ae_loss(t0[..., 0], t1[..., 0], one)
    _, ref = port_ae_loss(t0, t1, one)
    assert float(push) == 0.0 and float(ref) == pytest.approx(3 * (1 - 1 / 1.0001) / 1e-4)


def test_reference_squeeze_breaks_batch_one_ours_works():
    t0, t1, mask = _tags(3, b=1)
    with pytest.raises((IndexError, RuntimeError)):
        port_ae_loss(t0, t1, mask)
    pull, push = ae_loss(t0[..., 0], t1[..., 0], mask)
    rp, rq = port_ae_loss(t0, t1, mask, squeeze=False)
    torch.testing.assert_close(pull, rp)
    torch.testing.assert_close(push + reference_push_constant(mask), rq)


def _outputs(seed, b, c, h, w, stacks=1):
    g = torch.Generator().manual_seed(seed)
    keys = {
        "tl_heat": c,
        "br_heat": c,
        "ct_heat": c,
        "tl_tag": 1,
        "br_tag": 1,
        "tl_regr": 2,
        "br_regr": 2,
        "ct_regr": 2,
    }
    return [
        {
            k: torch.randn(b, d, h, w, generator=g, dtype=torch.float64).requires_grad_()
            for k, d in keys.items()
        }
        for _ in range(stacks)
    ]


def _port_total(outs, t, mask_u8):
    """The reference AELoss from the ports (focal + 0.1 pull + 0.1 push + regr) / stacks."""

    def gather(feat, ind):
        return (
            feat.flatten(2).transpose(1, 2).gather(1, ind[..., None].expand(-1, -1, feat.shape[1]))
        )

    focal = pull = push = regr = 0
    for o in outs:
        for k in ("tl", "br", "ct"):
            focal = focal + port_neg_loss(o[f"{k}_heat"], t[f"{k}_heat"].double())
        p, q = port_ae_loss(
            gather(o["tl_tag"], t["tl_inds"]),
            gather(o["br_tag"], t["br_inds"]),
            mask_u8,
            squeeze=False,
        )
        pull, push = pull + p, push + q
        for k in ("tl", "br", "ct"):
            regr = regr + port_regr(
                gather(o[f"{k}_regr"], t[f"{k}_inds"]), t[f"{k}_regr"].double(), mask_u8
            )
    return (focal + 0.1 * pull + 0.1 * push + regr) / len(outs)


@pytest.mark.parametrize("stacks", [1, 2])
def test_loss_equals_reference_port_and_gradients(stacks):
    boxes, labels = _random_batch(4, b=2)
    outs = _outputs(5, 2, 3, 24, 24, stacks)
    loss = CenterNetLoss()
    t = loss.targets(outs, torch.tensor(boxes), torch.tensor(labels), (96, 96))
    got = loss(outs, None, None, (96, 96), targets=t)
    mask_u8 = t["mask"].to(torch.uint8)
    want = _port_total(outs, t, mask_u8) - 0.1 * reference_push_constant(mask_u8) * stacks / stacks
    torch.testing.assert_close(got["loss"].double(), want, rtol=1e-6, atol=1e-6)
    params = [v for o in outs for v in o.values()]
    g1 = torch.autograd.grad(got["loss"], params)
    g2 = torch.autograd.grad(want, params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


def test_all_boxes_outside_the_crop_train_as_negative_and_batch_of_one():
    outs = _outputs(6, 1, 2, 16, 16)
    boxes = torch.tensor([[[-30.0, -30.0, -5.0, -2.0], [70.0, 10.0, 90.0, 30.0]]])  # all outside
    labels = torch.tensor([[0, 1]])
    out = CenterNetLoss()(outs, boxes, labels, (64, 64))
    assert out["num_objects"] == 0 and torch.isfinite(out["loss"])
    want = sum(
        port_neg_loss(outs[0][f"{k}_heat"], torch.zeros(1, 2, 16, 16, dtype=torch.float64))
        for k in ("tl", "br", "ct")
    )
    torch.testing.assert_close(out["loss"].double(), want.double(), rtol=1e-6, atol=1e-6)
    out["loss"].backward()
    assert outs[0]["tl_regr"].grad.abs().sum() == 0  # no offsets without objects


def test_bad_radius_option_is_one_line():
    with pytest.raises(ValueError, match="radius="):
        CenterNetLoss(radius="exactly")
