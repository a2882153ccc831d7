"""The learning proof: `python run.py experiment=centernet_synthetic` as a user types it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_centernet_learns_synthetic_coco(tmp_path):
    """GhostNet-0.5 CenterNet from scratch, 128 px, 30 epochs of 128 images (480 steps):
    val COCO AP 0.098 / AP50 0.207 measured (0.0015 untrained); floors well above chance."""
    r = run_cli(
        "experiment=centernet_synthetic",
        "logger=none",
        "print_config=false",
        "trainer.progress_bar=false",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=3600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    evals = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "val/coco_AP" in line
    ]
    assert len(evals) == 6, evals
    assert evals[-1]["val/coco_AP"] > 0.05, evals
    assert evals[-1]["val/coco_AP50"] > 0.12, evals
    assert evals[-1]["val/coco_AP"] > 3 * evals[0]["val/coco_AP"], evals
