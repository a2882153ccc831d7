"""The one reader of weights, state-dict and checkpoint files.

Contract:

* ``check_file(path, what, hint)`` -> ``Path``: ``WeightsFileNotFoundError`` (a
  ``FileNotFoundError``) with one line ``"<what> not found: <path> (<hint>)"`` when missing;
  for callers that hand the path on (timm's ``pretrained_cfg_overlay``).
* ``load_file(path, what, ...)``: the file's object on ``map_location``, read with
  ``torch.load(weights_only=True)`` (``allow``: extra safe globals, e.g. numpy RNG states in a
  checkpoint) or, for ``.safetensors``, with safetensors. Unreadable (truncated, not a torch
  file, unsafe content): ``WeightsFileError`` (a ``ValueError``) ``"cannot read <what> from
  <path>: <reason>"``.
* ``read_state_dict(path, what, strip="module.")``: a non-empty ``{str: Tensor}`` on the CPU,
  unwrapping ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and removing the
  ``module.`` prefix ``nn.DataParallel`` / DDP training leaves (``strip=None``: keep keys);
  anything else is a ``WeightsFileError``.

Both errors are ``UserError`` s (printed as one line by the entry point).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from src.utils.errors import UserError

__all__ = [
    "WeightsFileError",
    "WeightsFileNotFoundError",
    "check_file",
    "load_file",
    "read_state_dict",
    "strip_prefix",
]


class WeightsFileError(UserError, ValueError):
    """A weights / checkpoint file that cannot be read or holds no state dict."""


class WeightsFileNotFoundError(WeightsFileError, FileNotFoundError):
    """A weights / checkpoint file that does not exist."""


def check_file(
    path: str | os.PathLike, what: str = "weights", hint: str = "check the path"
) -> Path:
    """``path`` as a ``Path`` (``~`` expanded) if it is a file, else one clear error."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsFileNotFoundError(f"{what} not found: {p}" + (f" ({hint})" if hint else ""))
    return p


def load_file(
    path: str | os.PathLike,
    what: str = "weights",
    hint: str = "check the path",
    map_location: Any = "cpu",
    allow: Sequence[Any] = (),
) -> Any:
    """The object stored in ``path`` (``weights_only=True``; ``.safetensors`` supported)."""
    p = check_file(path, what, hint)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
            return load_safetensors(str(p), device=str(device))
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or unsafe content
        text = str(e).strip()
        if "weights_only" in text or "Weights only load failed" in text:
            # torch's advice here is to load with weights_only=False: never pass that on
            reason = (
                "it holds pickled objects other than tensors and plain containers, which a "
                "safe load refuses (load only files you trust; re-save one as a plain state "
                "dict with torch.save(model.state_dict(), ...))"
            )
        else:
            first = text.splitlines()[0] if text else ""
            reason = f"{type(e).__name__}: {first}"[:300]
        raise WeightsFileError(f"cannot read {what} from {p}: {reason}") from None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """Remove ``prefix`` from the keys that start with it (others are kept as they are)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def read_state_dict(
    path: str | os.PathLike,
    what: str = "weights",
    hint: str = "check the path",
    strip: str | None = "module.",
) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` on the CPU (see the module docstring)."""
    obj = load_file(path, what, hint)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise WeightsFileError(f"{Path(path)} does not hold a state dict of tensors ({what})")
    return strip_prefix(obj, strip) if strip else dict(obj)
