"""ONNX export of an image-to-image generator: input ``images`` (B, C, H, W) in [-1, 1], output
``translated`` (B, C_out, H, W) in [-1, 1]; batch, height and width are dynamic (H and W must
still suit the generator: multiples of its ``size_multiple``). Exported in eval mode, so the
graph is deterministic (no dropout). TorchScript-based exporter (``dynamo=False``): it needs
only ``onnx``."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from src.utils.onnx_export import export_onnx_graph


def export_generator_onnx(
    generator: nn.Module,
    path: str | os.PathLike,
    sample_size: tuple[int, int] = (256, 256),
    input_nc: int = 3,
    opset_version: int = 17,
) -> Path:
    axes = {"batch": 0, "height": 2, "width": 3}
    dynamic = {name: {i: a for a, i in axes.items()} for name in ("images", "translated")}
    shape = (1, input_nc, *sample_size)
    return export_onnx_graph(
        generator, path, shape, ["translated"], dynamic, "images", opset_version
    )
