"""ONNX export of YOLOv3: network + ``decode`` in one graph with a dynamic batch.

Outputs ``boxes`` (B, N, 4) corner pixels of the input and ``scores`` (B, N, C) (objectness x
class probability); thresholds and NMS stay outside the graph (``detect.postprocess`` or the
runtime's own). The graph is traced at ``size`` (H, W): the batch is dynamic, the input size is
fixed (export once per size). TorchScript-based exporter (``dynamo=False``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from src.utils.onnx_export import export_onnx_graph

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
    axes = {"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}}
    return export_onnx_graph(DecodedYOLOv3(net), path, (1, 3, *size), ["boxes", "scores"], axes)
