"""The one ONNX export every model uses: an ``images`` (B, C, H, W) input traced at one size, in
eval mode and without gradients, through the TorchScript-based exporter by default
(``dynamo=False``: it needs only ``onnx``; the torch.export-based one also needs ``onnxscript``).
Each module's own training flag is restored afterwards, also when the export fails (a wrapper's
``train(was)`` alone would switch an evaluating network back to training)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


def export_images_onnx(
    graph: nn.Module,
    path: str | os.PathLike,
    sample_size: tuple[int, int],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    input_channels: int = 3,
    batch_size: int = 1,
    opset_version: int = 17,
    dynamo: bool = False,
) -> Path:
    """Export ``graph`` (its input is named ``images``) to ``path``; returns the path.

    ``dynamic_axes`` names the dynamic axes of ``images`` and of each output; the tracing
    input is zeros of ``(batch_size, input_channels, *sample_size)`` in the dtype and on the
    device of the graph's first parameter."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(graph.parameters())
    sample = torch.zeros(
        batch_size, input_channels, *(int(s) for s in sample_size),
        device=param.device, dtype=param.dtype,
    )  # fmt: skip
    flags = [(m, m.training) for m in graph.modules()]
    graph.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                graph,
                (sample,),
                str(path),
                input_names=["images"],
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=opset_version,
                dynamo=dynamo,
            )
    finally:
        for module, training in flags:
            module.training = training
    return path
