"""CenterNet (keypoint triplets) trainer: ``python run.py model=centernet loss=centernet
dataset=coco`` (``dataset=synthetic_coco`` is the quick default).

Ties together the network (``src.models.centernet``: GhostNet or Hourglass, cascade corner and
center pooling), its loss (``src.losses.centernet``: targets built batched from the padded boxes
of ``src.data.detection.collate_detection``), the decoding (``src.models.centernet.decode``) and
the COCO evaluator (``src.metrics.coco``):

* ``training_step``: forward, targets, loss -> ``loss``, ``focal``, ``pull``, ``push``,
  ``regr``, ``num_objects``;
* ``evaluate``: the val split through the network (with its mirror when ``flip_test``), decode,
  triplet filter, soft-NMS, boxes in original pixels -> COCO AP / AR (``coco_AP`` ...; monitor
  ``val/coco_AP``). A pass with no detection at all scores AP 0 and logs a warning;
* ``visualize`` / ``predict_one``: boxes drawn on pictures; ``export``: ONNX up to soft-NMS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from src.data.base import DataError
from src.data.detection import collate_detection, letterbox, read_rgb, to_tensor, to_uint8
from src.logging.detections import DetectionItem, draw_detections
from src.models.centernet.decode import DecodeConfig, decode, postprocess
from src.tasks.base import Task, unwrap
from src.utils.errors import UserError

log = logging.getLogger(__name__)


class CenterNetConfigError(UserError):
    """The network and the dataset disagree (number of classes)."""


def draw_boxes(
    image_rgb: np.ndarray, boxes, scores, labels, names=None, threshold=0.3
) -> np.ndarray:
    """A copy of the RGB uint8 image with the boxes scoring at least ``threshold`` (padding
    rows, label -1, left out), drawn by the shared ``src.logging.detections.draw_detections``."""
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    keep = labels >= 0
    predictions = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    item = DetectionItem(image_rgb, predictions, None, list(names or []))
    return draw_detections(item, min_score=threshold, max_boxes=int(keep.sum()))


class CenterNetTask(Task):
    accepts = {"loss": ("centernet",), "dataset": ("detection",)}
    monitor = "val/coco_AP"
    monitor_mode = "max"

    def __init__(
        self,
        net: torch.nn.Module,
        loss: torch.nn.Module,
        data: dict[str, Any],
        top_k: int = 70,
        ae_threshold: float = 0.5,
        nms_kernel: int = 3,
        num_dets: int = 1000,
        flip_test: bool = True,
        nms_method: int = 2,
        nms_threshold: float = 0.5,
        nms_sigma: float = 0.5,
        max_per_image: int = 100,
        vis_threshold: float = 0.3,
        num_visualize: int = 4,
        export_size: tuple[int, int] | list[int] = (511, 511),
    ):
        super().__init__(loss, data)
        self.net = net
        self.cfg = DecodeConfig(
            top_k=int(top_k),
            kernel=int(nms_kernel),
            ae_threshold=float(ae_threshold),
            num_dets=int(num_dets),
            flip=bool(flip_test),
            nms_method=int(nms_method),
            nms_threshold=float(nms_threshold),
            nms_sigma=float(nms_sigma),
            max_per_image=int(max_per_image),
        )
        self.vis_threshold = float(vis_threshold)
        self.num_visualize = int(num_visualize)
        self.export_size = (int(export_size[0]), int(export_size[1]))
        self.check_num_classes(unwrap(net).num_classes, CenterNetConfigError)

    def _dataset(self):
        return self.data.get("val") or self.data.get("train")

    # ---- data -----------------------------------------------------------------------
    def collate(self, samples: list[Any]) -> Any:
        return collate_detection(samples)

    # ---- training -------------------------------------------------------------------
    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        images = batch["image"]
        outs = self.net(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            outs = [{k: v.float() for k, v in o.items()} for o in outs]
            return self.loss(
                outs, batch["boxes"], batch["labels"], tuple(images.shape[-2:]), batch.get("crowd")
            )

    # ---- inference ------------------------------------------------------------------
    def detect_batch(self, images, orig_size, scale, pad, flip: bool | None = None) -> dict:
        """Final detections (B, P) in original pixels: ``boxes``, ``scores``, ``labels``."""
        flip = self.cfg.flip if flip is None else flip
        x = torch.cat((images, images.flip(-1))) if flip else images
        out = self.net(x)[-1]
        out = {k: v.float() for k, v in out.items()}
        dec = decode(out, self.cfg)
        return postprocess(
            dec,
            tuple(images.shape[-2:]),
            orig_size,
            scale,
            pad,
            self.cfg,
            flip=flip,
            map_size=tuple(out["tl_heat"].shape[-2:]),
        )

    def evaluate(self, loader: Any) -> dict[str, float]:
        from src.metrics.coco import evaluate_coco

        val = self.data.get("val")
        if val is None or not hasattr(val, "coco"):
            raise CenterNetConfigError(
                "CenterNet evaluation needs a COCO-format val split (dataset=coco or "
                "dataset=synthetic_coco)"
            )
        records, total = [], 0
        for batch in loader:
            scale = batch["scale"].to(torch.float64)
            scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))
            det = self.detect_batch(batch["image"], batch["orig_size"], scale, batch["pad"])
            for i, image_id in enumerate(batch["image_id"]):
                keep = det["labels"][i] >= 0
                total += int(keep.sum())
                records.append(
                    {
                        "image_id": image_id,
                        "boxes": det["boxes"][i][keep].cpu().numpy(),
                        "scores": det["scores"][i][keep].cpu().numpy(),
                        "labels": det["labels"][i][keep].cpu().numpy(),
                    }
                )
        if total == 0:
            log.warning("CenterNet evaluation: no detections on %d images; AP is 0", len(records))
        stats = evaluate_coco(val.coco, records, val.label_to_category_id)
        return {k: float(v) for k, v in stats.items()}

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        n = self.num_visualize
        images = batch["image"][:n]
        b = images.shape[0]
        s = images.shape[-1]
        det = self.detect_batch(
            images, torch.tensor([[s, s]] * b), torch.ones(b), torch.zeros(b, 2)
        )
        ds = self._dataset()
        normalize = getattr(ds, "normalize", "imagenet")
        names = getattr(ds, "class_names", None)
        pics = []
        for i in range(b):
            rgb = to_uint8(images[i].cpu(), normalize).permute(1, 2, 0).numpy()
            sc = det["scores"][i].cpu().numpy()
            pic = draw_boxes(
                rgb,
                det["boxes"][i].cpu().numpy(),
                sc,
                det["labels"][i].cpu().numpy(),
                names,
                self.vis_threshold,
            )
            pics.append(
                (pic, f"{int((sc >= self.vis_threshold).sum())} boxes >= {self.vis_threshold:.2f}")
            )
        return {"detections": pics}

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        device = next(self.net.parameters()).device
        rgb = read_rgb(Path(path))
        ds = self._dataset()
        size = int(getattr(ds, "image_size", 511))
        normalize = getattr(ds, "normalize", "imagenet")
        canvas, _, scale, pad = letterbox(rgb, np.zeros((0, 4)), size)
        x = to_tensor(canvas, normalize)[None].to(device)
        h, w = rgb.shape[:2]
        det = self.detect_batch(
            x,
            torch.tensor([[h, w]]),
            torch.tensor([scale], dtype=torch.float64),
            torch.tensor([pad], dtype=torch.float64),
        )
        boxes, scores = det["boxes"][0].cpu().numpy(), det["scores"][0].cpu().numpy()
        labels = det["labels"][0].cpu().numpy()
        names = getattr(ds, "class_names", None)
        picture = Path(out_dir) / f"{stem}_boxes.jpg"
        pic = draw_boxes(rgb, boxes, scores, labels, names, self.vis_threshold)
        if not cv2.imwrite(str(picture), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)):
            raise DataError(f"{picture}: cannot write the picture")
        keep = (scores >= self.vis_threshold) & (labels >= 0)
        return {
            "path": str(path),
            "picture": str(picture),
            "detections": [
                {
                    "box": [round(float(v), 2) for v in bx],
                    "score": round(float(sc), 5),
                    "label": int(lb),
                    "name": names[int(lb)] if names else str(int(lb)),
                }
                for bx, sc, lb in zip(boxes[keep], scores[keep], labels[keep])
            ],
        }

    def export(self, out_dir: Path) -> list[Path]:
        from src.models.centernet.export import export_onnx

        cfg = DecodeConfig(**{**self.cfg.__dict__, "flip": False})
        return [export_onnx(self.net, Path(out_dir) / "centernet.onnx", self.export_size, cfg)]
