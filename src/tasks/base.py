"""The contract between the engine (src/engine) and a trainer (src/tasks/<name>.py).

The engine owns: device, precision (autocast + GradScaler), DDP, the loop, gradient
accumulation and clipping, NaN/inf skipping, checkpoints, resume, signals, logging.
A Task owns: how its model, loss, data and metric meet. It never builds DataLoaders,
never calls ``.backward()`` / ``optimizer.step()`` directly, and never reads the config tree:
it is constructed from already-instantiated objects and plain values.

Data
----
``datasets()`` returns ``{"train": ds, "val": ds}`` (``"val"`` optional). Each dataset is a
``src.data.base.SampleDataset``: ``__len__`` plus ``load(index, rng)``, where ``rng`` is a
``numpy.random.Generator`` derived by the engine from (seed, epoch, index) for training
samples (so augmentation is reproducible and resumable) and ``None`` for evaluation
(deterministic, no augmentation). ``collate(samples)`` builds a batch (default:
``torch.utils.data.default_collate``). The engine moves the batch to the device.

Optimisation
------------
``optimizer_groups()`` returns ``{name: params}``; the engine builds one optimizer (and one
scheduler) per name from the ``optimizer`` / ``scheduler`` configs. Default: ``{"main": ...}``.

* Automatic optimisation (``automatic_optimization = True``, the default):
  ``training_step(batch, opt)`` returns a dict of scalar tensors with a ``"loss"`` key; the
  engine does backward (scaled), accumulation, clipping, NaN skipping and the step.
* Manual optimisation (GANs: ``automatic_optimization = False``): ``training_step`` calls
  ``opt.backward(loss, "D")`` then ``opt.step("D")``, then the same for ``"G"``, etc., and
  returns a dict of scalar tensors to log. ``opt`` (an ``src.engine.optim.Optimization``)
  applies the same scaler / clipping / accumulation / NaN rules as the automatic path, so
  there is one loop for every trainer.

DDP: the engine wraps the submodules named in ``ddp_modules`` (default ``("model",)``) in
``DistributedDataParallel`` in place; ``evaluate`` / ``predict`` / ``visualize`` always see the
unwrapped modules. ``state_dict()`` is saved without the DDP ``module.`` prefixes.

Evaluation and prediction
-------------------------
``evaluate(loader)`` runs under ``torch.no_grad()`` in eval mode and returns plain floats,
keyed like ``"acc_top1"`` (the engine prefixes ``val/``). ``monitor`` names the metric (after
prefixing) that picks the best checkpoint, ``monitor_mode`` is ``"max"`` or ``"min"``.
``visualize(batch)`` returns ``{key: [(HxWx3 uint8 array, caption), ...]}`` for the logger.
``predict(paths, out_dir)`` writes predictions (JSON + pictures) for image files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate


class Task(nn.Module):
    automatic_optimization: bool = True
    ddp_modules: tuple[str, ...] = ("model",)
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, model: nn.Module, loss: nn.Module | None, data: dict[str, Any]):
        """Every Task is built as ``Task(model=..., loss=..., data=..., **options)`` from the
        instantiated ``model`` / ``loss`` / ``dataset`` configs."""
        super().__init__()
        self.model, self.loss, self.data = model, loss, data

    # ---- data -----------------------------------------------------------------------
    def datasets(self) -> dict[str, Any]:
        return self.data

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def training_step(self, batch: Any, opt: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ---- evaluation / inference -----------------------------------------------------
    def evaluate(self, loader: Any) -> dict[str, float]:
        raise NotImplementedError

    def visualize(self, batch: Any) -> dict[str, list]:
        return {}

    def predict(self, paths: list[Path], out_dir: Path) -> list[dict]:
        raise NotImplementedError(f"{type(self).__name__} does not support mode=predict yet")

    def on_train_epoch_start(self, epoch: int) -> None:  # optional hook
        pass

    def export(self, out_dir: Path) -> list[Path]:
        raise NotImplementedError(f"{type(self).__name__} does not support mode=export yet")
