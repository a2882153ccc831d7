"""The Task contract (src/tasks/base.py) over every trainer: one in-process test per
``conf/model/*.yaml``, so a new trainer is covered the moment its config exists.

Each model is composed as ``python run.py model=<name> debug=fast`` would compose it (its
default loss and dataset), shrunk where a model needs it (``SHRINK``; an unknown model runs with
none), checked, built, and taken through a real ``Trainer``: one training step with backward,
evaluation on two batches, a state_dict round trip, checkpoint save and resume, predict on one
image file, and export where the Task has it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from PIL import Image

from src.app import CONF_DIR, IMAGE_SUFFIXES, build_task, check_compatibility
from src.config import register_configs
from src.engine.data import to_device
from src.engine.seed import seed_everything
from src.engine.trainer import Trainer
from src.logging import RunLogger
from src.tasks.base import Task
from src.utils.resolvers import register_resolvers

register_resolvers()
register_configs()

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))

# Per-model overrides that keep a step within seconds on 2 CPU cores (taken from each model's
# own tests). A model missing here runs with debug=fast alone.
SHRINK: dict[str, list[str]] = {
    "centernet": [
        "dataset.image_size=64",
        "dataset.num_train=8",
        "dataset.num_val=4",
        "model.export_size=[64,64]",
    ],
    "yolov3": [
        "dataset.image_size=64",
        "dataset.num_train=8",
        "dataset.num_val=4",
        "dataset.source_size=64",
        "model.net.width=0.125",
        "model.net.blocks=[1,1,1,1,1]",
        "model.predict_size=64",
        "model.export_size=[64,64]",
    ],
    "ws_dan": [
        "model.net.backbone=resnet18",
        "model.net.feature_index=1",
        "model.net.num_attentions=2",
        "dataset.image_size=32",
    ],
    "pix2pix": [
        "dataset.image_size=32",
        "dataset.num_train=8",
        "dataset.num_val=8",
        "dataset.num_test=1",
        "dataset.source_size=36",
        "model.generator.ngf=8",
        "model.discriminator.ndf=8",
        "model.pool_size=4",  # the image pool's buffers go through the state-dict checks
    ],
    "wgan": [
        "dataset.image_size=16",
        "dataset.num_train=8",
        "dataset.num_val=4",
        "dataset.source_size=16",
        "model.generator.ngf=4",
        "model.critic.ndf=4",
        "model.num_samples=4",
    ],
    "wgan_gp": [
        "dataset.image_size=16",
        "dataset.num_train=8",
        "dataset.num_val=4",
        "dataset.source_size=16",
        "model.generator.ngf=4",
        "model.critic.ndf=4",
        "model.num_samples=4",
    ],
    "pix2pixhd": [
        "dataset.num_train=8",
        "dataset.num_test=4",
        "model.generator.ngf=8",
        "model.generator.n_blocks_global=1",
        "model.discriminator.ndf=8",
        "model.pool_size=4",  # the image pool's buffers go through the state-dict checks
    ],
    "cyclegan": [
        "dataset.image_size=32",
        "dataset.num_train_a=8",
        "dataset.num_train_b=6",
        "dataset.num_test=8",  # two val batches of 4
        "dataset.source_size=36",
        "model.generator.name=resnet_1blocks",
        "model.generator.ngf=4",
        "model.discriminator.ndf=4",
        "model.pool_size=4",  # both image pools' buffers go through the state-dict checks
    ],
    "deblurgan": [
        "dataset.image_size=32",
        "dataset.source_size=40",
        "dataset.kernel_size=5",
        "dataset.train_sequences=1",
        "dataset.test_sequences=1",
        "dataset.frames_per_sequence=8",
        "model.generator.ngf=4",
        "model.generator.n_blocks=1",
        "model.discriminator.ndf=4",
    ],
    "deblurgan_v2": [
        "dataset.image_size=32",
        "dataset.source_size=40",
        "dataset.kernel_size=5",
        "dataset.train_sequences=1",
        "dataset.test_sequences=1",
        "dataset.frames_per_sequence=8",
        "model.generator.num_filters=8",
        "model.generator.num_filters_fpn=16",
        "model.patch_discriminator.ndf=4",
        "model.full_discriminator.ndf=4",
    ],
    "dpe": [
        "dataset.image_size=64",
        "dataset.source_size=64",
        "dataset.num_train=8",
        "dataset.num_test=8",  # two val batches of 4
        "model.generator.ngf=4",
        "model.critic.ndf=4",
    ],
    "retinaface": [
        "dataset.image_size=64",
        "dataset.num_train=8",
        "dataset.num_val=6",  # two val batches of 4
        "model.export_size=[64,64]",
    ],
}

TRAINER = [
    "trainer.max_steps=1",
    "trainer.limit_val_batches=2",
    "trainer.num_workers=0",
    "trainer.eval_every_n_epochs=0",  # the test evaluates once itself
    "trainer.eval_every_n_steps=0",
    "trainer.progress_bar=false",
]


def _compose(name: str, data_dir: Path, run_dir: Path):
    overrides = [
        f"model={name}",
        "debug=fast",
        "logger=none",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={run_dir}",
        f"paths.work_dir={run_dir}",
        *TRAINER,
        *SHRINK.get(name, []),
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _trainer(task, cfg, run_dir: Path) -> Trainer:
    return Trainer(
        task,
        cfg.trainer,
        run_dir,
        RunLogger(run_dir, None),
        seed=cfg.get("seed"),
        optimizer_cfg=cfg.optimizer,
        scheduler_cfg=cfg.get("scheduler"),
    )


def _tensors(x) -> list[torch.Tensor]:
    """Every tensor in a (nested) module output."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def _outputs_on(task: Task, batch) -> tuple[list[torch.Tensor], dict[str, float]]:
    """What the Task's networks output while it evaluates ``batch`` (eval mode, no grad), and
    the metrics: any Task's networks, whatever their inputs."""
    seen: list[torch.Tensor] = []
    hooks = [
        getattr(task, n).register_forward_hook(lambda m, i, o: seen.extend(_tensors(o)))
        for n in task.ddp_modules
    ]
    task.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            metrics = task.evaluate([batch])
    finally:
        for h in hooks:
            h.remove()
    return [t.detach().cpu() for t in seen], metrics


def _assert_same(a, b, where: str = "") -> None:
    """Nested state (dicts, lists, tensors, numbers) equal exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _image_suffix(cfg) -> str:
    """The image format the model's dataset is stored in (``.jpg`` if none is found)."""
    root = cfg.dataset.get("root")
    if root and Path(root).is_dir():
        for p in sorted(Path(root).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                return p.suffix
    return ".jpg"


@pytest.mark.parametrize("name", MODELS)
def test_task_contract(name, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _compose(name, data_dir, run_dir)
    check_compatibility(cfg)
    seed_everything(0)
    task = build_task(cfg)
    assert isinstance(task, Task)
    assert task.monitor_mode in ("min", "max")
    assert "train" in task.datasets()

    # one training step with backward through the engine
    trainer = _trainer(task, cfg, run_dir)
    before = {k: p.detach().clone() for k, p in task.named_parameters()}
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["global_step"] == 1, summary
    after = dict(task.named_parameters())
    assert any(not torch.equal(before[k], p) for k, p in after.items()), "no parameter moved"
    assert all(torch.isfinite(p).all() for p in after.values()), "a parameter is not finite"
    assert summary["nonfinite_skipped"] == 0

    # evaluation on two batches: plain finite floats, the monitor among them
    metrics = trainer.evaluate()
    assert metrics and all(k.startswith("val/") for k in metrics), metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    assert task.monitor in metrics, (task.monitor, sorted(metrics))
    assert task.training  # evaluate() gives the mode back

    # state_dict round trip: a fresh build loads it strictly and computes the same outputs
    val = task.datasets().get("val") or task.datasets()["train"]
    batch = to_device(task.collate([val.load(i, None) for i in range(2)]), trainer.device)
    seed_everything(1)  # a different initialisation, so loading has to do the work
    fresh = build_task(cfg).to(trainer.device)
    fresh.load_state_dict(task.state_dict(), strict=True)
    ref, ref_metrics = _outputs_on(task, batch)
    got, got_metrics = _outputs_on(fresh, batch)
    assert ref and len(ref) == len(got)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert got_metrics == ref_metrics

    # checkpoint save and resume: a fresh Trainer continues from the same step and weights
    ckpt = trainer.save("last.ckpt")
    assert ckpt is not None and ckpt.is_file()
    seed_everything(2)
    resumed_task = build_task(cfg)
    resumed = _trainer(resumed_task, cfg, tmp_path / "resumed")
    resumed_summary = resumed.fit(ckpt_path=str(ckpt))  # max_steps=1 reached: restore only
    assert resumed.global_step == trainer.global_step == resumed_summary["global_step"] == 1
    assert (resumed.epoch, resumed.batch_in_epoch) == (trainer.epoch, trainer.batch_in_epoch)
    a, b = task.state_dict(), resumed_task.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k
    _assert_same(resumed.opt.state_dict(), trainer.opt.state_dict())  # momenta, steps, lr

    # predict on one image file in the dataset's format
    size = int(cfg.dataset.get("image_size") or 64)
    picture = tmp_path / f"input{_image_suffix(cfg)}"
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(picture)
    task.eval()
    with torch.no_grad():
        preds = task.predict([picture], tmp_path / "predictions")
    assert len(preds) == 1 and preds[0]["path"] == str(picture), preds
    assert "error" not in preds[0], preds[0]
    json.dumps(preds)  # what run.py writes to predictions.json


@pytest.mark.parametrize("name", MODELS)
def test_task_export(name, data_dir, tmp_path):
    cfg = _compose(name, data_dir, tmp_path / "run")
    if get_object(cfg.model._target_).export is Task.export:
        pytest.skip(f"model={name}: its Task has no export")
    seed_everything(0)
    task = build_task(cfg).eval()
    with torch.no_grad():
        paths = task.export(tmp_path / "export")
    assert paths and all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)
