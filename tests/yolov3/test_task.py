"""The YOLOv3 Task: burn-in on the engine's optimizer (and put back after each step), multi-scale
resizing, parameter groups, a training step + evaluation through the engine on a small
synthetic VOC set, and predictions mapped back to original pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src.data.synthetic_detection import synthetic_voc_splits
from src.engine.trainer import Trainer
from src.logging import RunLogger
from src.losses.yolo import YoloLoss
from src.models.yolov3 import YOLOv3
from src.tasks.yolov3 import YOLOv3ConfigError, YOLOv3Task

TRAINER = {
    "accelerator": "cpu", "ddp_backend": "gloo", "ema_decay": 0.9999, "ema_ramp": 2000,
    "max_epochs": 1, "max_steps": 2, "batch_size": 4, "eval_batch_size": 4, "num_workers": 0,
    "limit_train_batches": -1, "limit_val_batches": -1, "precision": "fp32",
    "grad_clip_norm": None, "accumulate_grad_batches": 1, "max_consecutive_nonfinite": 10,
    "log_every_n_steps": 1, "eval_every_n_epochs": 0, "eval_every_n_steps": 0,
    "checkpoint_every_n_steps": 0, "save_last": False, "save_best": False,
    "progress_bar": False, "preempt_at_step": None, "find_unused_parameters": False,
}  # fmt: skip
SGD = {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.937, "weight_decay": 5e-4,
       "nesterov": True}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo_voc")
    return synthetic_voc_splits(root, num_train=8, num_val=4, source_size=80, image_size=64,
                                augment=False, normalize="unit")  # fmt: skip


def make_task(data, **kw):
    torch.manual_seed(0)
    net = YOLOv3(num_classes=4, width=0.125, blocks=(1, 1, 1, 1, 1))
    return YOLOv3Task(net=net, loss=YoloLoss(), data=data, predict_size=64, **kw)


def test_parameter_groups_decay_conv_weights_only(data):
    task = make_task(data)
    (groups,) = task.optimizer_groups().values()
    names = {g["name"]: g for g in groups}
    assert set(names) == {"other", "weights", "bias"}
    assert "weight_decay" not in names["weights"]  # the optimizer's weight_decay applies
    assert names["other"]["weight_decay"] == names["bias"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(task.net.parameters()))
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert all(p.dim() == 4 for p in names["weights"]["params"])


def test_burn_in_ramps_and_restores(data):
    task = make_task(data, burn_in=10)
    (groups,) = task.optimizer_groups().values()
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.937)
    task.burn_in.apply(opt, 5)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["weights"] == pytest.approx(0.005) and lrs["other"] == pytest.approx(0.005)
    assert lrs["bias"] == pytest.approx(0.1 + (0.01 - 0.1) * 0.5)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9 + 0.037 * 0.5)
    task.burn_in.restore(opt)
    assert all(g["lr"] == 0.01 and g["momentum"] == 0.937 for g in opt.param_groups)
    task.burn_in.apply(opt, 10)  # done: no change
    assert all(g["lr"] == 0.01 for g in opt.param_groups)


def test_multi_scale_resizes_images_and_boxes(data):
    task = make_task(data, multi_scale=[96, 160], multi_scale_every=10)
    sizes = [task.size_at(s) for s in range(0, 60)]
    assert all(a == b for i, (a, b) in enumerate(zip(sizes, sizes[1:])) if (i + 1) % 10)
    assert len(set(sizes)) > 1 and set(sizes) <= {96, 128, 160}
    batch = task.collate([data["train"].load(i, None) for i in range(2)])
    step = next(s for s in range(60) if task.size_at(s) != 64)
    size = task.size_at(step)
    out = task.on_train_batch_start(batch, step)
    assert out["image"].shape[-2:] == (size, size)
    pad = batch["labels"] < 0
    assert torch.equal(out["boxes"][pad], batch["boxes"][pad])  # padding stays -1
    torch.testing.assert_close(out["boxes"][~pad], batch["boxes"][~pad] * size / 64)
    with pytest.raises(YOLOv3ConfigError, match="multi_scale"):
        make_task(data, multi_scale=[300, 608])


def _half_crossings(profile: torch.Tensor) -> tuple[float, float]:
    """Where a 1-D profile of a bright bar (0 outside, 1 inside) crosses 0.5, in continuous
    pixel coordinates (pixel j spans [j, j + 1]), linearly between pixel centres."""
    above = (profile >= 0.5).nonzero().flatten()
    j0, j1 = int(above[0]), int(above[-1])

    def at(a: int, b: int) -> float:  # crossing between the centres a + 0.5 and b + 0.5
        pa, pb = float(profile[a]), float(profile[b])
        return a + 0.5 + (b - a) * (0.5 - pa) / (pb - pa)

    return at(j0 - 1, j0), at(j1, j1 + 1)


@pytest.mark.parametrize(
    ("shape", "size", "new", "tol"),
    [
        ((32, 32), 64, (64, 64), 1e-4),
        ((32, 32), 160, (160, 160), 1e-4),
        ((32, 48), 96, (64, 96), 1e-4),  # long side 96, short side 64: factors 2, 2
        ((32, 48), 160, (128, 160), 1e-4),  # short side rounded up to 128: factors 4, 3.33
        ((32, 32), 96, (96, 96), 0.05),  # factor 1.5
    ],
)
def test_multi_scale_box_covers_the_same_content(data, shape, size, new, tol):
    """Values, not shapes: a bright rectangle drawn exactly on a box's pixel edges is, after the
    multi-scale resize, bounded (at half intensity) by the resized box, and the box sits at the
    same normalised place. With a factor >= 2 the bilinear ramp spans both pixel centres next to
    the edge, so the half-intensity crossing found between them is exact; at 1.5 it is within
    a few hundredths of a pixel."""
    task = make_task(data, multi_scale=[size, size], multi_scale_every=1)
    h, w = shape
    x1, y1, x2, y2 = 6, 8, 30, 24
    images = torch.zeros(2, 3, h, w)
    images[0, :, y1:y2, x1:x2] = 1.0
    batch = {
        "image": images,
        "boxes": torch.tensor([[[x1, y1, x2, y2], [-1, -1, -1, -1]]] * 2, dtype=torch.float32),
        "labels": torch.tensor([[0, -1]] * 2),
    }
    out = task.on_train_batch_start(batch, 0)
    nh, nw = out["image"].shape[-2:]
    assert (nh, nw) == new  # long side = size, short side rounded up to a multiple of 32
    bx1, by1, bx2, by2 = out["boxes"][0, 0].tolist()
    img = out["image"][0, 0]
    cy, cx = int((by1 + by2) / 2), int((bx1 + bx2) / 2)
    left, right = _half_crossings(img[cy])
    top, bottom = _half_crossings(img[:, cx])
    assert (left, top, right, bottom) == pytest.approx((bx1, by1, bx2, by2), abs=tol)
    normalised = torch.tensor([bx1 / nw, by1 / nh, bx2 / nw, by2 / nh])
    torch.testing.assert_close(normalised, torch.tensor([x1 / w, y1 / h, x2 / w, y2 / h]))
    assert out["boxes"][0, 1].tolist() == [-1, -1, -1, -1]  # padding untouched


def test_class_count_mismatch_is_one_line(data):
    net = YOLOv3(num_classes=20, width=0.125, blocks=(1, 1, 1, 1, 1))
    with pytest.raises(YOLOv3ConfigError, match="num_classes=4"):
        YOLOv3Task(net=net, loss=YoloLoss(), data=data)


def test_engine_steps_with_burn_in_and_evaluates(data, tmp_path):
    task = make_task(data, burn_in=4, multi_scale=[64, 96], multi_scale_every=1)
    seen = []
    original = task.training_step

    def spy(batch, opt):
        out = original(batch, opt)
        seen.append(([g["lr"] for g in opt.optimizers["main"].param_groups], task.loss.gr,
                     tuple(batch["image"].shape[-2:])))  # fmt: skip
        return out

    task.training_step = spy
    trainer = Trainer(task, OmegaConf.create(TRAINER), tmp_path, RunLogger(tmp_path, None),
                      seed=0, optimizer_cfg=OmegaConf.create(SGD))  # fmt: skip
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert summary["nonfinite_skipped"] == 0
    (first_lrs, gr0, _), (second_lrs, gr1, _) = seen
    assert first_lrs[:2] == [0.0, 0.0] and first_lrs[2] == pytest.approx(0.1)  # step 0
    assert second_lrs[0] == pytest.approx(0.0025) and gr0 == 0.0 and gr1 == 0.25
    opt = trainer.opt.optimizers["main"]
    assert all(g["lr"] == 0.01 and g["momentum"] == 0.937 for g in opt.param_groups)
    metrics = trainer.evaluate()
    assert "val/voc_mAP" in metrics and math.isfinite(metrics["val/voc_mAP"])
    assert 0.0 <= metrics["val/voc_mAP"] <= 1.0


def test_predictions_map_back_to_original_pixels(data, tmp_path):
    """A picture predicted at two letterbox sizes gives the same boxes in original pixels when
    the network's output is forced to one box at a known letterboxed position."""
    from PIL import Image

    task = make_task(data).eval()
    img = np.zeros((40, 80, 3), np.uint8)  # landscape: scale 64/80, top pad (64 - 32) // 2
    Image.fromarray(img).save(tmp_path / "a.png")

    def fake_detect(images, conf, iou):
        return [{"boxes": torch.tensor([[8.0, 20.0, 40.0, 44.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([2])}]  # fmt: skip

    task.detect = fake_detect
    rec = task.predict([tmp_path / "a.png"], tmp_path / "out")[0]
    (det,) = rec["detections"]
    s = 64 / 80
    assert det["box"] == pytest.approx([8 / s, (20 - 16) / s, 40 / s, (44 - 16) / s])
    assert det["class"] == data["val"].class_names[2]
