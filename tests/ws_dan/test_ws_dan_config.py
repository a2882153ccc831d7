"""The WS-DAN config files compose and build a working task through the app's builder."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from src.app import build_task, kind_of
from src.config.schema import register_configs
from src.tasks.ws_dan import WSDANTask

CONF = Path(__file__).resolve().parents[2] / "conf"


def composed(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_defaults_are_the_paper_model():
    cfg = composed("model=ws_dan", "loss=center", "dataset=cub")
    net = cfg.model.net
    assert net.backbone == "inception_v3" and net.feature_index == 3
    assert net.num_attentions == 32 and net.num_classes == 200
    assert cfg.model._target_ == "src.tasks.ws_dan.WSDANTask"
    assert WSDANTask.accepts["loss"] == ("ws_dan",) and kind_of(cfg.loss) == "ws_dan"
    assert kind_of(cfg.dataset) == "classification"
    assert cfg.dataset.root.endswith("CUB_200_2011")
    assert cfg.loss.beta == 0.05 and cfg.loss.center_weight == 1.0
    assert composed("loss=ce").loss.center_weight == 0.0


@pytest.mark.parametrize("loss", ["center", "ce"])
def test_build_task_from_config(tmp_path, loss):
    cfg = composed(
        "model=ws_dan",
        f"loss={loss}",
        "dataset=synthetic_cub",
        f"paths.data_dir={tmp_path}",
        "dataset.num_classes=3",
        "dataset.train_per_class=2",
        "dataset.test_per_class=1",
        "dataset.source_size=48",
        "dataset.image_size=32",
        "model.net.backbone=resnet18",
        "model.net.feature_index=1",
        "model.net.num_attentions=2",
    )
    task = build_task(cfg)
    assert isinstance(task, WSDANTask) and task.net.num_classes == 3
    assert task.crop_theta == (0.4, 0.6) and task.drop_theta == (0.2, 0.5)
    assert len(task.datasets()["train"]) == 6 and len(task.datasets()["val"]) == 3
    assert Path(task.datasets()["train"].meta.root).parent == tmp_path
    batch = task.collate([task.datasets()["train"].load(i, None) for i in range(4)])
    out = task.train().training_step(batch, None)
    assert torch.isfinite(out["loss"])
    assert (out["center"] > 0) == (loss == "center")
