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
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    sample = torch.zeros(batch_size, 3, *sample_size, device=param.device, dtype=param.dtype)
    net = _WithSoftmax(model) if softmax else model
    was_training = model.training
    model.eval()
    axes = {
        "images": {0: "batch", 2: "height", 3: "width"},
        "loc": {0: "batch", 1: "priors"},
        "conf": {0: "batch", 1: "priors"},
        "landm": {0: "batch", 1: "priors"},
    }
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                net,
                (sample,),
                str(path),
                input_names=["images"],
                output_names=["loc", "conf", "landm"],
                dynamic_axes=axes,
                opset_version=opset_version,
                dynamo=dynamo,
            )
    finally:
        model.train(was_training)
    return path
