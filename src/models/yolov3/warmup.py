"""The archive's burn-in (train.py): over the first ``iters`` optimizer steps every parameter
group's learning rate rises linearly from 0 to its scheduled value (the bias group, named
``bias``, falls from ``bias_lr`` 0.1 instead), momentum rises from ``momentum_start`` 0.9 to the
group's own, and the loss's ``gr`` (objectness target: 1 -> GIoU) from 0 to its value.

``BurnIn.apply(optimizer, step)`` overwrites the groups' ``lr`` / ``momentum`` for one step and
remembers the scheduled values; ``restore(optimizer)`` puts them back after the step, so
schedulers (which may compute from the current ``lr``) and checkpoints only ever see the
scheduled values. A no-op once ``step >= iters``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BurnIn:
    def __init__(self, iters: int = 1000, bias_lr: float = 0.1, momentum_start: float = 0.9):
        self.iters = int(iters)
        self.bias_lr = float(bias_lr)
        self.momentum_start = float(momentum_start)
        self._saved: list[dict[str, Any]] | None = None

    def fraction(self, step: int) -> float:
        return 1.0 if self.iters <= 0 else float(np.interp(step, [0, self.iters], [0.0, 1.0]))

    def active(self, step: int) -> bool:
        return step < self.iters

    def apply(self, optimizer: Any, step: int) -> None:
        self.restore(optimizer)  # a step that was skipped (non-finite loss) left values behind
        if not self.active(step):
            return
        f = self.fraction(step)
        self._saved = []
        for g in optimizer.param_groups:
            saved = {k: g[k] for k in ("lr", "momentum") if k in g}
            self._saved.append(saved)
            start = self.bias_lr if g.get("name") == "bias" else 0.0
            g["lr"] = start + (saved["lr"] - start) * f
            if "momentum" in g:
                g["momentum"] = self.momentum_start + (saved["momentum"] - self.momentum_start) * f

    def restore(self, optimizer: Any) -> None:
        if self._saved is None:
            return
        for g, saved in zip(optimizer.param_groups, self._saved):
            g.update(saved)
        self._saved = None
