"""The spine as a user meets it: run.py on the real trainers with debug=fast, in each mode."""

from __future__ import annotations

import json

import pytest

from src.logging.metrics_file import read_metrics
from tests.conftest import run_cli


def _common(data_dir):
    return ["debug=fast", "print_config=false", f"paths.data_dir={data_dir}"]


def test_ws_dan_train_eval_predict_with_wandb_offline(tmp_path, data_dir):
    run = tmp_path / "train"
    r = run_cli(*_common(data_dir), "logger.mode=offline", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CONFIG" not in r.stdout  # print_config=false
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 4
    assert 0.0 <= summary["val/acc_top1"] <= summary["val/acc_top5"] <= 1.0
    assert {"train/loss", "train/ce_raw", "train/ce_crop", "train/ce_drop", "train/center"} <= set(
        read_metrics(run)[0]
    )
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    media = list(wandb_runs[0].rglob("*.png"))
    assert media, "attention / crop / drop pictures were not logged to W&B"
    cfg = (run / "config.yaml").read_text()
    assert "backbone: resnet18" in cfg and "${" not in cfg  # resolved

    ev = run_cli(
        *_common(data_dir),
        "logger=none",
        "mode=eval",
        f"ckpt_path={run}/checkpoints/best.ckpt",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    ev_summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert ev_summary["val/acc_top1"] == pytest.approx(summary["best"])

    images = sorted((data_dir).rglob("*.jpg"))[:2]
    pr = run_cli(
        *_common(data_dir),
        "logger=none",
        "mode=predict",
        f"ckpt_path={run}/checkpoints/best.ckpt",
        f"input={images[0]}",
        f"hydra.run.dir={tmp_path / 'pred'}",
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(preds) == 1 and len(preds[0]["top5"]) == 5
    probs = [t["probability"] for t in preds[0]["top5"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert list((tmp_path / "pred" / "predictions").glob("*.png")) or list(
        (tmp_path / "pred" / "predictions").glob("*.jpg")
    )


def test_user_mistakes_on_real_trainers(tmp_path):
    cases = [
        (
            ["dataset=cub", f"paths.data_dir={tmp_path}/none"],
            [f"{tmp_path}/none/CUB_200_2011", "dataset=synthetic_cub"],
        ),
        (
            ["model=ws_dan", "dataset=widerface"],
            [
                "dataset=widerface",
                "model=ws_dan",
                "valid choices: dataset=cub, dataset=synthetic_cub",
            ],
        ),
        (
            ["model=ws_dan", "loss=multibox"],
            ["loss=multibox", "valid choices: loss=ce, loss=center"],
        ),
        (
            ["model=retinaface", "dataset=cub"],
            ["valid choices: dataset=synthetic_faces, dataset=widerface"],
        ),
    ]
    for overrides, needles in cases:
        r = run_cli("logger=none", f"hydra.run.dir={tmp_path / 'x'}", *overrides)
        assert r.returncode == 2, (overrides, r.stderr[-2000:])
        last = [line for line in r.stderr.splitlines() if line.strip()][-1]
        assert last.startswith("error: ") and all(n in last for n in needles), last
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_default_run_learns(tmp_path, data_dir):
    """`python run.py` with no arguments: the quick demo learns well above chance (10%)."""
    run = tmp_path / "default"
    r = run_cli("logger=none", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val/acc_top1"] > 0.5, summary
