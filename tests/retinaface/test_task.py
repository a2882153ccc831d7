"""RetinaFaceTask end to end: configs compose, a training step, evaluation (APs and the official
prediction files), pictures, predict, ONNX export, and `python run.py` as a user types it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.app import build_task
from src.config import register_configs
from src.metrics.widerface import evaluate_widerface, read_widerface_predictions
from src.models.retinaface import prior_boxes
from src.utils.resolvers import register_resolvers
from tests.conftest import REPO, run_cli

register_resolvers()
register_configs()

SMALL = ["dataset.image_size=64", "dataset.num_train=8", "dataset.num_val=6"]


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="module")
def task(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = _cfg(
        [
            "model=retinaface",
            "loss=multibox",
            "dataset=synthetic_faces",
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={out}",
            "model.save_predictions=true",
            *SMALL,
        ]
    )
    torch.manual_seed(0)
    t = build_task(cfg)
    t.out_dir = out
    return t


def _batches(task, split, n, bs=3, rng=None):
    ds = task.datasets()[split]
    samples = [
        ds.load(i, None if rng is None else np.random.default_rng([rng, i])) for i in range(n)
    ]
    return [task.collate(samples[i : i + bs]) for i in range(0, n, bs)]


@pytest.mark.parametrize(
    "experiment,expect",
    [
        (
            "retinaface_mnet",
            {
                "dataset.image_size": 640,
                "trainer.batch_size": 32,
                "trainer.max_epochs": 250,
                "optimizer.lr": 1e-3,
                "optimizer.momentum": 0.9,
                "optimizer.weight_decay": 5e-4,
                "scheduler.milestones": [190, 220],
                "scheduler.gamma": 0.1,
                "model.net.backbone": "mobilenet0.25",
                "trainer.channels_last": True,  # measured faster (benchmarks/train_step.py)
            },
        ),
        (
            "retinaface_r50",
            {
                "dataset.image_size": 840,
                "trainer.batch_size": 24,
                "trainer.max_epochs": 100,
                "optimizer.weight_decay": 5e-4,
                "scheduler.milestones": [70, 90],
                "model.net.backbone": "resnet50",
            },
        ),
        (
            "retinaface_synthetic",
            {
                "dataset._target_": "src.data.synthetic_faces.synthetic_faces_splits",
                "optimizer.lr": 2e-3,
            },
        ),
    ],
)
def test_recipes_compose(experiment, expect):
    cfg = _cfg([f"experiment={experiment}"])
    for key, value in expect.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert cfg.loss._target_ == "src.losses.multibox.MultiBoxLoss"
    assert cfg.model._target_ == "src.tasks.retinaface.RetinaFaceTask"
    assert cfg.loss.reference_matching is False


def test_training_step(task):
    batch = _batches(task, "train", 3, rng=1)[0]
    assert batch["boxes"].shape[0] == 3 and batch["image"].shape[-2:] == (64, 64)
    task.train()
    out = task.training_step(batch, None)
    assert set(out) >= {"loss", "loc", "cls", "landm", "num_pos"}
    assert torch.isfinite(out["loss"]) and float(out["num_pos"]) > 0
    out["loss"].backward()
    grads = [p.grad for p in task.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    task.net.zero_grad(set_to_none=True)


def test_evaluate_writes_official_predictions_that_score_the_same(task):
    task.eval()
    with torch.no_grad():
        metrics = task.evaluate(_batches(task, "val", 6))
    assert set(metrics) == {"ap_easy", "ap_medium", "ap_hard"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    files = read_widerface_predictions(task.predictions_dir)
    assert len(files) == 6
    aps = evaluate_widerface(files, task.datasets()["val"].widerface_gt())
    for k, v in aps.items():
        assert metrics[f"ap_{k}"] == pytest.approx(v, abs=1e-9)
    assert task.monitor == "val/ap_easy" and task.monitor_mode == "max"


def test_evaluate_scores_only_the_images_run(task):
    # a limited val loader (limit_val_batches) scores the images it saw, not all of the split
    task.eval()
    with torch.no_grad():
        metrics = task.evaluate(_batches(task, "val", 3))
    assert all(np.isfinite(v) for v in metrics.values())


def test_visualize_and_predict(task, tmp_path):
    task.vis_threshold = 0.0  # an untrained net: draw whatever it finds
    batch = _batches(task, "val", 2)[0]
    pics = task.visualize(batch)["detections"]  # box overlays for W&B (src/logging/detections)
    assert len(pics) == 2
    h, w = batch["image"].shape[-2:]
    for i, item in enumerate(pics):
        assert item.image.dtype == np.uint8 and item.image.shape == (h, w, 3)
        assert item.class_names == ("face",)
        assert len(item.predictions["boxes"]) == len(item.predictions["scores"]) > 0
        valid = batch["boxes"][i][(batch["boxes"][i] >= 0).all(dim=1)]
        want = valid.double() * torch.tensor([w, h, w, h], dtype=torch.float64)
        torch.testing.assert_close(item.ground_truth["boxes"].double(), want)
    ds = task.datasets()["val"]
    paths = [ds.images_dir / r.path for r in ds.records[:2]]
    with torch.no_grad():
        preds = task.predict(paths, tmp_path)
    assert [p["path"] for p in preds] == [str(p) for p in paths]
    for p in preds:
        assert Path(p["picture"]).is_file()
        for d in p["detections"]:
            assert len(d["box"]) == 4 and len(d["landmarks"]) == 10
    json.dumps(preds)  # what run.py writes
    task.vis_threshold = 0.5


def test_export_onnx_dynamic_size(task, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    task.export_size = (64, 64)
    (path,) = task.export(tmp_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    task.eval()
    for h, w in [(64, 64), (96, 128)]:
        x = torch.randn(1, 3, h, w) * 50
        with torch.no_grad():
            ref = task.net(x)
        got = sess.run(None, {"images": x.numpy()})
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-3, atol=1e-3)


def test_cli_train_and_eval(data_dir, tmp_path):
    common = [
        "model=retinaface",
        "loss=multibox",
        "dataset=synthetic_faces",
        "logger=none",
        "print_config=false",
        f"paths.data_dir={data_dir}",
        *SMALL,
    ]
    run_dir = tmp_path / "train"
    r = run_cli(*common, "debug=fast", "dataset.image_size=64", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/ap_easy" in x for x in lines)
    assert any("train/landm" in x for x in lines)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    r = run_cli(*common, "mode=eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert "val/ap_easy" in summary


def test_cli_rejects_a_wrong_loss(data_dir, tmp_path):
    r = run_cli(
        "model=retinaface",
        "loss=center",
        "dataset=synthetic_faces",
        "logger=none",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path}",
    )
    assert r.returncode == 2 and "does not fit model=retinaface" in r.stderr


@pytest.mark.slow
def test_learns_synthetic_faces(data_dir, tmp_path):
    """The learning proof (about 3 minutes on 2 CPU cores): easy AP well above 0.9."""
    r = run_cli(
        "experiment=retinaface_synthetic",
        "logger=none",
        "print_config=false",
        f"paths.data_dir={data_dir}",
        "trainer.progress_bar=false",
        f"hydra.run.dir={tmp_path}",
        timeout=1500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"] > 0.9


class _OracleNet(torch.nn.Module):
    """Outputs that encode the current batch's ground truth exactly (positives of the dense
    assignment score ~1, everything else ~0): evaluation must then find every kept face."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.batch = None

    def priors(self, size, device=None, dtype=torch.float32):
        return prior_boxes(size, device=device, dtype=dtype)

    def forward(self, images):
        from src.losses.multibox import MultiBoxLoss

        b = self.batch
        pri = self.priors(tuple(images.shape[-2:]))
        t = MultiBoxLoss(assignment="dense").assign(pri, b["boxes"], b["labels"], b["landmarks"])
        pos = t.positive.float()
        conf = torch.stack([10 * (1 - pos), 10 * pos], -1)
        return t.loc, conf, t.landm


@pytest.mark.parametrize("eval_size", [None, 48])
def test_evaluate_maps_detections_back_to_original_pixels(tmp_path, eval_size):
    cfg = _cfg(
        [
            "model=retinaface",
            "loss=multibox",
            "dataset=synthetic_faces",
            f"paths.data_dir={tmp_path}",
            f"paths.output_dir={tmp_path}",
            f"dataset.eval_size={eval_size if eval_size else 'null'}",
            "dataset.image_size=128",
            "dataset.num_train=1",
            "dataset.num_val=12",
        ]
    )
    task = build_task(cfg)
    task.net = _OracleNet()
    batches = _batches(task, "val", 12)
    gt = task.datasets()["val"].widerface_gt()
    assert sum(len(k) for k in gt.keep["easy"]) > 0

    def loader():
        for b in batches:
            task.net.batch = b
            yield b

    with torch.no_grad():
        aps = task.evaluate(loader())
    assert aps["ap_easy"] == pytest.approx(1.0)
    if eval_size is None:  # at 48 px the 16 px faces shrink to 6 px: below the smallest prior
        assert aps["ap_medium"] > 0.9
