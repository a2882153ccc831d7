"""Weights files for ``YOLOv3``: darknet ``.weights`` and the archive's ``.pt`` state dicts.

Darknet ``.weights`` (what ``darknet`` writes, and what users have: ``yolov3.weights``,
``darknet53.conv.74``): a header of int32 ``major, minor, revision`` and ``seen`` (images
trained on: int64 when ``major * 10 + minor >= 2`` and both are below 1000, else int32), then
for every convolution in cfg order float32 blobs: with batch norm ``beta, gamma, running mean,
running variance`` (each ``filters`` values), without it the conv ``bias``; then the conv
weights ``(filters, in, k, k)`` in C order. A file that ends exactly after a convolution before
the last one (``darknet53.conv.74``: the 52 backbone convolutions) loads those and says so;
any other length is an error naming the file.

Anything else is read with ``src.utils.weights_file.read_state_dict`` (``weights_only``; the
archive's ``{"model": state_dict, ...}`` checkpoints unwrap) and loaded strictly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.utils.weights_file import WeightsFileError, check_file, read_state_dict

log = logging.getLogger(__name__)

HINT = "a darknet .weights file or a .pt state dict of the same cfg and class count"


def _conv_blobs(seq: nn.Sequential) -> list[torch.Tensor]:
    """The tensors one convolution stores, in file order."""
    conv = seq.Conv2d
    bn = getattr(seq, "BatchNorm2d", None)
    if bn is not None:
        head = [bn.bias, bn.weight, bn.running_mean, bn.running_var]
    else:
        head = [conv.bias]
    return [*head, conv.weight]


def read_darknet_header(data: bytes, path: Path) -> tuple[tuple[int, int, int, int], int]:
    """``((major, minor, revision, seen), header bytes)``."""
    if len(data) < 16:
        raise WeightsFileError(f"{path} is not a darknet .weights file (only {len(data)} bytes)")
    major, minor, revision = (int(v) for v in np.frombuffer(data, np.int32, 3))
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    if wide and len(data) >= 20:
        seen, offset = int(np.frombuffer(data, np.int64, 1, 12)[0]), 20
    else:
        seen, offset = int(np.frombuffer(data, np.int32, 1, 12)[0]), 16
    return (major, minor, revision, seen), offset


def load_darknet_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Copy a darknet ``.weights`` file into ``model`` (a ``YOLOv3``); returns the header and
    how many convolutions were loaded."""
    p = check_file(path, "YOLOv3 darknet weights", HINT)
    data = p.read_bytes()
    header, offset = read_darknet_header(data, p)
    body = len(data) - offset
    if body % 4:
        raise WeightsFileError(f"{p}: {body} bytes after the header is not a float32 array")
    values = np.frombuffer(data, np.float32, body // 4, offset)
    convs = model.convs
    ends = np.cumsum([sum(t.numel() for t in _conv_blobs(c)) for c in convs])
    if values.size not in set(ends.tolist()):
        raise WeightsFileError(
            f"{p} holds {values.size} weights, which is not the end of any of this model's "
            f"{len(convs)} convolutions ({int(ends[-1])} weights in all): another cfg, width "
            "or num_classes?"
        )
    n = int(np.searchsorted(ends, values.size)) + 1
    pos = 0
    with torch.no_grad():
        for seq in convs[:n]:
            for t in _conv_blobs(seq):
                k = t.numel()
                t.copy_(torch.from_numpy(values[pos : pos + k].copy()).view_as(t))
                pos += k
    if n < len(convs):
        log.info("%s: loaded the first %d of %d convolutions (a backbone file)", p, n, len(convs))
    return {"header": header, "convolutions": n}


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """A ``.weights`` file through ``load_darknet_weights``, anything else as a state dict
    (strict; the archive's ``.pt`` files have the same names)."""
    if Path(path).suffix == ".weights" or Path(path).name.startswith("darknet53.conv"):
        load_darknet_weights(model, path)
        return
    state = read_state_dict(path, "YOLOv3 weights", HINT)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsFileError(
            f"{path} does not fit this YOLOv3: {str(e).splitlines()[-1].strip()}"
        ) from None
    if missing or unexpected:
        raise WeightsFileError(
            f"{path} does not fit this YOLOv3: {len(missing)} missing and {len(unexpected)} "
            f"unexpected keys (e.g. {', '.join([*missing, *unexpected][:3])})"
        )
