"""RetinaFace trainer: ``python run.py model=retinaface loss=multibox dataset=widerface``.

Ties together the network (``src.models.retinaface``), its priors (computed once per input size,
cached), the MultiBox loss (``src.losses.multibox``), the WIDER FACE data (``src.data.widerface``:
dict samples, ``collate_faces`` padding with -1) and the WIDER FACE evaluator
(``src.metrics.widerface``).

Batches arrive with uint8 BGR images (``dataset.uint8_images``, the default) or float32 BGR
minus the mean (the float path); ``normalise`` is the one place that makes the network input
(float32 minus the mean, on the device, bit-identical to the float path) and every entry point
goes through it: ``on_train_batch_start`` (and ``training_step`` for direct callers),
``evaluate``, ``visualize``, ``predict_one``. ONNX exports take the normalised float input.

* ``training_step``: forward, priors for the batch's (H, W), loss -> ``loss``, ``loc``, ``cls``,
  ``landm``, ``num_pos``;
* ``evaluate``: batched forward + post-processing (``src.models.retinaface.detect``) of the val
  split, detections mapped back to the original image pixels, scored with the official protocol
  -> ``ap_easy`` / ``ap_medium`` / ``ap_hard`` (monitor ``val/ap_easy``, max). With
  ``save_predictions`` the detections are also written in the official per-image text format
  under ``predictions_dir`` (``<event>/<name>.txt``; the official tools can score them);
* ``visualize``: boxes and five landmarks drawn on the first images of a batch;
* ``predict``: image files -> pictures with boxes and landmarks, and the detections;
* ``export``: ONNX with dynamic batch, height and width (``export_onnx``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from src.data.base import DataError
from src.data.face_transforms import BGR_MEAN, to_chw
from src.data.widerface import collate_faces, subtract_mean
from src.logging.detections import DetectionItem
from src.models.retinaface.detect import DetectConfig, detect
from src.tasks.base import Task, unwrap

log = logging.getLogger(__name__)

# left eye, right eye, nose, left mouth corner, right mouth corner (BGR colours)
LANDMARK_COLOURS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def draw_detections(
    image_bgr: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    landmarks: np.ndarray,
    threshold: float = 0.5,
    draw_boxes: bool = True,
) -> np.ndarray:
    """A copy of the uint8 BGR image with boxes, scores and landmarks of detections whose score
    is at least ``threshold`` (pixel coordinates of the image)."""
    out = np.ascontiguousarray(image_bgr.copy())
    thick = max(1, round(max(out.shape[:2]) / 400))
    for box, score, pts in zip(boxes, scores, landmarks):
        if score < threshold:
            continue
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        if draw_boxes:  # (off: the boxes are an overlay of their own, W&B)
            cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 255), thick)
            cv2.putText(
                out,
                f"{score:.2f}",
                (x1, max(y1 - 3, 8)),
                cv2.FONT_HERSHEY_DUPLEX,
                0.35 * thick,
                (255, 255, 255),
                1,
            )
        for k, colour in enumerate(LANDMARK_COLOURS):
            x, y = float(pts[2 * k]), float(pts[2 * k + 1])
            if x >= 0 and y >= 0:
                cv2.circle(out, (int(round(x)), int(round(y))), thick + 1, colour, -1)
    return out


def to_bgr_uint8(image: torch.Tensor, mean: Sequence[float] = BGR_MEAN) -> np.ndarray:
    """(3, H, W) BGR-minus-mean float tensor -> (H, W, 3) uint8 BGR."""
    arr = image.detach().float().cpu().numpy().transpose(1, 2, 0) + np.asarray(mean, np.float32)
    return np.clip(arr, 0, 255).round().astype(np.uint8)


def _key(path: str) -> tuple[str, str]:
    p = Path(path)
    return p.parent.name, p.stem


class RetinaFaceTask(Task):
    accepts = {"loss": ("multibox",), "dataset": ("face_detection",)}
    monitor = "val/ap_easy"
    monitor_mode = "max"

    def __init__(
        self,
        net: torch.nn.Module,
        loss: torch.nn.Module,
        data: dict[str, Any],
        confidence_threshold: float = 0.02,
        top_k: int = 5000,
        nms_threshold: float = 0.4,
        keep_top_k: int = 750,
        nms_offset: float = 1.0,
        save_predictions: bool = False,
        predictions_dir: str | os.PathLike | None = None,
        vis_threshold: float = 0.5,
        num_visualize: int = 4,
        predict_size: int | None = None,
        export_size: Sequence[int] = (640, 640),
    ):
        super().__init__(loss, data)
        self.net = net
        variances = getattr(loss, "variances", (0.1, 0.2))
        self.detect_cfg = DetectConfig(
            confidence_threshold=float(confidence_threshold),
            top_k=int(top_k),
            nms_threshold=float(nms_threshold),
            keep_top_k=int(keep_top_k),
            nms_offset=float(nms_offset),
            variances=tuple(variances),
        )
        self.save_predictions = bool(save_predictions)
        self.predictions_dir = Path(predictions_dir) if predictions_dir else None
        if self.save_predictions and self.predictions_dir is None:
            raise ValueError("RetinaFaceTask: save_predictions=true needs predictions_dir")
        self.vis_threshold = float(vis_threshold)
        self.num_visualize = int(num_visualize)
        self.predict_size = int(predict_size) if predict_size else None
        self.export_size = (int(export_size[0]), int(export_size[1]))
        means = {tuple(float(m) for m in d.mean) for d in self.data.values() if hasattr(d, "mean")}
        if len(means) > 1:
            raise ValueError(f"RetinaFaceTask: the data splits have different means {means}")
        self.mean = means.pop() if means else tuple(BGR_MEAN)

    # ---- data -----------------------------------------------------------------------
    def collate(self, samples: list[Any]) -> Any:
        return collate_faces(samples, self.mean)

    def normalise(self, batch: dict) -> dict:
        """The batch with its ``image`` as the network input: uint8 BGR -> float32 minus the
        mean on its device (``subtract_mean``); a float batch (the float path) unchanged."""
        if batch["image"].dtype != torch.uint8:
            return batch
        return {**batch, "image": subtract_mean(batch["image"], self.mean)}

    def on_train_batch_start(self, batch: Any, step: int) -> Any:
        return self.normalise(batch)

    def priors(self, images: torch.Tensor) -> torch.Tensor:
        """Priors for the batch's (H, W), cached per size, device and dtype."""
        return unwrap(self.net).priors(
            tuple(images.shape[-2:]), device=images.device, dtype=torch.float32
        )

    # ---- training -------------------------------------------------------------------
    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        images = self.normalise(batch)["image"]  # already done by on_train_batch_start
        loc, conf, landm = self.net(images)
        # the loss runs in float32 whatever the autocast precision of the network
        with torch.autocast(device_type=images.device.type, enabled=False):
            out = self.loss(
                (loc.float(), conf.float(), landm.float()),
                self.priors(images),
                batch["boxes"].float(),
                batch["labels"],
                batch["landmarks"].float(),
                grid=unwrap(self.net).anchor_grid(tuple(images.shape[-2:])),
            )
        return out

    # ---- inference ------------------------------------------------------------------
    def detect_batch(self, images: torch.Tensor, scale: Any = 1.0) -> list[dict]:
        loc, conf, landm = self.net(images)
        return detect(
            loc.float(),
            conf.float(),
            landm.float(),
            self.priors(images),
            tuple(images.shape[-2:]),
            scale=scale,
            cfg=self.detect_cfg,
        )

    def evaluate(self, loader: Any) -> dict[str, float]:
        from src.metrics.widerface import (
            WiderFaceGT,
            boxes_to_widerface,
            evaluate_widerface,
            write_widerface_predictions,
        )

        val = self.data.get("val")
        if val is None or not hasattr(val, "widerface_gt"):
            raise RuntimeError("RetinaFaceTask.evaluate needs a val split with widerface_gt()")
        predictions: dict[tuple[str, str], np.ndarray] = {}
        for batch in loader:
            batch = self.normalise(batch)
            scale = batch["scale"].to(torch.float64)
            scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))
            dets = self.detect_batch(batch["image"], scale.to(batch["image"].device))
            for path, d in zip(batch["path"], dets):
                arr = torch.cat([d["boxes"], d["scores"][:, None]], 1).double().cpu().numpy()
                predictions[_key(path)] = boxes_to_widerface(arr)
        gt = val.widerface_gt()
        if len(predictions) < len(gt):  # limit_val_batches: score the images that were run
            idx = [i for i, k in enumerate(gt.keys) if k in predictions]
            gt = WiderFaceGT(
                [gt.keys[i] for i in idx],
                [gt.boxes[i] for i in idx],
                {s: [v[i] for i in idx] for s, v in gt.keep.items()},
            )
        aps = evaluate_widerface(predictions, gt)
        if self.save_predictions:
            write_widerface_predictions(predictions, self.predictions_dir)
            log.info(
                "wrote WIDER FACE predictions of %d images to %s",
                len(predictions),
                self.predictions_dir,
            )
        return {f"ap_{k}": float(v) for k, v in aps.items()}

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        """W&B box overlays (predictions with scores, ground truth) over pictures with the
        predicted landmarks drawn in."""
        raw = batch["image"][: self.num_visualize]
        images = self.normalise({"image": raw})["image"]
        dets = self.detect_batch(images)
        h, w = images.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        out = []
        for i, (img, d) in enumerate(zip(images, dets)):
            scores = d["scores"].cpu().numpy()
            bgr = raw[i].permute(1, 2, 0).cpu().numpy() if raw.dtype == torch.uint8 else None
            picture = draw_detections(
                bgr if bgr is not None else to_bgr_uint8(img, self.mean),
                d["boxes"].cpu().numpy(),
                scores,
                d["landmarks"].cpu().numpy(),
                self.vis_threshold,
                draw_boxes=False,
            )
            gt = batch["boxes"][i].float().cpu()
            gt = gt[(gt >= 0).all(dim=1)] * scale  # normalised corners -> pixels, no padding
            n = int((scores >= self.vis_threshold).sum())
            out.append(
                DetectionItem(
                    picture[:, :, ::-1].copy(),
                    {
                        "boxes": d["boxes"].cpu(),
                        "scores": d["scores"].cpu(),
                        "labels": torch.zeros(len(scores), dtype=torch.long),
                    },
                    {"boxes": gt, "labels": torch.zeros(len(gt), dtype=torch.long)},
                    ("face",),
                    f"{n} faces >= {self.vis_threshold:.2f}",
                )
            )
        return {"detections": out}

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        device = next(self.net.parameters()).device
        raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if raw is None:
            raise DataError(f"{path}: cannot read the image (corrupt or not an image)")
        scale = 1.0
        img = raw
        if self.predict_size:
            scale = self.predict_size / max(raw.shape[:2])
            img = cv2.resize(raw, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(to_chw(img))[None].to(device)  # uint8 to the device
        d = self.detect_batch(self.normalise({"image": x})["image"], scale)[0]
        boxes, scores = d["boxes"].cpu().numpy(), d["scores"].cpu().numpy()
        points = d["landmarks"].cpu().numpy()
        picture = out_dir / f"{stem}_faces.jpg"
        cv2.imwrite(str(picture), draw_detections(raw, boxes, scores, points, self.vis_threshold))
        keep = scores >= self.vis_threshold
        return {
            "path": str(path),
            "picture": str(picture),
            "detections": [
                {
                    "box": [round(float(v), 2) for v in b],
                    "score": round(float(s), 5),
                    "landmarks": [round(float(v), 2) for v in p],
                }
                for b, s, p in zip(boxes[keep], scores[keep], points[keep])
            ],
        }

    def export(self, out_dir: Path) -> list[Path]:
        from src.models.retinaface.export import export_onnx

        path = export_onnx(
            self.net, Path(out_dir) / "retinaface.onnx", sample_size=self.export_size
        )
        return [path]
