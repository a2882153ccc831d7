"""YOLOv3 trainer: ``python run.py model=yolov3 loss=giou dataset=voc`` (or ``dataset=coco``,
``dataset=yolo``, ``dataset=synthetic_voc``, the quick default).

Ties the network (``src.models.yolov3``), the loss (``src.losses.yolo``, kind ``yolo``), the
detection data (``src.data.detection``: letterboxed samples, ``collate_detection``, -1 padding)
and the evaluators (``src.metrics.voc`` / ``src.metrics.coco``):

* ``training_step``: burn-in warm-up of lr / momentum / ``gr`` (the archive's, on the optimizer
  the engine passes in ``opt``; put back after the step, ``on_after_optimizer_step``), forward,
  loss in float32 -> ``loss``, ``box``, ``obj``, ``cls``, ``num_targets``;
* ``on_train_batch_start``: multi-scale training (``multi_scale: [320, 608]``: every
  ``multi_scale_every`` batches a new square size, a multiple of 32, drawn from the step alone,
  so it is the same on resume and on every DDP rank; images resized bilinearly, boxes scaled);
* ``evaluate``: decode, confidence threshold, class-aware NMS (conf 0.001 / IoU 0.6), boxes
  mapped back through the letterbox to original pixels, VOC mAP@0.5 (``metric: voc``) or COCO
  AP (``metric: coco``; ``auto``: COCO for a dataset with a COCO ground truth) -> monitor
  ``val/voc_mAP`` or ``val/coco_AP``;
* ``predict_one``: letterbox, detect at conf 0.3 / IoU 0.5, boxes drawn on the original image;
* ``export``: ONNX (network + decode, dynamic batch).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from src.data.base import DataError
from src.data.detection import collate_detection, letterbox, read_rgb, to_tensor
from src.logging.detections import DetectionItem, draw_detections
from src.models.yolov3 import decode
from src.models.yolov3.detect import postprocess
from src.models.yolov3.warmup import BurnIn
from src.tasks.base import Task, unwrap
from src.utils.errors import UserError

log = logging.getLogger(__name__)

METRICS = ("auto", "voc", "coco")


class YOLOv3ConfigError(UserError):
    pass


def draw_boxes(
    image_rgb: np.ndarray, boxes, scores, labels, names: list[str] | None = None
) -> np.ndarray:
    """A copy of the uint8 RGB image with boxes and ``class score`` captions (the shared
    ``src.logging.detections.draw_detections``)."""
    predictions = {"boxes": np.asarray(boxes), "scores": np.asarray(scores), "labels": labels}
    item = DetectionItem(image_rgb, predictions, None, list(names or []))
    return draw_detections(item, min_score=-np.inf, max_boxes=len(predictions["boxes"]))


class YOLOv3Task(Task):
    accepts = {"loss": ("yolo",), "dataset": ("detection",)}
    monitor = "val/voc_mAP"
    monitor_mode = "max"

    def __init__(
        self,
        net: torch.nn.Module,
        loss: torch.nn.Module,
        data: dict[str, Any],
        conf_thres: float = 0.001,
        iou_thres: float = 0.6,
        multi_label: bool = True,
        max_det: int = 300,
        max_nms: int = 30000,
        vis_conf_thres: float = 0.3,
        vis_iou_thres: float = 0.5,
        metric: str = "auto",
        burn_in: int = 1000,
        burn_in_bias_lr: float = 0.1,
        burn_in_momentum: float = 0.9,
        burn_in_gr: bool = True,
        multi_scale: list[int] | None = None,
        multi_scale_every: int = 10,
        predict_size: int = 416,
        export_size: list[int] | tuple[int, int] = (416, 416),
        num_visualize: int = 4,
        normalize: str | None = None,
    ):
        super().__init__(loss, data)
        self.net = net
        self.conf_thres, self.iou_thres = float(conf_thres), float(iou_thres)
        self.multi_label, self.max_det = bool(multi_label), int(max_det)
        self.max_nms = int(max_nms)
        self.vis_conf_thres, self.vis_iou_thres = float(vis_conf_thres), float(vis_iou_thres)
        if metric not in METRICS:
            raise YOLOv3ConfigError(f"model.metric={metric!r}: choose one of {', '.join(METRICS)}")
        val = self.data.get("val")
        if metric == "auto":
            metric = "coco" if hasattr(val, "coco") else "voc"
        if metric == "coco" and val is not None and not hasattr(val, "coco"):
            raise YOLOv3ConfigError(
                "model.metric=coco needs a COCO-format val split (dataset=coco or "
                "synthetic_coco); use model.metric=voc"
            )
        self.metric = metric
        self.monitor = "val/coco_AP" if metric == "coco" else "val/voc_mAP"
        self.burn_in = BurnIn(burn_in, burn_in_bias_lr, burn_in_momentum)
        self.burn_in_gr = bool(burn_in_gr)
        self.final_gr = float(getattr(loss, "gr", 1.0))
        if multi_scale is not None:
            lo, hi = (int(v) for v in multi_scale)
            if lo % 32 or hi % 32 or not 32 <= lo <= hi:
                raise YOLOv3ConfigError(
                    f"model.multi_scale={list(multi_scale)}: [min, max] multiples of 32"
                )
            self.sizes = list(range(lo, hi + 1, 32))
        else:
            self.sizes = None
        self.multi_scale_every = max(1, int(multi_scale_every))
        self.predict_size = int(predict_size)
        self.export_size = (int(export_size[0]), int(export_size[1]))
        self.num_visualize = int(num_visualize)
        train = self.data.get("train")
        self.normalize = normalize or getattr(val or train, "normalize", "unit")
        self.class_names = list(getattr(val or train, "class_names", []) or [])
        self.check_num_classes(unwrap(net).num_classes, YOLOv3ConfigError)
        self._optimizer = None

    # ---- data -----------------------------------------------------------------------
    def collate(self, samples: list[Any]) -> Any:
        return collate_detection(samples)

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list]:
        """One optimizer with the archive's three parameter groups: conv weights (the
        configured weight decay), batch-norm weights and other parameters (no decay), biases
        (no decay; their burn-in lr falls from ``burn_in_bias_lr``)."""
        decay, other, bias = [], [], []
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith(".bias"):
                bias.append(p)
            elif name.endswith("Conv2d.weight"):
                decay.append(p)
            else:
                other.append(p)
        groups = [
            {"params": other, "weight_decay": 0.0, "name": "other"},
            {"params": decay, "name": "weights"},
            {"params": bias, "weight_decay": 0.0, "name": "bias"},
        ]
        return {"main": [g for g in groups if g["params"]]}

    def on_after_optimizer_step(self, name: str) -> None:
        if self._optimizer is not None:
            self.burn_in.restore(self._optimizer)

    # ---- training -------------------------------------------------------------------
    def size_at(self, step: int) -> int | None:
        """The multi-scale input size for optimizer step ``step`` (None: off)."""
        if not self.sizes:
            return None
        g = torch.Generator().manual_seed(step // self.multi_scale_every)
        return self.sizes[int(torch.randint(len(self.sizes), (1,), generator=g))]

    def on_train_batch_start(self, batch: dict, step: int) -> dict:
        """Multi-scale: the batch resized so its long side is ``size_at(step)`` (the short side
        rounded up to a multiple of 32, as the archive; square letterboxed batches stay square),
        bilinear with ``align_corners=False``, which maps the continuous pixel coordinate x to
        x * new / old on each axis -- the factor the boxes (corner pixels) are scaled by, so a
        box covers the same content, at the same normalised place, after the resize."""
        self._step = step
        size = self.size_at(step)
        if size is None:
            return batch
        images = batch["image"]
        h, w = images.shape[-2:]
        f = size / max(h, w)
        nh, nw = (int(math.ceil(v * f / 32) * 32) for v in (h, w))
        if (nh, nw) == (h, w):
            return batch
        batch = dict(batch)
        batch["image"] = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False)
        scale = batch["boxes"].new_tensor([nw / w, nh / h, nw / w, nh / h])
        pad = (batch["labels"] < 0)[..., None]
        batch["boxes"] = torch.where(pad, batch["boxes"], batch["boxes"] * scale)
        return batch

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        step = getattr(self, "_step", opt.num_steps)
        if opt is not None and getattr(opt, "optimizers", None):
            self._optimizer = next(iter(opt.optimizers.values()))
            self.burn_in.apply(self._optimizer, step)
        if self.burn_in_gr and hasattr(self.loss, "gr"):
            self.loss.gr = self.final_gr * self.burn_in.fraction(step)
        net = unwrap(self.net)
        images = batch["image"]
        outputs = self.net(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            out = self.loss(
                [o.float() for o in outputs],
                batch["boxes"].float(),
                batch["labels"],
                net.layer_anchors(),
                net.strides,
                crowd=batch.get("crowd"),
            )
        return out

    # ---- inference ------------------------------------------------------------------
    def detect(self, images: torch.Tensor, conf_thres: float, iou_thres: float) -> list[dict]:
        net = unwrap(self.net)
        d = decode([o.float() for o in self.net(images)], net.layer_anchors(), net.strides)
        return postprocess(
            d, conf_thres, iou_thres, self.multi_label, self.max_det, max_nms=self.max_nms
        )

    def evaluate(self, loader: Any) -> dict[str, float]:
        from src.data.detection import unletterbox_boxes

        val = self.data.get("val")
        if val is None:
            raise RuntimeError("YOLOv3Task.evaluate needs a val split")
        detections, truths = [], []
        for batch in loader:
            dets = self.detect(batch["image"], self.conf_thres, self.iou_thres)
            for i, d in enumerate(dets):
                scale = float(batch["scale"][i])
                pad = batch["pad"][i].tolist()
                boxes = d["boxes"].double().cpu()
                if math.isfinite(scale):
                    boxes = unletterbox_boxes(boxes, scale, pad)
                h, w = (int(v) for v in batch["orig_size"][i].tolist())
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
                index = int(batch["index"][i])
                detections.append(
                    {
                        "image_id": batch["image_id"][i],
                        "boxes": boxes.numpy(),
                        "scores": d["scores"].double().cpu().numpy(),
                        "labels": d["labels"].cpu().numpy(),
                    }
                )
                truths.append(self._ground_truth(val, index, h, w))
        if self.metric == "coco":
            from src.metrics.coco import evaluate_coco

            return evaluate_coco(val.coco, detections, val.label_to_category_id)
        from src.metrics.voc import evaluate_voc

        names = self.class_names or [str(i) for i in range(unwrap(self.net).num_classes)]
        out = evaluate_voc(detections, truths, names)
        return {k: (v if math.isfinite(v) else 0.0) for k, v in out.items()}

    @staticmethod
    def _ground_truth(val: Any, index: int, h: int, w: int) -> dict:
        rec = val.records[index]
        return {
            "boxes": val.boxes_in_pixels(index, h, w),
            "labels": rec.labels,
            "difficult": rec.difficult | rec.crowd,
        }

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        from src.data.detection import to_uint8

        images = batch["image"][: self.num_visualize]
        dets = self.detect(images, self.vis_conf_thres, self.vis_iou_thres)
        out = []
        for img, d in zip(images, dets):
            rgb = to_uint8(img, self.normalize).permute(1, 2, 0).cpu().numpy()
            picture = draw_boxes(
                rgb, d["boxes"].cpu().numpy(), d["scores"].cpu().numpy(),
                d["labels"].cpu().numpy(), self.class_names,
            )  # fmt: skip
            out.append((picture, f"{len(d['scores'])} boxes >= {self.vis_conf_thres:.2f}"))
        return {"detections": out}

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        from src.data.detection import unletterbox_boxes

        device = next(self.net.parameters()).device
        try:
            rgb = read_rgb(Path(path))
        except DataError:
            raise
        except Exception as e:  # an unreadable file: skipped by predict()
            raise DataError(f"{path}: cannot read the image ({e})") from None
        canvas, _, scale, pad = letterbox(rgb, np.zeros((0, 4)), self.predict_size)
        x = to_tensor(canvas, self.normalize)[None].to(device)
        d = self.detect(x, self.vis_conf_thres, self.vis_iou_thres)[0]
        boxes = unletterbox_boxes(d["boxes"].double().cpu(), scale, pad)
        h, w = rgb.shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        scores, labels = d["scores"].cpu().numpy(), d["labels"].cpu().numpy()
        picture = Path(out_dir) / f"{stem}_detections.jpg"
        drawn = draw_boxes(rgb, boxes.numpy(), scores, labels, self.class_names)
        cv2.imwrite(str(picture), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        names = self.class_names
        return {
            "path": str(path),
            "picture": str(picture),
            "detections": [
                {
                    "box": [round(float(v), 2) for v in b],
                    "score": round(float(s), 5),
                    "label": int(c),
                    **({"class": names[int(c)]} if int(c) < len(names) else {}),
                }
                for b, s, c in zip(boxes.tolist(), scores, labels)
            ],
        }

    def export(self, out_dir: Path) -> list[Path]:
        from src.models.yolov3.export import export_onnx

        return [export_onnx(unwrap(self.net), Path(out_dir) / "yolov3.onnx", self.export_size)]
