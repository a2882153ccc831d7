"""The one ONNX export every model uses: one input (``images`` (B, C, H, W), or a generator's
``z``) traced at one shape, in eval mode and without gradients, through the TorchScript-based
exporter by default (``dynamo=False``: it needs only ``onnx``; the torch.export-based one also
needs ``onnxscript``). Each module's own training flag is restored afterwards, also when the
export fails (a wrapper's ``train(was)`` alone would switch an evaluating network back to
training)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


def export_onnx_graph(
    graph: nn.Module,
    path: str | os.PathLike,
    sample_shape: Sequence[int],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    input_name: str = "images",
    opset_version: int = 17,
    dynamo: bool = False,
) -> Path:
    """Export ``graph`` to ``path``; returns the path.

    ``dynamic_axes`` names the dynamic axes of the input and of each output; the tracing input
    is zeros of ``sample_shape`` in the dtype and on the device of the graph's first
    parameter."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(graph.parameters())
    sample = torch.zeros(*(int(s) for s in sample_shape), device=param.device, dtype=param.dtype)
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
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=opset_version,
                dynamo=dynamo,
            )
    finally:
        for module, training in flags:
            module.training = training
    return path
