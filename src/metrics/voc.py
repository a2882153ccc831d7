"""Pascal VOC detection mAP (IoU 0.5): the VOC2007 11-point metric and the area metric.

The protocol is the official devkit's, as ported to Python by py-faster-rcnn's ``voc_eval``:

* per class, all detections of all images sorted by descending score;
* each detection is compared with the ground-truth boxes of the same class in its image
  (difficult ones included) and takes the one of highest IoU (first on ties), with ``+1`` widths
  (``offset=1``: VOC's integer pixel boxes are inclusive);
* IoU strictly greater than ``iou_thresh``: a difficult box -> the detection is neither TP nor
  FP; a box not yet taken -> TP and the box is taken; a box already taken -> FP. Otherwise FP;
* recall = TP / (non-difficult boxes of the class), precision = TP / max(TP + FP, eps), both
  cumulative over every detection of the class (those on difficult boxes included);
* ``metric="voc07"``: mean over t in ``np.arange(0, 1.1, 0.1)`` of the maximum precision at
  recall >= t (0 when none); ``metric="area"`` (VOC2010+): area under the precision envelope,
  summed over the recall changes.

Inputs are plain arrays per image, both lists aligned (entry i of each is the same image)::

    detections[i]   = {"boxes": (K, 4) x1 y1 x2 y2, "scores": (K,), "labels": (K,) 0..C-1}
    ground_truth[i] = {"boxes": (M, 4), "labels": (M,), "difficult": (M,) bool (optional)}

Boxes are in the pixel convention of the ground truth (the devkit's 1-based inclusive
coordinates, or those minus 1 as the reference detectors read them: the IoU is the same).

Vectorised: the (detection, ground-truth box of the same image and class) pairs of all images
are flat arrays and their IoU is one call of ``src.ops.box_iou(offset=1)``; which detection takes
a box is decided with a stable sort and ``np.unique`` instead of the reference's per-detection
loop. tests/detection_eval checks equality with an independent port of ``voc_eval`` to 1e-12.

Documented choices (none changes an AP the reference defines):

* ties in score keep the input order (image order, then detection order): the reference's
  ``np.argsort(-confidence)`` leaves the order of tied detections to numpy's unstable sort;
* a class with no non-difficult ground-truth box has no defined AP (the reference divides by
  zero: NaN, or 0 with the 11-point metric): its ``voc_AP_<class>`` is NaN and it is left out of
  ``voc_mAP`` (NaN if no class has a box); a warning names the classes;
* boxes with x2 < x1 - 1 (negative +1 width) count as empty (``box_iou`` clamps widths at 0);
  the reference would compute a negative area.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from src.metrics.widerface import voc_ap as _area_ap
from src.ops import box_iou

log = logging.getLogger(__name__)

METRICS = ("voc07", "area")


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from cumulative recall / precision arrays (in detection order, recall nondecreasing).

    ``use_07_metric``: VOC2007 11-point interpolation; else the area under the envelope.
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if not use_07_metric:
        return _area_ap(rec, prec)
    # max precision at recall >= t: suffix maximum at the first index with rec >= t
    suffix_max = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        i = int(np.searchsorted(rec, t, side="left"))
        p = suffix_max[i] if i < len(rec) else 0.0
        ap = ap + p / 11.0
    return float(ap)


def _as(x: Any, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _flatten(records: Sequence[Mapping[str, Any]], what: str, num_classes: int, has_scores: bool):
    boxes, labels, extra, img = [], [], [], []
    for i, r in enumerate(records):
        b = _as(r["boxes"], np.float64).reshape(-1, 4)
        lab = _as(r["labels"], np.int64).reshape(-1)
        if has_scores:
            e = _as(r["scores"], np.float64).reshape(-1)
        else:
            d = r.get("difficult")
            e = np.zeros(len(b), bool) if d is None else _as(d, bool).reshape(-1)
        if not (len(b) == len(lab) == len(e)):
            raise ValueError(f"{what}[{i}]: boxes, labels and scores/difficult differ in length")
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(f"{what}[{i}]: labels must be in 0..{num_classes - 1}")
        boxes.append(b)
        labels.append(lab)
        extra.append(e)
        img.append(np.full(len(b), i, dtype=np.int64))
    if not records:
        return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(boxes), np.concatenate(labels), np.concatenate(extra), np.concatenate(img)


def _best_gt(d_boxes, d_key, g_boxes, g_counts, g_starts, offset, max_pairs):
    """Per detection: the max IoU over the gt boxes of its (image, class) group (-inf if none)
    and the first gt position (in ``g_boxes``) reaching it (-1 if none)."""
    n = len(d_boxes)
    ovmax = np.full(n, -np.inf)
    jmax = np.full(n, -1, dtype=np.int64)
    npair = g_counts[d_key]
    csum = np.cumsum(npair)
    lo = 0
    while lo < n:
        base = csum[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(csum, base + max_pairs, side="right")), lo + 1)
        cnt = npair[lo:hi]
        total = int(cnt.sum())
        if total:
            seg_start = np.zeros(len(cnt), dtype=np.int64)
            np.cumsum(cnt[:-1], out=seg_start[1:])
            seg = np.repeat(np.arange(len(cnt)), cnt)  # pair -> local detection
            gi = np.arange(total) - seg_start[seg] + g_starts[d_key[lo:hi]][seg]
            a = torch.from_numpy(d_boxes[lo:hi][seg]).view(-1, 1, 4)
            b = torch.from_numpy(g_boxes[gi]).view(-1, 1, 4)
            ov = box_iou(a, b, offset=offset).view(-1).numpy()
            has = np.flatnonzero(cnt)
            starts = seg_start[has]
            row_max = np.maximum.reduceat(ov, starts)
            lens = cnt[has]
            is_max = ov == np.repeat(row_max, lens)
            first = np.minimum.reduceat(np.where(is_max, gi, np.iinfo(np.int64).max), starts)
            ovmax[lo + has] = row_max
            jmax[lo + has] = first
        lo = hi
    return ovmax, jmax


def voc_tp_fp(
    detections: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_thresh: float = 0.5,
    offset: float = 1,
    use_difficult: bool = False,
    max_pairs: int = 1 << 22,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per class: ``(tp, fp, npos)`` — 0/1 float64 flags of the class's detections in
    descending score order (a detection on a difficult box has both 0) and the number of
    non-difficult ground-truth boxes."""
    if len(detections) != len(ground_truth):
        raise ValueError(
            f"detections ({len(detections)} images) and ground_truth "
            f"({len(ground_truth)} images) must be aligned lists"
        )
    C = int(num_classes)
    d_boxes, d_lab, d_score, d_img = _flatten(detections, "detections", C, True)
    g_boxes, g_lab, g_diff, g_img = _flatten(ground_truth, "ground_truth", C, False)
    g_diff = g_diff.astype(bool)
    if use_difficult:
        g_diff = np.zeros_like(g_diff)
    n_img = len(ground_truth)

    # gt grouped by (image, class), annotation order kept inside a group
    g_key = g_img * C + g_lab
    g_order = np.argsort(g_key, kind="stable")
    g_boxes, g_diff, g_lab = g_boxes[g_order], g_diff[g_order], g_lab[g_order]
    g_counts = np.bincount(g_key, minlength=n_img * C)
    g_starts = np.zeros_like(g_counts)
    np.cumsum(g_counts[:-1], out=g_starts[1:])

    ovmax, jmax = _best_gt(
        d_boxes, d_img * C + d_lab, g_boxes, g_counts, g_starts, offset, max_pairs
    )
    hit = ovmax > iou_thresh
    on_difficult = np.zeros(len(hit), dtype=bool)
    on_difficult[hit] = g_diff[jmax[hit]]
    on_box = hit & ~on_difficult

    # class-major, descending score, ties in input order (lexsort is stable)
    order = np.lexsort((-d_score, d_lab))
    s_lab, s_box, s_on = d_lab[order], jmax[order], on_box[order]
    tp = np.zeros(len(order))
    idx = np.flatnonzero(s_on)
    _, first = np.unique(s_box[idx], return_index=True)  # first (highest) taker of each box
    tp[idx[first]] = 1.0
    fp = (~s_on[:] & ~on_difficult[order]).astype(np.float64)
    fp[idx] = 1.0 - tp[idx]

    bounds = np.searchsorted(s_lab, np.arange(C + 1))
    npos = np.bincount(g_lab[~g_diff], minlength=C)
    return [
        (tp[bounds[c] : bounds[c + 1]], fp[bounds[c] : bounds[c + 1]], int(npos[c]))
        for c in range(C)
    ]


def evaluate_voc(
    detections: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    iou_thresh: float = 0.5,
    metric: str = "voc07",
    offset: float = 1,
    use_difficult: bool = False,
) -> dict[str, float]:
    """``{"voc_mAP": ..., "voc_AP_<class>": ...}`` (see the module docstring).

    metric: ``"voc07"`` (11-point, the VOC2007 test protocol) or ``"area"`` (VOC2010+).
    use_difficult: count difficult boxes as ordinary ones (not the protocol).
    """
    if metric not in METRICS:
        raise ValueError(f"VOC metric {metric!r}: choose one of {', '.join(METRICS)}")
    per_class = voc_tp_fp(
        detections, ground_truth, len(class_names), iou_thresh, offset, use_difficult
    )
    out: dict[str, float] = {}
    aps, empty = [], []
    for name, (tp, fp, npos) in zip(class_names, per_class):
        if npos == 0:
            out[f"voc_AP_{name}"] = float("nan")
            empty.append(name)
            continue
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        rec = tp_c / float(npos)
        prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        ap = voc_ap(rec, prec, use_07_metric=metric == "voc07")
        out[f"voc_AP_{name}"] = ap
        aps.append(ap)
    if empty:
        log.warning(
            "voc eval: %d class(es) without a non-difficult ground-truth box (AP NaN, not in "
            "voc_mAP): %s",
            len(empty),
            ", ".join(empty[:10]),
        )
    out = {"voc_mAP": float(np.mean(aps)) if aps else float("nan"), **out}
    return out
