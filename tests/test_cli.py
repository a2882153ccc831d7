"""`python run.py` as a user types it, one subprocess smoke test per mode, plus the user
mistakes (one line, exit code 2), typos at composition, multirun and torchrun DDP.

The full train -> eval -> predict flow runs on a real trainer (WS-DAN, debug=fast); engine
flows (multirun, DDP, one-liners) on the toy trainer (tests/toy). What a Task does in process
(a step, evaluation, state dicts, checkpoints, predict, export) is tests/test_tasks.py's;
resume exactness is tests/engine/test_resume.py's, sweeps tests/engine/test_sweeps.py's.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from src.engine.checkpoint import load
from src.logging.metrics_file import read_metrics
from tests.conftest import REPO, TOY, cli_env, run_cli


def _common(data_dir):
    return ["debug=fast", "print_config=false", f"paths.data_dir={data_dir}"]


def _compose(*overrides: str):
    """The config run.py would compose, in process."""
    from hydra import compose, initialize_config_dir

    from src.app import CONF_DIR
    from src.config import register_configs
    from src.utils.resolvers import register_resolvers

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _weights_file(path, *overrides: str):
    """A bare state dict of the Task these overrides build (what mode=eval/predict/export
    accept as ckpt_path), written without a training run."""
    from src.app import build_task

    cfg = _compose(*overrides, f"paths.output_dir={path.parent}")
    torch.manual_seed(0)
    task = build_task(cfg).eval()
    torch.save(task.state_dict(), path)
    return task


def _last_line(r) -> str:
    return [line for line in r.stderr.splitlines() if line.strip()][-1]


def test_train_eval_predict_ws_dan_with_wandb_offline(tmp_path, data_dir):
    """train: run dir files, metrics, checkpoints, a W&B offline run with pictures and the
    checkpoint artifact; eval of best.ckpt reproduces the metrics it was picked by; predict on
    one image file."""
    run = tmp_path / "train"
    r = run_cli(
        *_common(data_dir),
        "logger.mode=offline",
        "logger.log_checkpoint=true",
        f"hydra.run.dir={run}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CONFIG" not in r.stdout  # print_config=false
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
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 4
    assert 0.0 <= summary["val/acc_top1"] <= summary["val/acc_top5"] <= 1.0
    records = read_metrics(run)
    assert {"train/loss", "train/ce_raw", "train/ce_crop", "train/ce_drop", "train/center"} <= set(
        records[0]
    )
    cfg = (run / "config.yaml").read_text()
    assert "backbone: resnet18" in cfg and "${" not in cfg  # resolved

    (offline,) = list((run / "wandb").glob("offline-run-*"))
    (wandb_file,) = list(offline.glob("run-*.wandb"))
    assert list(offline.rglob("*.png")), "attention / crop / drop pictures were not logged"
    data = wandb_file.read_bytes()
    assert f"checkpoints-{run.name}".encode() in data  # the checkpoint artifact's name
    assert b"last.ckpt" in data and b"best.ckpt" in data

    # eval of best.ckpt gives the metrics logged at the step it was saved
    best = run / "checkpoints" / "best.ckpt"
    best_step = load(best)["progress"]["global_step"]
    (logged,) = [x for x in records if x["step"] == best_step and "val/acc_top1" in x]
    assert logged["val/acc_top1"] == summary["best"]
    ev = run_cli(
        *_common(data_dir),
        "logger=none",
        "mode=eval",
        f"ckpt_path={best}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    ev_summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert ev_summary["status"] == "completed" and ev_summary["mode"] == "eval"
    assert ev_summary["val/acc_top1"] == pytest.approx(summary["best"])
    for k, v in logged.items():
        if k.startswith("val/"):
            assert ev_summary[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k

    image = sorted(data_dir.rglob("*.jpg"))[0]
    pr = run_cli(
        *_common(data_dir),
        "logger=none",
        "mode=predict",
        f"ckpt_path={best}",
        f"input={image}",
        f"hydra.run.dir={tmp_path / 'pred'}",
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(preds) == 1 and preds[0]["path"] == str(image) and len(preds[0]["top5"]) == 5
    probs = [t["probability"] for t in preds[0]["top5"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    assert list((tmp_path / "pred" / "predictions").glob("*.png")) or list(
        (tmp_path / "pred" / "predictions").glob("*.jpg")
    )


def test_predict_on_a_folder(tmp_path):
    """A folder input: its images (any case of suffix, in sub-folders), sorted; other files
    ignored. The toy Task only records paths."""
    weights = tmp_path / "toy.pth"
    _weights_file(weights, *TOY)
    img = tmp_path / "imgs"
    (img / "sub").mkdir(parents=True)
    for name in ("a.png", "b.JPG", "sub/c.jpeg", "notes.txt"):
        (img / name).write_bytes(b"")
    pr = run_cli(
        *TOY,
        "logger=none",
        "mode=predict",
        f"ckpt_path={weights}",
        f"input={img}",
        f"hydra.run.dir={tmp_path / 'pred'}",
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [p["path"] for p in preds] == [str(img / n) for n in ("a.png", "b.JPG", "sub/c.jpeg")]
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_images"] == 3


def test_export_retinaface_onnx(tmp_path, data_dir):
    """mode=export from a bare weights file: an ONNX file that onnxruntime runs at a size other
    than the tracing one and that gives the network's outputs."""
    ort = pytest.importorskip("onnxruntime")
    small = [
        "model=retinaface",
        "dataset.image_size=64",
        "dataset.num_train=8",
        "dataset.num_val=6",
        "model.export_size=[64,64]",
        f"paths.data_dir={data_dir}",
    ]
    weights = tmp_path / "weights.pth"
    task = _weights_file(weights, *small)

    run = tmp_path / "export"
    r = run_cli(
        *small,
        "logger=none",
        "print_config=false",
        "mode=export",
        f"ckpt_path={weights}",
        f"hydra.run.dir={run}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    (path,) = summary["exported"]
    assert summary["status"] == "completed" and path.endswith(".onnx")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 96, 128) * 50
    with torch.no_grad():
        ref = task.net(x)
    for a, b in zip(sess.run(None, {"images": x.numpy()}), ref):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-3, atol=1e-3)


def test_user_mistakes_give_one_line(tmp_path):
    """Exit code 2 and one `error: ...` line naming the fix; no traceback."""
    weights = tmp_path / "toy.pth"
    _weights_file(weights, *TOY)
    toy = {
        ("mode=eval",): ["mode=eval needs ckpt_path"],
        ("mode=predict",): ["mode=predict needs input="],
        ("mode=predict", f"ckpt_path={weights}", f"input={tmp_path}/missing"): [
            "no such file or folder"
        ],
        ("mode=fit",): ["mode=fit is not one of train, eval, predict, export"],
    }
    real = {
        ("dataset=cub", f"paths.data_dir={tmp_path}/none"): [
            f"{tmp_path}/none/CUB_200_2011",
            "dataset=synthetic_cub",
        ],
        ("model=ws_dan", "dataset=widerface"): [
            "dataset=widerface",
            "model=ws_dan",
            "valid choices: dataset=cub, dataset=synthetic_cub",
        ],
        ("model=ws_dan", "loss=multibox"): [
            "loss=multibox",
            "valid choices: loss=ce, loss=center",
        ],
        ("model=retinaface", "dataset=cub"): [
            "valid choices: dataset=synthetic_faces, dataset=widerface"
        ],
    }
    cases = [(TOY + list(o), n) for o, n in toy.items()] + [(list(o), n) for o, n in real.items()]

    def one(i: int):
        overrides, _ = cases[i]
        return run_cli("logger=none", *overrides, f"hydra.run.dir={tmp_path / f'x{i}'}")

    with ThreadPoolExecutor(max_workers=3) as pool:  # each is mostly interpreter start-up
        results = list(pool.map(one, range(len(cases))))
    for (overrides, needles), r in zip(cases, results):
        assert r.returncode == 2, (overrides, r.stderr[-2000:])
        last = _last_line(r)
        assert last.startswith("error: ") and all(n in last for n in needles), (overrides, last)
        assert "Traceback" not in r.stderr, overrides


def test_typos_and_wrong_types_fail_at_composition(tmp_path):
    for override, needle in (
        ("trainer.max_epoch=3", "max_epoch"),
        ("optimizer.lrr=0.1", "lrr"),
        ("trainer.batch_size=big", "batch_size"),
    ):
        r = run_cli(*TOY, override, f"hydra.run.dir={tmp_path / 'x'}")
        assert r.returncode != 0 and needle in r.stderr, (override, r.stderr[-1500:])
        assert not (tmp_path / "x" / "metrics.jsonl").exists()  # stopped before any work


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


@pytest.mark.slow
def test_default_run_learns(tmp_path, data_dir):
    """`python run.py` with no arguments: the quick demo learns well above chance (10%)."""
    run = tmp_path / "default"
    r = run_cli("logger=none", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val/acc_top1"] > 0.5, summary
