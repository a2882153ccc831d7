"""CenterNetTask on the synthetic COCO files: evaluation through pycocotools, including the
pass with no detection at all (AP 0 and a warning, not a crash), and the class-count check."""

from __future__ import annotations

import logging

import pytest
import torch

from src.data.detection import collate_detection
from src.data.synthetic_detection import synthetic_coco_splits
from src.losses.centernet import CenterNetLoss
from src.models.centernet import CenterNet
from src.tasks.centernet import CenterNetConfigError, CenterNetTask


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn") / "synthetic_coco"
    return synthetic_coco_splits(root, num_train=4, num_val=4, source_size=64, image_size=64)


def _task(data, num_classes=4):
    torch.manual_seed(0)
    net = CenterNet(num_classes, "ghostnet_050", cnv_dim=8, head_dim=8, pool_dim=4, neck_dim=8)
    return CenterNetTask(net, CenterNetLoss(), data, top_k=10, num_dets=50).eval()


def _loader(ds):
    return torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_detection)


def test_no_detection_at_all_scores_zero_with_a_warning(data, caplog):
    task = _task(data)
    with torch.no_grad():
        for heats in (task.net.tl_heats, task.net.br_heats, task.net.ct_heats):
            heats[0][1].bias.fill_(-1e4)  # every heatmap score ~0: nothing survives
            heats[0][1].weight.zero_()
        task.net.tl_tags[0][1].bias.fill_(100.0)  # and no corner pair matches
    with caplog.at_level(logging.WARNING), torch.no_grad():
        stats = task.evaluate(_loader(data["val"]))
    assert stats["coco_AP"] == 0 and stats["coco_AP50"] == 0 and stats["coco_AR100"] == 0
    assert any("no detections" in r.getMessage() for r in caplog.records)


def test_untrained_network_evaluates_and_visualizes(data):
    task = _task(data)
    with torch.no_grad():
        stats = task.evaluate(_loader(data["val"]))
        pics = task.visualize(next(iter(_loader(data["val"]))))
    assert set(stats) >= {"coco_AP", "coco_AP50", "coco_AR100"}
    assert 0 <= stats["coco_AP"] <= 1
    assert len(pics["detections"]) == 2 and pics["detections"][0][0].shape == (64, 64, 3)


def test_class_count_mismatch_is_one_line(data):
    with pytest.raises(CenterNetConfigError, match="model.net.num_classes=4") as e:
        _task(data, num_classes=80)
    assert "\n" not in str(e.value)
