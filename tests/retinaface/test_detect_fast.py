"""The fast post-processing (candidates-only softmax and decoding, top-k first, NMS that stops
once ``keep_top_k`` are kept) against the numpy port of the reference detect.py
(tests/retinaface/reference.py): same boxes, scores and landmarks (float64, 1e-9), same order,
at the benchmark's size (1024 x 768 input, default configuration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import src.models.retinaface.detect as D
from src.models.retinaface import prior_boxes
from src.models.retinaface.detect import DetectConfig, _candidates, detect
from tests.retinaface.reference import reference_detect


def outputs(batch, priors, seed, hot, spread=0.6, base=-6.0):
    """``hot`` priors per image (a list) well above 0.02, the rest mostly below; ``spread`` is
    the scale of the box offsets (small: boxes stay on their priors and overlap, so NMS keeps
    few; large: scattered boxes, NMS keeps most)."""
    p = priors.shape[0]
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, p, 4, generator=g, dtype=torch.float64) * spread
    conf = torch.randn(batch, p, 2, generator=g, dtype=torch.float64)
    conf[..., 1] += base
    for i, n in enumerate(hot):
        idx = torch.randperm(p, generator=g)[:n]
        conf[i, idx, 1] += -base + 4.0 * torch.rand(n, generator=g, dtype=torch.float64)
    landm = torch.randn(batch, p, 10, generator=g, dtype=torch.float64)
    return loc, conf, landm


def check_against_reference(ours, loc, conf, landm, priors, size, cfg, scale=None):
    for i, o in enumerate(ours):
        dets, lm = reference_detect(
            loc[i].numpy(),
            conf[i].numpy(),
            landm[i].numpy(),
            priors.numpy(),
            *size,
            resize=1.0 if scale is None else float(scale[i]),
            top_k=cfg.top_k,
            keep_top_k=cfg.keep_top_k,
        )
        assert len(o["boxes"]) == len(dets)
        np.testing.assert_allclose(o["boxes"].numpy(), dets[:, :4], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(o["scores"].numpy(), dets[:, 4], rtol=1e-12)
        np.testing.assert_allclose(o["landmarks"].numpy(), lm, rtol=1e-9, atol=1e-9)


def test_benchmark_size_default_config_equals_reference():
    size = (768, 1024)
    priors = prior_boxes(size, dtype=torch.float64)
    loc, conf, landm = outputs(1, priors, seed=3, hot=[2000])
    n = int((conf.softmax(-1)[0, :, 1] > 0.02).sum())
    assert 2000 < n < 5000  # about the benchmark's candidate count, below top_k
    cfg = DetectConfig()
    out = detect(loc, conf, landm, priors, size, cfg=cfg)
    assert len(out[0]["boxes"]) == cfg.keep_top_k  # the early stop is what decided the output
    check_against_reference(out, loc, conf, landm, priors, size, cfg)


@pytest.mark.parametrize("spread", [0.02, 0.6])
def test_batch_topk_cut_growth_and_empty_images(spread, monkeypatch):
    # image 0: more candidates than top_k (the cut applies); 1: none; 2: a few; 3: many.
    # spread 0.02: overlapping boxes, NMS keeps few, the prefix has to grow (more NMS rounds)
    size = (160, 224)
    priors = prior_boxes(size, dtype=torch.float64)
    loc, conf, landm = outputs(4, priors, seed=11, hot=[900, 0, 30, 600], spread=spread)
    conf[1, :, 1] = -30.0
    cfg = DetectConfig(top_k=700, keep_top_k=60)
    calls = []
    real = D.batched_nms

    def counting(boxes, *args, **kw):
        calls.append(len(boxes))
        return real(boxes, *args, **kw)

    monkeypatch.setattr(D, "batched_nms", counting)
    scale = torch.tensor([1.0, 0.5, 2.0, 0.75], dtype=torch.float64)
    out = detect(loc, conf, landm, priors, size, scale=scale, cfg=cfg)
    assert len(out[1]["boxes"]) == 0
    check_against_reference(out, loc, conf, landm, priors, size, cfg, scale)
    # the first round sees prefixes of 1.25 * keep_top_k candidates per image, not all of them
    assert calls[0] <= 3 * 75 < 700


def test_prefix_grows_until_enough_are_kept(monkeypatch):
    # 300 high-scoring copies of one box (NMS keeps one), then 10 separate lower-scoring boxes:
    # keeping 5 needs the prefix to grow past the whole cluster
    size = (100, 100)
    cluster = torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=torch.float64).expand(300, 4)
    xs = (torch.arange(10, dtype=torch.float64) + 0.5) / 10
    apart = torch.stack(
        [xs, torch.full_like(xs, 0.05), torch.full_like(xs, 0.08), torch.full_like(xs, 0.08)], 1
    )
    priors = torch.cat([cluster, apart])
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(1, 310, 4, generator=g, dtype=torch.float64) * 1e-3
    conf = torch.zeros(1, 310, 2, dtype=torch.float64)
    conf[0, :300, 1] = 5 + torch.rand(300, generator=g, dtype=torch.float64)
    conf[0, 300:, 1] = 1 + torch.rand(10, generator=g, dtype=torch.float64)
    landm = torch.randn(1, 310, 10, generator=g, dtype=torch.float64)
    calls = []
    real = D.batched_nms

    def counting(boxes, *args, **kw):
        calls.append(len(boxes))
        return real(boxes, *args, **kw)

    monkeypatch.setattr(D, "batched_nms", counting)
    cfg = DetectConfig(keep_top_k=5)
    out = detect(loc, conf, landm, priors, size, cfg=cfg)
    assert calls[0] == 64 and len(calls) > 1 and calls[-1] == 310
    assert len(out[0]["boxes"]) == 5
    check_against_reference(out, loc, conf, landm, priors, size, cfg)


def test_same_result_with_and_without_early_stop():
    size = (96, 128)
    priors = prior_boxes(size, dtype=torch.float64)
    loc, conf, landm = outputs(2, priors, seed=5, hot=[500, 300])
    full = detect(loc, conf, landm, priors, size, cfg=DetectConfig(keep_top_k=100_000))
    for k in (1, 7, 50, 200):
        part = detect(loc, conf, landm, priors, size, cfg=DetectConfig(keep_top_k=k))
        for a, b in zip(full, part):
            for key in a:
                torch.testing.assert_close(a[key][:k], b[key], rtol=0, atol=0)


def test_candidates_equal_thresholding_the_full_softmax():
    # logits straddling logit(0.02) within float rounding, large logits, float32 and float64
    g = torch.Generator().manual_seed(0)
    edge = float(np.log(0.02) - np.log1p(-0.02))
    for dtype in (torch.float32, torch.float64):
        c0 = torch.randn(3, 4000, generator=g, dtype=torch.float64) * 50
        d = edge + torch.randn(3, 4000, generator=g, dtype=torch.float64) * 1e-6
        d[:, :1000] = torch.randn(3, 1000, generator=g, dtype=torch.float64) * 10
        conf = torch.stack([c0, c0 + d], -1).to(dtype)
        scores = conf.softmax(-1)[..., 1]
        want_img, want_pri = torch.nonzero(scores > 0.02, as_tuple=True)
        img, pri, s = _candidates(conf, 0.02)
        assert torch.equal(img, want_img) and torch.equal(pri, want_pri)
        torch.testing.assert_close(s, scores[want_img, want_pri], rtol=1e-6, atol=0)
    img, _, _ = _candidates(conf, 0.0)  # threshold 0: every prior with a positive score
    assert len(img) == int((conf.softmax(-1)[..., 1] > 0).sum())


def test_priors_none_uses_the_cached_priors():
    size = (64, 96)
    a = prior_boxes(size)
    assert prior_boxes(size) is a  # one tensor per (size, device, dtype)
    loc, conf, landm = (t.float() for t in outputs(2, a, seed=2, hot=[200, 50]))
    with_priors = detect(loc, conf, landm, a, size)
    without = detect(loc, conf, landm, None, size)
    for x, y in zip(with_priors, without):
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def test_half_precision_outputs_run_in_float32():
    size = (64, 64)
    priors = prior_boxes(size)
    loc, conf, landm = (t.half() for t in outputs(1, priors, seed=4, hot=[100]))
    out = detect(loc, conf, landm, priors, size)
    assert out[0]["boxes"].dtype == torch.float32 and len(out[0]["boxes"]) > 0
