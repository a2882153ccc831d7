"""ONNX export of CenterNet up to soft-NMS: the network (last stack) and ``decode``.

Inputs ``images`` (B, 3, H, W) at the traced H, W (the corner-pool scan is unrolled for that
size); outputs ``boxes`` (B, D, 4) and ``centers`` (B, K, 2) in INPUT pixels, ``scores``,
``classes``, ``ct_scores``, ``ct_classes``. Flip merging, the letterbox inverse, the triplet
filter and soft-NMS run outside the graph (``postprocess``, with ``flip=False``; pass the maps'
size ``H / 4`` via ``map_size`` after dividing the boxes back, or use ``postprocess_input``).
Uses the TorchScript-based exporter (``dynamo=False``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from src.models.centernet.decode import DecodeConfig, decode
from src.utils.onnx_export import export_onnx_graph

OUTPUTS = ("boxes", "scores", "classes", "centers", "ct_scores", "ct_classes")


class DecodeGraph(nn.Module):
    def __init__(self, net: nn.Module, cfg: DecodeConfig):
        super().__init__()
        self.net, self.cfg = net, cfg

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.net(images)[-1]
        d = decode(out, self.cfg)
        h, w = out["tl_heat"].shape[-2:]
        ratio = torch.stack(
            (
                torch.tensor(w, dtype=images.dtype) / images.shape[3],
                torch.tensor(h, dtype=images.dtype) / images.shape[2],
            )
        )
        boxes = d["boxes"] / ratio.repeat(2)
        centers = d["centers"] / ratio
        return boxes, d["scores"], d["classes"], centers, d["ct_scores"], d["ct_classes"]


def export_onnx(
    net: nn.Module,
    path: str | os.PathLike,
    sample_size: tuple[int, int] = (511, 511),
    cfg: DecodeConfig | None = None,
    opset_version: int = 17,
) -> Path:
    cfg = DecodeConfig() if cfg is None else cfg
    axes = {"images": {0: "batch"}, **{k: {0: "batch"} for k in OUTPUTS}}
    graph, shape = DecodeGraph(net, cfg), (1, 3, *sample_size)
    return export_onnx_graph(graph, path, shape, OUTPUTS, axes, opset_version=opset_version)
