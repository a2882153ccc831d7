"""Post-processing vs a numpy port of the reference detect.py pipeline (decode, threshold,
argsort, py_cpu_nms with +1 areas, keep-top-k), batched over images of one input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.models.retinaface import prior_boxes
from src.models.retinaface.detect import DetectConfig, _groups, decode, detect
from tests.retinaface.reference import reference_detect


def synthetic_outputs(batch, num_priors, seed, faces_like=True):
    """Outputs with distinct scores and clusters of overlapping boxes (what NMS is for)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, num_priors, 4, generator=g, dtype=torch.float64) * 0.6
    conf = torch.randn(batch, num_priors, 2, generator=g, dtype=torch.float64) * 2
    if faces_like:
        conf[..., 1] -= 3.0  # most priors below 0.02, a few thousand above
    landm = torch.randn(batch, num_priors, 10, generator=g, dtype=torch.float64)
    return loc, conf, landm


@pytest.mark.parametrize("size,batch", [((96, 128), 3), ((160, 160), 2)])
def test_detect_matches_reference_pipeline(size, batch):
    h, w = size
    priors = prior_boxes(size, dtype=torch.float64)
    loc, conf, landm = synthetic_outputs(batch, priors.shape[0], seed=h + batch)
    cfg = DetectConfig(top_k=300, keep_top_k=40)
    ours = detect(loc, conf, landm, priors, size, cfg=cfg)
    assert len(ours) == batch
    for i in range(batch):
        dets, lm = reference_detect(
            loc[i].numpy(),
            conf[i].numpy(),
            landm[i].numpy(),
            priors.numpy(),
            h,
            w,
            top_k=300,
            keep_top_k=40,
        )
        assert len(dets) == len(ours[i]["boxes"]) > 5
        np.testing.assert_allclose(ours[i]["boxes"].numpy(), dets[:, :4], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours[i]["scores"].numpy(), dets[:, 4], rtol=1e-9)
        np.testing.assert_allclose(ours[i]["landmarks"].numpy(), lm, rtol=1e-9, atol=1e-9)


def test_defaults_scale_groups_and_float32():
    size = (128, 96)
    priors = prior_boxes(size)
    loc, conf, landm = (t.float() for t in synthetic_outputs(4, priors.shape[0], seed=1))
    scale = torch.tensor([1.0, 0.5, 2.0, 1.0])
    # a tiny group limit forces one NMS call per image: same result as one call
    one = detect(loc, conf, landm, priors, size, scale=scale)
    many = detect(loc, conf, landm, priors, size, scale=scale, cfg=DetectConfig(max_nms_boxes=1))
    for a, b in zip(one, many):
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    for i in range(4):
        dets, lm = reference_detect(
            loc[i].double().numpy(),
            conf[i].double().numpy(),
            landm[i].double().numpy(),
            priors.numpy(),
            *size,
            resize=float(scale[i]),
        )
        assert len(dets) == len(one[i]["boxes"])
        np.testing.assert_allclose(one[i]["boxes"].numpy(), dets[:, :4], rtol=1e-4, atol=1e-3)
        assert torch.all(one[i]["scores"][:-1] >= one[i]["scores"][1:])


def test_offset_one_is_what_matches_the_reference():
    # two 10 px boxes overlapping 5.5 px: IoU 55/145 = 0.379 with plain areas (kept at 0.4),
    # 71.5/170.5 = 0.419 with +1 areas (suppressed, as py_cpu_nms does)
    size = (64, 64)
    priors = torch.tensor(
        [[0.25, 0.25, 10 / 64, 10 / 64], [0.25 + 4.5 / 64, 0.25, 10 / 64, 10 / 64]],
        dtype=torch.float64,
    )
    loc = torch.zeros(1, 2, 4, dtype=torch.float64)
    conf = torch.tensor([[[0.0, 3.0], [0.0, 2.0]]], dtype=torch.float64)
    landm = torch.zeros(1, 2, 10, dtype=torch.float64)
    ref = reference_detect(
        loc[0].numpy(), conf[0].numpy(), landm[0].numpy(), priors.numpy(), *size
    )[0]
    assert len(ref) == 1
    assert len(detect(loc, conf, landm, priors, size)[0]["boxes"]) == 1
    assert (
        len(detect(loc, conf, landm, priors, size, cfg=DetectConfig(nms_offset=0))[0]["boxes"]) == 2
    )


def test_no_detection_and_decode_roundtrip():
    size = (64, 64)
    priors = prior_boxes(size)
    n = priors.shape[0]
    conf = torch.zeros(2, n, 2)
    conf[..., 0] = 10.0  # every score ~ 4.5e-5 < 0.02
    out = detect(torch.zeros(2, n, 4), conf, torch.zeros(2, n, 10), priors, size)
    assert [len(o["boxes"]) for o in out] == [0, 0]
    boxes, scores, pts = decode(torch.zeros(1, n, 4), conf[:1], torch.zeros(1, n, 10), priors)
    torch.testing.assert_close(boxes[0, :, :2], priors[:, :2] - priors[:, 2:] / 2)
    torch.testing.assert_close(pts[0, :, 8:], priors[:, :2])


def test_groups():
    assert _groups([3, 4, 5, 1], 8) == [(0, 2), (2, 4)]
    assert _groups([10, 1], 8) == [(0, 1), (1, 2)]
    assert _groups([], 8) == []
