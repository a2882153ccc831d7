"""Checkpoints: atomic writes (temp file + os.replace) and ``weights_only=True`` loads.

A checkpoint is a plain dict of tensors, numbers, strings and containers:
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


class CheckpointError(RuntimeError):
    pass


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` so that a crash mid-write never leaves a truncated file where
    the previous good checkpoint was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# numpy RNG state holds an ndarray and a dtype: allow exactly those for weights_only loads
_SAFE_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]  # type: ignore[attr-defined]


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check ckpt_path=...)")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or unsafe content
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from e


def task_weights(ckpt: dict) -> dict:
    """The model/task state dict of a checkpoint file (ours, or a bare state dict)."""
    return ckpt["task"] if "task" in ckpt else ckpt
