"""run.py end to end as a subprocess on the toy trainer: modes, multirun, W&B offline, DDP."""

from __future__ import annotations

import json
import sys

from src.engine.checkpoint import load
from src.logging.metrics_file import read_metrics
from tests.conftest import REPO, TOY, cli_env, run_cli


def test_train_eval_predict_modes_with_wandb_offline(tmp_path):
    run = tmp_path / "train"
    r = run_cli(
        *TOY,
        "logger=wandb",
        "logger.mode=offline",
        "trainer.max_epochs=2",
        "trainer.batch_size=8",
        f"hydra.run.dir={run}",
        "seed=0",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for name in (
        "config.yaml",
        "config_tree.log",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        ".hydra/config.yaml",
    ):
        assert (run / name).exists(), name
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), "no W&B offline run files"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 16

    ev = run_cli(
        *TOY,
        "logger=none",
        "mode=eval",
        f"ckpt_path={run}/checkpoints/best.ckpt",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    ev_summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert ev_summary["val/acc"] == summary["best"]  # same weights, same metric

    img = tmp_path / "imgs"
    img.mkdir()
    (img / "a.png").write_bytes(b"")  # toy predict only records paths
    (img / "b.jpg").write_bytes(b"")
    pr = run_cli(
        *TOY, "logger=none", "mode=predict", f"input={img}", f"hydra.run.dir={tmp_path / 'pred'}"
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [p["path"] for p in preds] == [str(img / "a.png"), str(img / "b.jpg")]


def test_user_mistakes_give_one_line(tmp_path):
    cases = {
        ("mode=eval",): "mode=eval needs ckpt_path",
        ("mode=predict",): "mode=predict needs input=",
        ("mode=predict", f"input={tmp_path}/missing"): "no such file or folder",
        ("mode=fit",): "mode=fit is not one of train, eval, predict, export",
    }
    for overrides, message in cases.items():
        r = run_cli(*TOY, "logger=none", *overrides, f"hydra.run.dir={tmp_path / 'x'}")
        assert r.returncode == 2, (overrides, r.stderr[-2000:])
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and message in lines[-1], lines[-3:]
        assert "Traceback" not in r.stderr


def test_typos_and_wrong_types_fail_at_composition(tmp_path):
    for override, needle in (
        ("trainer.max_epoch=3", "max_epoch"),
        ("optimizer.lrr=0.1", "lrr"),
        ("trainer.batch_size=big", "batch_size"),
    ):
        r = run_cli(*TOY, override, f"hydra.run.dir={tmp_path / 'x'}")
        assert r.returncode != 0 and needle in r.stderr, (override, r.stderr[-1500:])


def test_multirun_two_jobs_each_its_own_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(
        "-m",
        *TOY,
        "logger=wandb",
        "logger.mode=offline",
        "trainer.max_steps=3",
        "trainer.batch_size=8",
        "optimizer.lr=0.1,0.01",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    run_ids = set()
    for job, lr in zip(jobs, (0.1, 0.01)):
        assert read_metrics(job)[0]["lr/main"] == lr
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
        cfg = (job / "config.yaml").read_text()
        assert f"lr: {lr}" in cfg
    assert len(run_ids) == 2  # finished between jobs: not the same run handed back


def test_ddp_two_gloo_processes_share_one_run_dir(tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "run.py"),
    ]
    r = run_cli(
        *TOY,
        "logger=none",
        "trainer.max_epochs=2",
        "trainer.batch_size=8",
        "seed=0",
        f"hydra.run.dir={run}",
        module=cmd,
        env=cli_env(),
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    # 64 samples over 2 ranks x 8 per batch = 4 steps per epoch
    assert summary["global_step"] == 8 and summary["status"] == "completed"
    ckpt = load(run / "checkpoints" / "last.ckpt")
    assert not any(".module." in k for k in ckpt["task"])  # saved unwrapped
    steps = [rec["step"] for rec in read_metrics(run) if "train/loss" in rec]
    assert steps == sorted(set(steps))  # only rank 0 logged


def test_checkpoint_artifact_is_recorded_in_the_offline_run(tmp_path):
    run = tmp_path / "art"
    r = run_cli(
        *TOY,
        "logger=wandb",
        "logger.mode=offline",
        "logger.log_checkpoint=true",
        "trainer.max_steps=2",
        "trainer.batch_size=8",
        f"hydra.run.dir={run}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (records,) = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    data = records.read_bytes()
    assert f"checkpoints-{run.name}".encode() in data  # the artifact's name
    assert b"last.ckpt" in data and b"best.ckpt" in data
