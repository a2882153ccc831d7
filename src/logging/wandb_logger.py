"""Weights & Biases backend: offline by default, files inside the run dir.

One W&B run per Hydra job; in a multirun every job joins a group named after the sweep, and
``finish()`` is always called (also when the job fails), so the next job gets a fresh run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
    ):
        self.kwargs = dict(
            project=project, entity=entity, mode=mode, name=name, group=group, tags=list(tags or [])
        )
        self.log_images_enabled = log_images
        self.num_images = num_images
        self.log_checkpoint = log_checkpoint
        self.run = None

    def start(
        self, run_dir: Path, config: dict[str, Any], job_name: str | None, sweep_group: str | None
    ) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        kwargs = dict(self.kwargs)
        kwargs["group"] = kwargs["group"] or sweep_group
        kwargs["name"] = kwargs["name"] or job_name
        self.run = wandb.init(
            dir=str(run_dir),
            config=config,
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
            **kwargs,
        )

    @property
    def run_dir(self) -> str | None:
        return getattr(self.run, "dir", None)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_images(self, images: dict[str, list], step: int) -> None:
        if self.run is None or not self.log_images_enabled or not images:
            return
        import wandb

        self.run.log(
            {
                key: [wandb.Image(img, caption=cap) for img, cap in items[: self.num_images]]
                for key, items in images.items()
            },
            step=step,
        )

    def log_summary(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in summary.items():
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
