"""Loading weights files: the reference's released detectors and ImageNet backbones.

``load_reference_weights(model, "mobilenet0.25_Final.pth")`` loads a biubug6/Pytorch_Retinaface
checkpoint (``Resnet50_Final.pth`` likewise) with ``strict=True`` after stripping the
``module.`` prefix that ``nn.DataParallel`` training leaves. Files are read by
``src.utils.weights_file.read_state_dict`` (``weights_only=True``); user mistakes (missing
file, unreadable file, wrong model) raise one-line errors that name the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from src.utils.weights_file import read_state_dict

_MAX_LISTED = 3


def _examples(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f", ... (+{len(keys) - _MAX_LISTED})" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _guess_backbone(keys) -> str | None:
    keys = list(keys)
    if any(k.startswith(("body.stage1.", "stage1.")) for k in keys):
        return "mobilenet0.25"
    if any(k.startswith(("body.layer1.", "layer1.")) for k in keys):
        return "resnet50"
    return None


def state_dict_diff(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Short description of how ``state_dict`` fails to fit ``module``; '' when it fits."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({_examples(shapes)})")
    if parts:
        file_bb, model_bb = _guess_backbone(state_dict), _guess_backbone(own)
        if file_bb and model_bb and file_bb != model_bb:
            parts.append(f"the file looks like a {file_bb} model, this one is {model_bb}")
    return "; ".join(parts)


def strict_load(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    what: str = "model",
) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming ``path`` on mismatch."""
    diff = state_dict_diff(module, state_dict)
    if diff:
        raise ValueError(f"{path} does not fit {what}: {diff}")
    module.load_state_dict(state_dict, strict=True)


def load_reference_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a biubug6/Pytorch_Retinaface detector checkpoint into ``model`` (strict).

    Works for ``mobilenet0.25_Final.pth`` into ``RetinaFace("mobilenet0.25")`` and
    ``Resnet50_Final.pth`` into ``RetinaFace("resnet50")``, as well as for state dicts this
    package saved. Returns ``model``; its parameters keep their device and dtype.
    """
    sd = read_state_dict(path, what="RetinaFace weights")
    backbone = getattr(model, "backbone_name", None)
    strict_load(model, sd, path, what=f"RetinaFace({backbone!r})" if backbone else "the model")
    return model
