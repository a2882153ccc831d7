"""Post-processing against a plain per-image loop over torchvision.ops.batched_nms, ONNX export
in onnxruntime, and the letterbox round trip of predicted boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from src.models.yolov3 import YOLOv3, decode
from src.models.yolov3.detect import postprocess


def plain_postprocess(decoded, conf, iou, multi_label, max_det):
    out = []
    for d in decoded:  # one image at a time, as the archive's non_max_suppression
        xy, wh = d[:, :2], d[:, 2:4]
        boxes = torch.cat((xy - wh / 2, xy + wh / 2), 1)
        scores = d[:, 4:5] * d[:, 5:]
        ok = ((wh > 2) & (wh < 4096)).all(1)
        if multi_label:
            i, j = ((scores > conf) & ok[:, None]).nonzero(as_tuple=True)
            s = scores[i, j]
        else:
            s, j = scores.max(1)
            i = ((s > conf) & ok).nonzero(as_tuple=True)[0]
            s, j = s[i], j[i]
        keep = torchvision.ops.batched_nms(boxes[i], s, j, iou)[:max_det]
        out.append({"boxes": boxes[i][keep], "scores": s[keep], "labels": j[keep]})
    return out


def _decoded(seed=0, B=3):
    g = torch.Generator().manual_seed(seed)
    n, c = 400, 4
    xy = torch.rand(B, n, 2, generator=g) * 200
    wh = torch.rand(B, n, 2, generator=g) * 60 + 1
    obj = torch.rand(B, n, 1, generator=g)
    cls = torch.rand(B, n, c, generator=g)
    return torch.cat((xy, wh, obj, cls), -1)


@pytest.mark.parametrize(
    ("conf", "iou", "multi_label", "max_det"),
    [(0.001, 0.6, True, 300), (0.3, 0.5, False, 300), (0.01, 0.5, True, 7)],
)
def test_postprocess_equals_plain_loop(conf, iou, multi_label, max_det):
    decoded = _decoded()
    ours = postprocess(decoded, conf, iou, multi_label, max_det)
    ref = plain_postprocess(decoded, conf, iou, multi_label, max_det)
    assert sum(len(r["scores"]) for r in ref) > 20
    for o, r in zip(ours, ref):
        assert torch.equal(o["scores"], r["scores"])
        assert torch.equal(o["labels"], r["labels"])
        assert torch.equal(o["boxes"], r["boxes"])


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
