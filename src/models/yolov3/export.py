"""ONNX export of YOLOv3: network + ``decode`` in one graph with a dynamic batch.

Outputs ``boxes`` (B, N, 4) corner pixels of the input and ``scores`` (B, N, C) (objectness x
class probability); thresholds and NMS stay outside the graph (``detect.postprocess`` or the
runtime's own). The graph is traced at ``size`` (H, W): the batch is dynamic, the input size is
fixed (export once per size). TorchScript-based exporter (``dynamo=False``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .detect import scores_of, xywh_to_corners
from .model import decode


class DecodedYOLOv3(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = decode(self.net(x), self.net.layer_anchors(), self.net.strides)
        return xywh_to_corners(d[..., :4]), scores_of(d)


def export_onnx(net: nn.Module, path: Path, size: tuple[int, int] = (416, 416)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = DecodedYOLOv3(net).eval()
    device = next(net.parameters()).device
    sample = torch.zeros(1, 3, int(size[0]), int(size[1]), device=device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=["images"],
            output_names=["boxes", "scores"],
            dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path
