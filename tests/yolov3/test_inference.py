"""Post-processing against the per-image port of the archive's non_max_suppression (tests/yolov3/
archive_port.py), ONNX export in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.models.yolov3 import YOLOv3, decode
from src.models.yolov3.detect import postprocess
from tests.yolov3.archive_port import archive_non_max_suppression


def _decoded(seed=0, B=3, n=400, c=4, sparse=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, n, 2, generator=g) * 200
    wh = torch.rand(B, n, 2, generator=g) * 60 + 1
    obj = torch.rand(B, n, 1, generator=g)
    if sparse:  # as a trained model: ~5% of the anchors confident, the rest near zero
        obj = torch.where(torch.rand(B, n, 1, generator=g) < 0.05, obj, obj * 1e-3)
    cls = torch.rand(B, n, c, generator=g)
    return torch.cat((xy, wh, obj, cls), -1)


@pytest.mark.parametrize(
    ("conf", "iou", "multi_label", "max_det", "max_nms", "kw"),
    [
        (0.001, 0.6, True, 300, 30000, {}),
        (0.3, 0.5, False, 300, 30000, {}),
        (0.01, 0.5, True, 7, 30000, {}),
        (0.001, 0.6, True, 300, 30000, {"sparse": True, "n": 2000}),
        (0.001, 0.6, True, 300, 50, {}),  # the pre-NMS cap binds
        (0.001, 0.6, True, 300, 30000, {"c": 1}),  # one class: the score is the objectness
        (0.001, 0.6, True, 300, 30000, {"B": 1, "c": 20, "seed": 3}),
    ],
)
def test_postprocess_equals_archive_port(conf, iou, multi_label, max_det, max_nms, kw):
    """Same boxes, scores and labels in the same order as the archive's per-image loop."""
    decoded = _decoded(**kw)
    ours = postprocess(decoded, conf, iou, multi_label, max_det, max_nms=max_nms)
    ref = archive_non_max_suppression(decoded, conf, iou, multi_label, max_det, max_nms)
    assert len(ours) == len(ref) == decoded.shape[0]
    assert sum(len(r["scores"]) for r in ref) > 20
    for o, r in zip(ours, ref):
        assert torch.equal(o["scores"], r["scores"])
        assert torch.equal(o["labels"], r["labels"])
        assert torch.equal(o["boxes"], r["boxes"])
    if max_nms < 30000:
        assert all(len(o["scores"]) <= max_nms for o in ours)


def test_postprocess_is_per_image_and_handles_empty():
    decoded = _decoded(B=4)
    together = postprocess(decoded, 0.01, 0.5)
    for i in range(4):
        alone = postprocess(decoded[i : i + 1], 0.01, 0.5)[0]
        assert torch.equal(alone["boxes"], together[i]["boxes"])
    decoded[2, :, 4] = 0.0  # an image without candidates
    out = postprocess(decoded, 0.01, 0.5)
    assert out[2]["boxes"].shape == (0, 4) and out[2]["labels"].numel() == 0
    assert all(len(o["scores"]) == 0 for o in postprocess(decoded, 1.0, 0.5))


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from src.models.yolov3.export import DecodedYOLOv3, export_onnx

    torch.manual_seed(0)
    net = YOLOv3(num_classes=3, width=0.125, blocks=(1, 1, 1, 1, 1)).eval()
    path = export_onnx(net, tmp_path / "y.onnx", (64, 64))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch
        x = torch.randn(batch, 3, 64, 64)
        boxes, scores = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want_boxes, want_scores = DecodedYOLOv3(net)(x)
        np.testing.assert_allclose(boxes, want_boxes.numpy(), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-4, atol=1e-5)
        d = decode(net(x), net.layer_anchors(), net.strides)
        assert boxes.shape == (batch, d.shape[1], 4) and scores.shape == (batch, d.shape[1], 3)
