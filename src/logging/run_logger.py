"""What the engine logs to: metrics.jsonl always, W&B when configured; rank 0 only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .metrics_file import MetricsFile, write_summary


class RunLogger:
    def __init__(self, run_dir: Path, backend: Any | None, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.backend = backend if enabled else None
        self.file = MetricsFile(self.run_dir) if enabled else None

    def start(
        self, config: dict[str, Any], job_name: str | None, sweep_group: str | None, **run: Any
    ):
        """``run``: job_type, tags, monitor, monitor_mode (see WandbLogger.start)."""
        if self.backend is not None:
            self.backend.start(self.run_dir, config, job_name, sweep_group, **run)

    def log_metrics(self, metrics: dict[str, Any], step: int, epoch: int | None = None) -> None:
        if not self.enabled or not metrics:
            return
        record = {"step": step, **({"epoch": epoch} if epoch is not None else {}), **metrics}
        self.file.write(record)
        if self.backend is not None:
            self.backend.log_metrics(metrics, step)

    def log_images(self, images: dict[str, list], step: int) -> None:
        """``{key: [(image, caption) | DetectionItem, ...]}`` to the picture backend."""
        if self.backend is not None:
            self.backend.log_images(images, step)

    def log_detections(self, key: str, items: list, step: int) -> None:
        """Detection pictures (``src/logging/detections.py`` ``DetectionItem`` s: RGB image,
        predictions, ground truth, class names) as box overlays; the one call every detector
        uses. A backend without box support gets them through ``log_images``."""
        if self.backend is None or not items:
            return
        if hasattr(self.backend, "log_detections"):
            self.backend.log_detections(key, items, step)
        else:
            self.backend.log_images({key: list(items)}, step)

    def finish(
        self, summary: dict[str, Any], exit_code: int = 0, artifacts: list[Path] | None = None
    ) -> None:
        if not self.enabled:
            return
        write_summary(self.run_dir, summary)
        self.file.close()
        if self.backend is not None:
            try:
                self.backend.log_summary(summary)
                if artifacts:
                    self.backend.log_artifact(artifacts, name=f"checkpoints-{self.run_dir.name}")
            finally:
                self.backend.finish(exit_code)
