"""Detection pictures, one format for every detector: W&B box overlays and drawn PNGs.

An item is a ``DetectionItem`` (a NamedTuple, so a plain 4- or 5-tuple works too)::

    DetectionItem(image,         # (H, W, 3) uint8 RGB
                  predictions,   # {"boxes": (K, 4) x1 y1 x2 y2 px, "scores": (K,), "labels": (K,)}
                  ground_truth,  # {"boxes": (M, 4), "labels": (M,)} or None
                  class_names,   # label -> name
                  caption=None)

* ``wandb_boxes(item)``: the ``boxes=`` argument of ``wandb.Image``: ``"predictions"`` and
  ``"ground_truth"`` groups with ``"domain": "pixel"`` positions, class ids, a caption
  (``"dog 0.87"``) and ``scores={"score": ...}``, so the W&B UI can filter predictions by score,
  toggle either group and pick classes. The logger calls are ``RunLogger.log_detections(key,
  items, step)``, or ``log_images`` with detection items in place of ``(image, caption)``
  pairs (what a Task's ``visualize`` returns).
* ``draw_detections(item)``: the same boxes drawn into a copy of the image (OpenCV):
  predictions in a colour per class with ``name score`` text, ground truth as thin white
  boxes; ``save_detections_png(path, item)`` writes it (``mode=predict``).

Tensors are accepted wherever arrays are (``.detach().cpu()`` is applied).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


class DetectionItem(NamedTuple):
    image: Any
    predictions: Mapping[str, Any]
    ground_truth: Mapping[str, Any] | None
    class_names: Sequence[str]
    caption: str | None = None


def _np(x: Any, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def is_detection_item(x: Any) -> bool:
    """A DetectionItem, or a tuple shaped like one (image, predictions mapping, gt, names)."""
    if isinstance(x, DetectionItem):
        return True
    return isinstance(x, tuple) and len(x) in (4, 5) and isinstance(x[1], Mapping)


def as_detection_item(x: Any) -> DetectionItem:
    item = x if isinstance(x, DetectionItem) else DetectionItem(*x)
    image = _np(item.image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"detection picture: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
        )
    return item._replace(image=image)


def _boxes(group: Mapping[str, Any] | None, with_scores: bool):
    if group is None:
        return np.zeros((0, 4)), np.zeros(0, np.int64), None
    boxes = _np(group["boxes"], np.float64).reshape(-1, 4)
    labels = _np(group["labels"]).reshape(-1).astype(np.int64)
    scores = _np(group["scores"], np.float64).reshape(-1) if with_scores else None
    n = len(boxes)
    if len(labels) != n or (scores is not None and len(scores) != n):
        raise ValueError("detection picture: boxes, labels and scores differ in length")
    return boxes, labels, scores


def _name(class_names: Sequence[str], label: int) -> str:
    return str(class_names[label]) if 0 <= label < len(class_names) else f"class_{label}"


def _selected(scores: np.ndarray, min_score: float, max_boxes: int) -> np.ndarray:
    """Indices of the predictions shown: score >= min_score, the max_boxes highest."""
    keep = np.flatnonzero(scores >= min_score)
    return keep[np.argsort(-scores[keep], kind="stable")][:max_boxes]


def wandb_boxes(item: Any, min_score: float = 0.0, max_boxes: int = 100) -> dict[str, dict]:
    """The ``boxes=`` dict of ``wandb.Image`` for one item (pixel-domain positions)."""
    item = as_detection_item(item)
    names = list(item.class_names)
    pb, pl, ps = _boxes(item.predictions, with_scores=True)
    sel = _selected(ps, min_score, max_boxes)
    labels_seen = set(pl[sel].tolist())

    def entry(b, lab, score=None) -> dict:
        x1, y1, x2, y2 = (float(v) for v in b)
        e = {
            "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
            "domain": "pixel",
            "class_id": int(lab),
            "box_caption": _name(names, int(lab)),
        }
        if score is not None:
            e["box_caption"] += f" {score:.2f}"
            e["scores"] = {"score": float(score)}
        return e

    out = {"predictions": {"box_data": [entry(pb[i], pl[i], ps[i]) for i in sel]}}
    if item.ground_truth is not None:
        gb, gl, _ = _boxes(item.ground_truth, with_scores=False)
        labels_seen |= set(gl.tolist())
        out["ground_truth"] = {"box_data": [entry(b, lab) for b, lab in zip(gb, gl)]}
    class_labels = {i: str(n) for i, n in enumerate(names)}
    class_labels.update({int(i): _name(names, int(i)) for i in labels_seen})
    for group in out.values():
        group["class_labels"] = class_labels
    return out


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright RGB colour per class (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((int(label) * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    item: Any,
    min_score: float = 0.0,
    max_boxes: int = 100,
    show_ground_truth: bool = True,
) -> np.ndarray:
    """A copy of the item's RGB image with its boxes drawn (same selection as ``wandb_boxes``):
    ground truth as 1 px white boxes, predictions as class-coloured boxes with ``name score``
    above them. Box corners are rounded to the nearest pixel; the box outline covers the
    pixels of its edges (x1..x2 at rows y1 and y2, and y1..y2 at columns x1 and x2)."""
    import cv2

    item = as_detection_item(item)
    out = np.ascontiguousarray(item.image.copy())
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    names = list(item.class_names)

    def corners(b):
        x1, y1, x2, y2 = (int(round(float(v))) for v in b)
        return (min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)), (
            min(max(x2, 0), w - 1),
            min(max(y2, 0), h - 1),
        )

    if show_ground_truth and item.ground_truth is not None:
        gb, _, _ = _boxes(item.ground_truth, with_scores=False)
        for b in gb:
            p1, p2 = corners(b)
            cv2.rectangle(out, p1, p2, (255, 255, 255), 1)
    pb, pl, ps = _boxes(item.predictions, with_scores=True)
    sel = _selected(ps, min_score, max_boxes)
    for i in sel[::-1]:  # highest score drawn last (on top)
        p1, p2 = corners(pb[i])
        colour = class_colour(int(pl[i]))
        cv2.rectangle(out, p1, p2, colour, thick)
        text = f"{_name(names, int(pl[i]))} {ps[i]:.2f}"
        scale = 0.35 * thick
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = p1[1] - 2 if p1[1] - th - base - 2 >= 0 else p1[1] + th + 2  # above, else inside
        cv2.putText(out, text, (p1[0], ty), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1)
    return out


def save_detections_png(path: str | os.PathLike, item: Any, **draw_kwargs) -> Path:
    """Draw the item (``draw_detections``) and write it as a PNG (atomic)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = draw_detections(item, **draw_kwargs)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return path
