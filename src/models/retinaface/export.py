"""ONNX export of the RetinaFace network with dynamic batch, height and width.

The graph has one input ``images`` (B, 3, H, W) and outputs ``loc`` (B, P, 4), ``conf``
(B, P, 2) and ``landm`` (B, P, 10) where P depends on H and W as ``priors.num_priors``.
``conf`` is raw logits unless ``softmax=True`` (the reference's test-phase output). Priors and
decoding stay outside the graph.

Uses the TorchScript-based exporter (``dynamo=False``): it needs only ``onnx``; the
torch.export-based exporter additionally needs ``onnxscript``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from src.utils.onnx_export import export_onnx_graph


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        loc, conf, landm = self.model(images)
        return loc, conf.softmax(dim=-1), landm


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    sample_size: tuple[int, int] = (640, 640),
    batch_size: int = 1,
    opset_version: int = 17,
    softmax: bool = False,
    dynamo: bool = False,
) -> Path:
    """Export ``model`` (in eval mode) to ``path``; returns the path.

    ``sample_size`` is the (H, W) of the tracing input; the exported graph accepts any batch,
    height and width. The model's training flag is restored afterwards.
    """
    axes = {
        "images": {0: "batch", 2: "height", 3: "width"},
        "loc": {0: "batch", 1: "priors"},
        "conf": {0: "batch", 1: "priors"},
        "landm": {0: "batch", 1: "priors"},
    }
    graph = _WithSoftmax(model) if softmax else model
    shape = (batch_size, 3, *sample_size)
    outputs = ["loc", "conf", "landm"]
    return export_onnx_graph(graph, path, shape, outputs, axes, "images", opset_version, dynamo)
