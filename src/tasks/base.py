"""The contract between the engine (src/engine) and a trainer (src/tasks/<name>.py).

The engine owns: device, precision (autocast + GradScaler), DDP, the loop, gradient
accumulation and clipping, NaN/inf skipping, EMA of the weights, checkpoints, resume, signals,
logging. A Task owns: how its networks, loss, data and metric meet. It never builds
DataLoaders, never calls ``.backward()`` / ``optimizer.step()`` directly, and never reads the
config tree: it is constructed from already-instantiated objects and plain values.

Construction
------------
``conf/model/<name>.yaml`` has the Task as its ``_target_`` and its networks nested under it
(``net:``, or ``generator:`` / ``discriminator:`` / ...); the rest of that file are the Task's
options. The engine's entry point instantiates ``loss=`` and ``dataset=`` apart and calls
``Task(loss=..., data=..., <networks>, **options)``. Compatibility is declared in Python:
``accepts = {"loss": ("multibox",), "dataset": ("face_detection",)}`` on the Task class, and a
``kind`` attribute on the loss class and on the dataset class or builder function; run.py
checks a pick from the ``_target_``s before anything is built. An empty ``accepts`` entry
accepts any kind.

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
scheduler) per name from the ``optimizer`` / ``scheduler`` configs, each of which may override
any field for one group (``optimizer.groups.D.lr=4e-4``,
``optimizer.groups.D._target_=torch.optim.RMSprop``). Default: ``{"main": ...}``.

* Automatic optimisation (``automatic_optimization = True``, the default):
  ``training_step(batch, opt)`` returns a dict of scalar tensors with a ``"loss"`` key; the
  engine does backward (scaled), accumulation, clipping, NaN skipping and the step.
* Manual optimisation (GANs: ``automatic_optimization = False``): ``training_step`` calls
  ``opt.backward(loss, "D")`` then ``opt.step("D")``, then the same for ``"G"``, etc., and
  returns a dict of scalar tensors to log. ``opt`` (an ``src.engine.optim.Optimization``)
  applies the same scaler / clipping / accumulation / NaN rules as the automatic path; with
  several optimizers each backward reaches only its own group's parameters. A critic stepped
  n times per generator step steps on every batch and the generator on every n-th
  (``opt.num_steps`` counts the steps done, and is restored on resume).

Hooks (all optional; the engine calls them in this order)
------------------------------------------------------------
``on_train_epoch_start(epoch)``; per batch ``on_train_batch_start(batch, step) -> batch``
(multi-scale resizing, warm-up through ``self.optimizers()``; ``step`` = optimizer steps done
so far);
``on_after_optimizer_step(name)`` after every parameter update of optimizer ``name`` (weight
clipping); ``on_train_epoch_end(epoch)``. EMA of the weights is the engine's
(``trainer.ema_decay``), over ``ema_modules`` (default: ``ddp_modules``).

DDP: the engine wraps each submodule named in ``ddp_modules`` (default ``("net",)``) in its own
``DistributedDataParallel``, in place; ``evaluate`` / ``predict`` / ``visualize`` / ``export``
always see the unwrapped modules, in eval mode (the engine sets it), under ``no_grad``.
``state_dict()`` is saved without the DDP ``module.`` prefixes. ``unwrap(module)`` gives the
plain module inside a training step.

Evaluation and prediction
-------------------------
``evaluate(loader)`` returns plain floats, keyed like ``"acc_top1"`` (the engine prefixes
``val/``). ``monitor`` names the metric (after prefixing) that picks the best checkpoint,
``monitor_mode`` is ``"max"`` or ``"min"``. ``visualize(batch)`` returns
``{key: [(HxWx3 uint8 array, caption), ...]}`` for the logger. ``predict_one(path, out_dir,
stem)`` writes the pictures of one image file and returns its JSON record; ``predict(paths,
out_dir)`` runs it over files, skipping (and recording) the unreadable ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import default_collate

from src.data.base import DataError
from src.utils.errors import UserError

log = logging.getLogger(__name__)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def build_twice(factory: Any, key: str, who: str) -> nn.Module:
    """A fresh network from ``model.<key>`` for a Task that builds several from it (CycleGAN's
    and DPE's two generators and two critics): the config must be a factory, not a module."""
    if isinstance(factory, nn.Module) or not callable(factory):
        raise UserError(
            f"model.{key}: {who} builds two networks from it, so it must be a factory "
            f"(add `_partial_: true` under model.{key})"
        )
    return factory()


class Task(nn.Module):
    automatic_optimization: bool = True
    accepts: ClassVar[dict[str, tuple[str, ...]]] = {}
    # mode=predict without input= is refused, unless the Task generates from nothing (WGAN)
    predict_needs_input: ClassVar[bool] = True
    ddp_modules: tuple[str, ...] = ("net",)
    ema_modules: tuple[str, ...] | None = None  # None: the ddp_modules
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, loss: nn.Module | None = None, data: dict[str, Any] | None = None):
        super().__init__()
        self.loss, self.data = loss, dict(data or {})

    # ---- data -----------------------------------------------------------------------
    def datasets(self) -> dict[str, Any]:
        return self.data

    def check_num_classes(self, num_classes: int, error: type[Exception] = ValueError) -> None:
        """Every data split that states its classes (``num_classes``, else ``class_names``)
        has the network's ``num_classes``; else one line (``error``) naming the fix."""
        for split, dataset in self.data.items():
            found = getattr(dataset, "num_classes", None)
            if found is None:
                names = getattr(dataset, "class_names", None)
                found = len(names) if names else None
            if found is not None and int(found) != int(num_classes):
                raise error(
                    f"the {split} dataset has {int(found)} classes but model.net.num_classes="
                    f"{int(num_classes)}; set model.net.num_classes={int(found)}"
                )

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def training_step(self, batch: Any, opt: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The engine's optimizers by group name while training (``{}`` before ``fit``): what
        a warm-up in ``on_train_batch_start`` adjusts (``param_groups[i]["lr"]``)."""
        return dict(self.__dict__.get("_optimizers", {}))

    # ---- hooks ----------------------------------------------------------------------
    def on_train_epoch_start(self, epoch: int) -> None:
        pass

    def on_train_batch_start(self, batch: Any, step: int) -> Any:
        return batch

    def on_after_optimizer_step(self, name: str) -> None:
        pass

    def on_train_epoch_end(self, epoch: int) -> None:
        pass

    # ---- evaluation / inference -----------------------------------------------------
    def evaluate(self, loader: Any) -> dict[str, float]:
        raise NotImplementedError

    def visualize(self, batch: Any) -> dict[str, list]:
        return {}

    def predict(self, paths: list[Path], out_dir: Path) -> list[dict]:
        """``predict_one`` for each file, each with its own output stem (``a``, ``a_2``, ...
        for files of the same name); a file that cannot be read is skipped with a warning and
        recorded as ``{"path": ..., "error": ...}``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        results, used = [], set()
        for path in map(Path, paths):
            stem, n = path.stem, 1
            while stem in used:
                n += 1
                stem = f"{path.stem}_{n}"
            used.add(stem)
            try:
                results.append(self.predict_one(path, out_dir, stem))
            except DataError as e:
                log.warning("skipped %s: %s", path, e)
                results.append({"path": str(path), "error": str(e)})
        return results

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        """Predictions for one image file (pictures named from ``stem`` under ``out_dir``);
        raises ``DataError`` when the file cannot be read."""
        raise NotImplementedError(f"{type(self).__name__} does not support mode=predict yet")

    def export(self, out_dir: Path) -> list[Path]:
        raise NotImplementedError(f"{type(self).__name__} does not support mode=export yet")
