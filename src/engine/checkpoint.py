"""Checkpoints: atomic writes (temp file + os.replace) and ``weights_only=True`` loads.

Files are read by ``src.utils.weights_file.load_file`` (the one reader of weights files: a
missing or unreadable file is one line naming it). A checkpoint is a plain dict of tensors,
numbers, strings and containers:
``{"task": state_dict, "optim": ..., "schedulers": ..., "rng": ..., "progress": ..., "best":
..., "config": yaml string}`` — everything needed to continue exactly where the run stopped.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src.utils.errors import UserError
from src.utils.weights_file import load_file


class CheckpointError(UserError):
    """A checkpoint that does not fit the model (a missing or unreadable file raises
    ``src.utils.weights_file.WeightsFileError``)."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` so that a crash mid-write never leaves a truncated file where
    the previous good checkpoint was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: teammates read checkpoints too
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nonfinite_entries(state: Any, prefix: str = "") -> list[str]:
    """Keys of the floating-point tensors holding NaN or inf anywhere in a (nested) state."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "tensor"] if bad else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [
        k
        for key, v in items
        for k in nonfinite_entries(v, f"{prefix}.{key}" if prefix else str(key))
    ]


# numpy RNG state holds an ndarray and a dtype: allow exactly those for weights_only loads
_SAFE_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]  # type: ignore[attr-defined]


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint dict in ``path`` (``weights_only=True``, numpy RNG states allowed); a
    missing or unreadable file raises ``src.utils.weights_file``'s one-line errors."""
    return load_file(path, "checkpoint", "check ckpt_path=...", map_location, _SAFE_GLOBALS)


def task_weights(ckpt: dict) -> dict:
    """The model/task state dict of a checkpoint file (ours, or a bare state dict)."""
    return ckpt["task"] if "task" in ckpt else ckpt
