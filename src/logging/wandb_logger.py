"""Weights & Biases backend: offline by default, files inside the run dir.

One W&B run per Hydra job; in a multirun every job joins a group named after the sweep, and
``finish()`` is always called (also when the job fails), so the next job gets a fresh run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .detections import as_detection_item, is_detection_item, wandb_boxes


class WandbLogger:
    def __init__(
        self,
        project: str = "cv-experiments",
        entity: str | None = None,
        mode: str = "offline",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        log_images: bool = True,
        num_images: int = 4,
        log_checkpoint: bool = False,
        box_min_score: float = 0.0,
        max_boxes: int = 100,
    ):
        self.kwargs = dict(
            project=project, entity=entity, mode=mode, name=name, group=group, tags=list(tags or [])
        )
        self.log_images_enabled = log_images
        self.num_images = num_images
        self.log_checkpoint = log_checkpoint
        self.box_min_score = box_min_score  # predictions below it are not sent
        self.max_boxes = max_boxes  # per picture, highest scores first
        self.run = None
        self.monitor, self.monitor_mode = None, "max"
        self._defined: set[str] = set()  # val/* metrics whose W&B summary is their best
        self._best: dict[str, float] = {}

    def start(
        self,
        run_dir: Path,
        config: dict[str, Any],
        job_name: str | None,
        sweep_group: str | None,
        job_type: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        monitor: str | None = None,
        monitor_mode: str = "max",
    ) -> None:
        """``job_type`` is the mode; ``tags`` join the logger's own; every ``val/*`` metric's
        summary is its best value (the monitor in the Task's direction, losses min, the rest
        max), so the runs table shows best-so-far, not last."""
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        kwargs = dict(self.kwargs)
        kwargs["group"] = kwargs["group"] or sweep_group
        kwargs["name"] = kwargs["name"] or job_name
        kwargs["tags"] = list(dict.fromkeys([*kwargs["tags"], *map(str, tags)]))
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self._defined, self._best = set(), {}
        self.run = wandb.init(
            dir=str(run_dir),
            config=config,
            job_type=job_type,
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
            **kwargs,
        )

    def summary_direction(self, key: str) -> str:
        if key == self.monitor:
            return self.monitor_mode
        return "min" if "loss" in key.rsplit("/", 1)[-1] else "max"

    def _define(self, metrics: dict[str, Any]) -> None:
        for key in metrics:
            if key.startswith("val/") and key not in self._defined:
                self.run.define_metric(key, summary=self.summary_direction(key))
                self._defined.add(key)

    @property
    def run_dir(self) -> str | None:
        return getattr(self.run, "dir", None)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self._define(metrics)
            self.run.log(metrics, step=step)
            for key in self._defined.intersection(metrics):  # best-so-far, also offline
                value = metrics[key]
                if not isinstance(value, (int, float)) or value != value:
                    continue
                old = self._best.get(key)
                better = max if self.summary_direction(key) == "max" else min
                self._best[key] = value if old is None else better(old, value)
                self.run.summary[key] = self._best[key]

    def _image(self, item: Any):
        import wandb

        if is_detection_item(item):
            det = as_detection_item(item)
            return wandb.Image(
                det.image,
                boxes=wandb_boxes(det, self.box_min_score, self.max_boxes),
                caption=det.caption,
            )
        img, cap = item
        return wandb.Image(img, caption=cap)

    def log_images(self, images: dict[str, list], step: int) -> None:
        """``{key: [(image, caption) | DetectionItem, ...]}``; the first ``num_images`` of each
        key. Detection items become box overlays (see ``src/logging/detections.py``)."""
        if self.run is None or not self.log_images_enabled or not images:
            return
        logged = {}
        for key, items in images.items():
            pictures = [self._image(item) for item in items[: self.num_images]]
            logged[key] = pictures
            if items and all(is_detection_item(x) for x in items[: self.num_images]):
                logged[f"{key}_table"] = self._table(items[: self.num_images], pictures)
        self.run.log(logged, step=step)

    def _table(self, items: list, pictures: list):
        """Per-image predictions of a few validation images, as a wandb.Table."""
        import wandb

        table = wandb.Table(columns=["image", "caption", "predictions", "top_score", "gt_boxes"])
        for item, picture in zip(map(as_detection_item, items), pictures):
            scores = [float(v) for v in item.predictions.get("scores", [])]
            kept = [v for v in scores if v >= self.box_min_score]
            gt = item.ground_truth or {}
            table.add_data(
                picture,
                item.caption or "",
                len(kept),
                max(scores, default=None),
                len(gt.get("boxes", [])),
            )
        return table

    def log_detections(self, key: str, items: list, step: int) -> None:
        """Box overlays of ``DetectionItem`` s (image, predictions, ground truth, class names):
        predictions with scores and ground truth as two toggleable groups."""
        if items:
            self.log_images({key: [as_detection_item(x) for x in items]}, step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary.json entries, except the ``val/*`` metrics W&B keeps at their best
        (the last values are in the history)."""
        if self.run is not None:
            for k, v in summary.items():
                if k not in self._defined:
                    self.run.summary[k] = v

    def log_artifact(self, paths: list[Path], name: str) -> None:
        if self.run is None or not self.log_checkpoint:
            return
        import wandb

        art = wandb.Artifact(name, type="model")
        for p in paths:
            if p.exists():  # final files: no staging copy of possibly large checkpoints
                art.add_file(str(p), policy="immutable")
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
