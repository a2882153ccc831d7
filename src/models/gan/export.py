"""ONNX export of an image-to-image generator: input ``images`` (B, C, H, W) in [-1, 1], output
``translated`` (B, C_out, H, W) in [-1, 1]; batch, height and width are dynamic (H and W must
still suit the generator: multiples of its ``size_multiple``). Exported in eval mode, so the
graph is deterministic (no dropout). TorchScript-based exporter (``dynamo=False``): it needs
only ``onnx``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn


def export_generator_onnx(
    generator: nn.Module,
    path: str | os.PathLike,
    sample_size: tuple[int, int] = (256, 256),
    input_nc: int = 3,
    opset_version: int = 17,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(generator.parameters())
    sample = torch.zeros(1, input_nc, *sample_size, device=param.device, dtype=param.dtype)
    was_training = generator.training
    generator.eval()
    axes = {
        "images": {0: "batch", 2: "height", 3: "width"},
        "translated": {0: "batch", 2: "height", 3: "width"},
    }
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                generator,
                (sample,),
                str(path),
                input_names=["images"],
                output_names=["translated"],
                dynamic_axes=axes,
                opset_version=opset_version,
                dynamo=False,
            )
    finally:
        generator.train(was_training)
    return path
