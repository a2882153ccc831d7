"""Batched decoding + triplet filter + soft-NMS against a per-image numpy loop port of the
reference's post-processing (kp_utils._decode, test/coco.py kp_detection, nms.pyx soft_nms with
its discarded boxes removed), on seeded random maps, with and without the flip test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.models.centernet.decode import DecodeConfig, decode, postprocess, soft_nms_batched


def _maps(seed, b, c=3, h=20, w=24):
    g = torch.Generator().manual_seed(seed)
    r = lambda d, s=1.0: s * torch.randn(b, d, h, w, generator=g, dtype=torch.float64)  # noqa: E731
    return {
        "tl_heat": r(c, 2),
        "br_heat": r(c, 2),
        "ct_heat": r(c, 2),
        "tl_tag": r(1, 0.3),
        "br_tag": r(1, 0.3),
        "tl_regr": r(1).sigmoid().repeat(1, 2, 1, 1),
        "br_regr": r(2).sigmoid(),
        "ct_regr": r(2).sigmoid(),
    }


# ---- the per-image port ----------------------------------------------------------------
def _nms_np(heat):
    c, h, w = heat.shape
    pad = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.max([pad[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], 0)
    return heat * (win == heat)


def _topk_np(heat, k):
    c, h, w = heat.shape
    flat = heat.reshape(-1)
    inds = np.argsort(-flat, kind="stable")[:k]
    cls, pix = inds // (h * w), inds % (h * w)
    return flat[inds], pix, cls, (pix // w).astype(float), (pix % w).astype(float)


def port_decode(m, k=70, ae=0.5, num_dets=1000):
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    tl, br, ct = (_nms_np(sig(m[n])) for n in ("tl_heat", "br_heat", "ct_heat"))
    ts, tp, tc, ty, tx = _topk_np(tl, k)
    bs, bp, bc, by, bx = _topk_np(br, k)
    cs, cp, cc, cy, cx = _topk_np(ct, k)
    at = lambda f, p: f.reshape(f.shape[0], -1)[:, p].T  # noqa: E731
    tx, ty = tx + at(m["tl_regr"], tp)[:, 0], ty + at(m["tl_regr"], tp)[:, 1]
    bx, by = bx + at(m["br_regr"], bp)[:, 0], by + at(m["br_regr"], bp)[:, 1]
    cx, cy = cx + at(m["ct_regr"], cp)[:, 0], cy + at(m["ct_regr"], cp)[:, 1]
    scores = (ts[:, None] + bs[None, :]) / 2
    dist = np.abs(at(m["tl_tag"], tp)[:, 0][:, None] - at(m["br_tag"], bp)[:, 0][None, :])
    bad = (
        (tc[:, None] != bc[None, :])
        | (dist > ae)
        | (bx[None, :] < tx[:, None])
        | (by[None, :] < ty[:, None])
    )
    scores[bad] = -1
    boxes = np.stack(np.broadcast_arrays(tx[:, None], ty[:, None], bx[None, :], by[None, :]), -1)
    order = np.argsort(-scores.reshape(-1), kind="stable")[:num_dets]
    dets = np.c_[
        boxes.reshape(-1, 4)[order],
        scores.reshape(-1)[order],
        np.broadcast_to(tc[:, None], (k, k)).reshape(-1)[order],
    ]
    return dets, np.c_[cx, cy, cc, cs]


def port_soft_nms(boxes, sigma=0.5, floor=0.001):
    boxes = boxes.copy()
    n, i = len(boxes), 0
    while i < n:
        j = i + int(np.argmax(boxes[i:n, 4]))
        boxes[[i, j]] = boxes[[j, i]]
        t = boxes[i]
        pos = i + 1
        while pos < n:
            x1, y1, x2, y2, s = boxes[pos, :5]
            iw = min(t[2], x2) - max(t[0], x1) + 1
            if iw > 0:
                ih = min(t[3], y2) - max(t[1], y1) + 1
                if ih > 0:
                    ua = (
                        (t[2] - t[0] + 1) * (t[3] - t[1] + 1)
                        + (x2 - x1 + 1) * (y2 - y1 + 1)
                        - iw * ih
                    )
                    ov = iw * ih / ua
                    boxes[pos, 4] = s * math.exp(-(ov * ov) / sigma)
                    if boxes[pos, 4] < floor:
                        boxes[pos] = boxes[n - 1]
                        n -= 1
                        pos -= 1
            pos += 1
        i += 1
    return boxes[:n]


def port_image(maps_list, flip, in_size, out_size, orig, scale, pad, max_per_image=100):
    """One image: decode (and its mirror), rescale, reject, clip, triplet filter, soft-NMS."""
    dets, cents = [], []
    for f, m in enumerate(maps_list):
        d, c = port_decode(m)
        if f == 1:
            d[:, [0, 2]] = out_size[1] - d[:, [2, 0]]
            c[:, 0] = out_size[1] - c[:, 0]
        dets.append(d)
        cents.append(c)
    d, c = np.concatenate(dets), np.concatenate(cents)
    rx, ry = out_size[1] / in_size[1], out_size[0] / in_size[0]
    h, w = orig
    d[:, [0, 2]] = (d[:, [0, 2]] / rx - pad[0]) / scale
    d[:, [1, 3]] = (d[:, [1, 3]] / ry - pad[1]) / scale
    c[:, 0] = (c[:, 0] / rx - pad[0]) / scale
    c[:, 1] = (c[:, 1] / ry - pad[1]) / scale
    out = (d[:, 0] <= -5) | (d[:, 2] >= w + 5) | (d[:, 1] <= -5) | (d[:, 3] >= h + 5)
    d[out, 4] = -1
    d[:, [0, 2]] = d[:, [0, 2]].clip(0, w)
    d[:, [1, 3]] = d[:, [1, 3]].clip(0, h)
    c[:, 0], c[:, 1] = c[:, 0].clip(0, w), c[:, 1].clip(0, h)
    d = d[d[:, 4] > -1]
    kept = []
    for det in d:  # triplet filter, one box at a time
        x1, y1, x2, y2, s, cl = det
        n = 3 if (x2 - x1) * (y2 - y1) <= 22500 else 5
        lx, rx_ = (
            ((n + 1) / 2 * x1 + (n - 1) / 2 * x2) / n,
            ((n - 1) / 2 * x1 + (n + 1) / 2 * x2) / n,
        )
        ty, by = (
            ((n + 1) / 2 * y1 + (n - 1) / 2 * y2) / n,
            ((n - 1) / 2 * y1 + (n + 1) / 2 * y2) / n,
        )
        for cx, cy, cc, cs in c:
            if cx > lx and cx < rx_ and cy > ty and cy < by and cc == cl:
                kept.append([x1, y1, x2, y2, (2 * s + cs) / 3, cl])
                break
    kept = np.array(kept).reshape(-1, 6)
    final = []
    for cl in np.unique(kept[:, 5]):
        final.append(port_soft_nms(kept[kept[:, 5] == cl]))
    final = np.concatenate(final) if final else np.zeros((0, 6))
    return final[np.argsort(-final[:, 4], kind="stable")][:max_per_image]


@pytest.mark.parametrize("flip", [False, True])
def test_postprocess_equals_per_image_loop_port(flip):
    b, in_size, out_size = 3, (80, 96), (20, 24)
    maps = _maps(0, 2 * b if flip else b)
    orig = torch.tensor([[80, 96], [60, 72], [160, 192]])
    scale = torch.tensor([1.0, 0.75, 2.0], dtype=torch.float64)
    pad = torch.tensor([[0.0, 0.0], [0.0, 10.0], [0.0, 0.0]], dtype=torch.float64)
    got = postprocess(
        decode(maps), in_size, orig, scale, pad, DecodeConfig(), flip=flip, map_size=out_size
    )
    for i in range(b):
        per = [{k: v[i].numpy() for k, v in maps.items()}]
        if flip:
            per.append({k: v[b + i].numpy() for k, v in maps.items()})
        want = port_image(
            per, flip, in_size, out_size, orig[i].tolist(), float(scale[i]), pad[i].tolist()
        )
        n = int((got["labels"][i] >= 0).sum())
        assert n == len(want) and n > 0
        np.testing.assert_allclose(got["scores"][i, :n].numpy(), want[:, 4], rtol=1e-9)
        np.testing.assert_allclose(got["boxes"][i, :n].numpy(), want[:, :4], rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(got["labels"][i, :n].numpy(), want[:, 5])


def test_soft_nms_batched_equals_loop_and_keeps_100():
    g = np.random.default_rng(3)
    xy = g.uniform(0, 200, (2, 300, 2))
    boxes = np.concatenate([xy, xy + g.uniform(5, 80, (2, 300, 2))], -1)
    scores = g.uniform(0, 1, (2, 300))
    scores[0, :50] = -1  # absent
    labels = g.integers(0, 4, (2, 300))
    got = soft_nms_batched(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels))
    for i in range(2):
        ok = scores[i] > -1
        rows = np.c_[boxes[i][ok], scores[i][ok], labels[i][ok]]
        want = np.concatenate([port_soft_nms(rows[rows[:, 5] == c]) for c in range(4)])
        want = want[np.argsort(-want[:, 4], kind="stable")][:100]
        np.testing.assert_allclose(got["scores"][i].numpy(), want[:, 4], rtol=1e-9)
        np.testing.assert_allclose(got["boxes"][i].numpy(), want[:, :4])


def test_empty_decode_gives_padding():
    maps = _maps(1, 1)
    maps["tl_tag"] = maps["tl_tag"] + 100  # every pair fails the embedding test
    got = postprocess(
        decode(maps), (80, 96), torch.tensor([[80, 96]]), 1.0, (0, 0), flip=False, map_size=(20, 24)
    )
    assert (got["labels"] == -1).all() and (got["scores"] == 0).all()


def _port_groups(boxes, scores, labels, sigma=0.5, floor=0.001, max_per_image=100):
    ok = scores > -1
    rows = np.c_[boxes[ok], scores[ok], labels[ok]]
    parts = [port_soft_nms(rows[rows[:, 5] == c], sigma, floor) for c in np.unique(rows[:, 5])]
    want = np.concatenate(parts) if parts else np.zeros((0, 6))
    return want[np.argsort(-want[:, 4], kind="stable")][:max_per_image]


@pytest.mark.parametrize("floor", [0.001, 0.3, 0.6])
def test_soft_nms_batched_ties_follow_the_reference_working_array(floor):
    """Scores on a few levels and boxes on a coarse grid: many exact ties, many boxes dropped
    (the reference's swap-with-last removal permutes its array, which decides later ties)."""
    g = np.random.default_rng(7)
    b, n = 3, 160
    xy = g.integers(0, 6, (b, n, 2)) * 10.0
    boxes = np.concatenate([xy, xy + g.integers(1, 4, (b, n, 2)) * 10.0], -1)
    scores = g.integers(1, 5, (b, n)) / 4.0
    scores[1, ::3] = -1
    labels = g.integers(0, 3, (b, n))
    for p in (100, 7):
        got = soft_nms_batched(
            torch.tensor(boxes),
            torch.tensor(scores),
            torch.tensor(labels),
            floor=floor,
            max_per_image=p,
        )
        for i in range(b):
            want = _port_groups(boxes[i], scores[i], labels[i], floor=floor, max_per_image=p)
            k = len(want)
            assert (got["labels"][i, k:] == -1).all()
            np.testing.assert_array_equal(got["labels"][i, :k].numpy(), want[:, 5])
            np.testing.assert_array_equal(got["boxes"][i, :k].numpy(), want[:, :4])
            np.testing.assert_allclose(got["scores"][i, :k].numpy(), want[:, 4], rtol=1e-12)


def test_soft_nms_batched_early_exit_changes_nothing():
    g = np.random.default_rng(11)
    b, n = 4, 600
    xy = g.uniform(0, 300, (b, n, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + g.uniform(5, 120, (b, n, 2))], -1))
    scores = torch.tensor(g.uniform(0, 1, (b, n)))
    labels = torch.tensor(g.integers(0, 3, (b, n)))
    fast = soft_nms_batched(boxes, scores, labels, check_every=1)
    full = soft_nms_batched(boxes, scores, labels, max_per_image=n)
    for k in fast:
        torch.testing.assert_close(fast[k], full[k][:, :100], rtol=0, atol=0)
    for i in range(b):
        want = _port_groups(boxes[i].numpy(), scores[i].numpy(), labels[i].numpy())
        np.testing.assert_allclose(fast["scores"][i].numpy(), want[:, 4], rtol=1e-12)


def test_peak_topk_equals_full_map_pooling_with_ties():
    from src.models.centernet.decode import _peak_topk, _topk, peak_nms

    g = torch.Generator().manual_seed(5)
    heat = torch.randn(2, 4, 40, 48, generator=g, dtype=torch.float64)
    heat[0, 1, 10:30, 10:30] = 3.0  # a plateau: ties, and many positions that are not peaks
    heat[1] = torch.round(heat[1] * 2) / 2  # few distinct levels
    for first in (8, 1024):  # 8: the candidate set must grow
        got = _peak_topk(heat, 70, 3, first=first)
        want = _topk(peak_nms(torch.sigmoid(heat)), 70)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)  # the K best values
        # positions: ties in flat-index order (the reference's stable argsort; topk has none)
        pk = peak_nms(torch.sigmoid(heat)).reshape(2, -1)
        order = torch.sort(pk, dim=1, descending=True, stable=True).indices[:, :70]
        torch.testing.assert_close(got[2] * 40 * 48 + got[1], order, rtol=0, atol=0)
        pix = order % (40 * 48)
        torch.testing.assert_close(got[3], (pix // 48).double(), rtol=0, atol=0)
        torch.testing.assert_close(got[4], (pix % 48).double(), rtol=0, atol=0)
