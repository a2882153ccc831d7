"""Exponential moving average of a Task's networks (``trainer.ema_decay``).

As YOLOv3 (ultralytics, ``ModelEMA``) and timm (``ModelEmaV2``): after every optimizer step
``ema = d * ema + (1 - d) * weights`` over every floating-point entry of each network's
state dict (parameters and buffers such as batch-norm statistics; integer buffers are copied),
with the ramp ``d = decay * (1 - exp(-updates / ramp))`` so early averages are not dominated by
the random initialisation (``ramp: null`` = constant ``decay``). The averaged copies are saved
in checkpoints, restored exactly on resume, and used for evaluation, prediction and export.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _plain(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


class EMA:
    def __init__(
        self, task: nn.Module, names: tuple[str, ...], decay: float, ramp: float | None = 2000.0
    ):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in (0, 1), got {decay}")
        self.names, self.decay, self.ramp = tuple(names), float(decay), ramp
        self.updates = 0
        self.modules = {
            n: copy.deepcopy(_plain(getattr(task, n))).eval().requires_grad_(False)
            for n in self.names
        }

    def current_decay(self) -> float:
        if not self.ramp:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.ramp))

    @torch.no_grad()
    def update(self, task: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        for n in self.names:
            live = _plain(getattr(task, n)).state_dict()
            avg, new, ints, new_ints = [], [], [], []
            for k, v in self.modules[n].state_dict().items():
                (avg if v.dtype.is_floating_point else ints).append(v)
                (new if v.dtype.is_floating_point else new_ints).append(live[k].detach())
            if avg:
                torch._foreach_mul_(avg, d)
                torch._foreach_add_(avg, new, alpha=1.0 - d)
            for v, x in zip(ints, new_ints):
                v.copy_(x)

    @contextmanager
    def swapped_in(self, task: nn.Module) -> Iterator[nn.Module]:
        """The averaged networks in place of the live ones (which must be unwrapped)."""
        live = {n: getattr(task, n) for n in self.names}
        try:
            for n in self.names:
                setattr(task, n, self.modules[n])
            yield task
        finally:
            for n, m in live.items():
                setattr(task, n, m)

    def copy_to(self, task: nn.Module) -> None:
        """Load the averaged weights into the live networks (eval / predict / export)."""
        for n in self.names:
            _plain(getattr(task, n)).load_state_dict(self.modules[n].state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "decay": self.decay,
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [n for n in self.names if n not in state["modules"]]
        if missing:
            raise KeyError(f"the checkpoint's EMA has no {missing}")
        self.updates = int(state["updates"])
        for n in self.names:
            self.modules[n].load_state_dict(state["modules"][n])
