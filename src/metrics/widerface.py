"""WIDER FACE evaluation: easy / medium / hard AP with the official protocol, vectorised.

The official protocol (the MATLAB toolbox and its Python port used by RetinaFace,
``widerface_evaluate/evaluation.py``) is reproduced exactly:

* ground truth from ``wider_face_val.mat`` (``event_list``, ``file_list``, ``face_bbx_list`` with
  boxes as ``x y w h``) and ``wider_{easy,medium,hard}_val.mat`` (``gt_list``: the 1-based indices
  of the faces each setting keeps; every other face of the image is *ignored*);
* predictions per image as ``(K, 5)`` arrays ``x y w h score`` in the order of the prediction file
  (normally descending score). Scores are min-max normalised over *all* predictions with the
  reference's initial values (min starts at 1, max at 0);
* a prediction is matched to the ground-truth face of highest IoU (``+1`` widths, legacy
  py-faster-rcnn ``bbox_overlaps``); with IoU >= 0.5 and an ignored face it is dropped from the
  proposals, with a kept face it recalls that face the first time;
* 1000 score thresholds ``1 - (t + 1) / 1000``; at each, an image contributes the proposals and
  recalled faces up to its *last* prediction scoring >= the threshold (in file order);
* precision = recalled / proposals, recall = recalled / kept faces, VOC AP (precision envelope,
  sum over recall changes).

Identical APs, but the reference loops over 3 settings x 3,226 images x 1000 thresholds in Python
(about 60 s); here each prediction's matched face and the first threshold at which it counts are
computed once for all images with flat numpy segment operations, and each setting is two
``bincount`` s. All arithmetic that decides a comparison (IoU, normalised score, thresholds) uses
the same float64 operations in the same order as the reference, so the integer counts and
therefore the APs are bit-identical.

Documented deviations (none changes an AP the reference can compute):

* all scores equal: the reference divides by ``max - min == 0``; the NaN scores pass no threshold
  and every AP comes out as a silent 0.0. Here every normalised score becomes 1.0 (all
  predictions count at every threshold);
* an image of the ground truth with no entry in ``predictions`` is an image with no detections
  (the reference raises ``KeyError``); the number of such images is logged;
* a setting with no kept face at all (possible with tiny synthetic splits) gives AP 0.0 instead of
  NaN, with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from src.data.base import DataError
from src.data.widerface_gt import (  # noqa: F401  (re-exported: the evaluation's inputs)
    GT_FILES,
    SETTINGS,
    Key,
    WiderFaceGT,
    load_widerface_gt,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- protocol
def thresholds(thresh_num: int = 1000) -> np.ndarray:
    """The reference's score thresholds ``1 - (t + 1) / thresh_num``, t = 0..thresh_num-1."""
    return np.array([1 - (t + 1) / thresh_num for t in range(thresh_num)], dtype=np.float64)


def normalize_scores(predictions: Mapping[Key, np.ndarray]) -> dict[Key, np.ndarray]:
    """Min-max normalise the scores over all predictions, as the reference's ``norm_score``.

    Returns float64 copies. All-equal scores (reference: NaN, then AP 0) become 1.0.
    """
    out: dict[Key, np.ndarray] = {}
    max_score, min_score = 0.0, 1.0
    for k, v in predictions.items():
        a = np.array(v, dtype=np.float64)
        if a.size == 0:
            a = np.zeros((0, 5))
        elif a.ndim != 2 or a.shape[1] != 5:
            raise ValueError(f"predictions[{k!r}] must be (K, 5) x y w h score, got {a.shape}")
        out[k] = a
        if len(a):
            max_score = max(float(np.max(a[:, 4])), max_score)
            min_score = min(float(np.min(a[:, 4])), min_score)
    diff = max_score - min_score
    for a in out.values():
        if len(a):
            if diff == 0:
                a[:, 4] = 1.0
            else:
                a[:, 4] = (a[:, 4] - min_score) / diff
    return out


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC AP: precision envelope, sum of precision x recall change (reference formula)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    # envelope: mpre[i] = max(mpre[i:]) with NaN propagating exactly as the reference loop
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _segment_ids(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def _match(pred_xyxy, pred_img, gt: WiderFaceGT, iou_thresh: float, max_pairs: int):
    """For each prediction: global index of its best face (-1 when IoU < thresh or no face).

    Flat (prediction, face of the same image) pairs, chunked to ``max_pairs``. Pairs that do not
    intersect (IoU 0 in the reference) are dropped before the remaining arithmetic; the row
    maximum and its first index over the intersecting pairs equal the reference's
    ``max()`` / ``argmax()`` whenever the maximum can reach the threshold.
    """
    f = gt.flat()
    g_counts, g_starts, g_xyxy = f["counts"], f["starts"], f["xyxy"]
    gx1, gy1, gx2, gy2 = (np.ascontiguousarray(g_xyxy[:, c]) for c in range(4))
    n = len(pred_xyxy)
    matched = np.full(n, -1, dtype=np.int64)
    npair = g_counts[pred_img]  # faces in each prediction's image (all > 0 here)
    csum = np.cumsum(npair)
    bounds = [0]
    while bounds[-1] < n:
        base = csum[bounds[-1] - 1] if bounds[-1] else 0
        stop = int(np.searchsorted(csum, base + max_pairs, side="right"))
        bounds.append(max(stop, bounds[-1] + 1))
    for a, b in zip(bounds[:-1], bounds[1:]):
        cnt = npair[a:b]
        seg_start = np.zeros(len(cnt), dtype=np.int64)
        np.cumsum(cnt[:-1], out=seg_start[1:])
        seg = np.repeat(np.arange(len(cnt)), cnt)  # pair -> local prediction
        gi = np.arange(len(seg)) - seg_start[seg] + g_starts[pred_img[a:b]][seg]
        px1, py1, px2, py2 = (pred_xyxy[a:b, c] for c in range(4))
        # legacy bbox_overlaps (+1 widths), same operations and order as the Cython reference
        iw = np.minimum(px2[seg], gx2[gi]) - np.maximum(px1[seg], gx1[gi]) + 1
        keep = np.flatnonzero(iw > 0)
        seg, gi, iw = seg[keep], gi[keep], iw[keep]
        ih = np.minimum(py2[seg], gy2[gi]) - np.maximum(py1[seg], gy1[gi]) + 1
        keep = np.flatnonzero(ih > 0)
        if len(keep) == 0:
            continue
        seg, gi, iw, ih = seg[keep], gi[keep], iw[keep], ih[keep]
        box_area = (gx2[gi] - gx1[gi] + 1) * (gy2[gi] - gy1[gi] + 1)
        inter = iw * ih
        ua = (px2[seg] - px1[seg] + 1) * (py2[seg] - py1[seg] + 1) + box_area - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            ov = inter / ua
        # segments of the surviving pairs (still ordered by prediction, then face)
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        row_max = np.maximum.reduceat(ov, starts)  # NaN propagates, as ndarray.max
        lens = np.diff(np.r_[starts, len(seg)])
        is_max = ov == np.repeat(row_max, lens)
        first = np.minimum.reduceat(np.where(is_max, gi, np.iinfo(np.int64).max), starts)
        hit = row_max >= iou_thresh  # NaN rows never match, as in the reference
        matched[a + seg[starts[hit]]] = first[hit]
    return matched


def evaluate_widerface(
    predictions: Mapping[Key, np.ndarray],
    gt: WiderFaceGT | str | os.PathLike,
    iou_thresh: float = 0.5,
    thresh_num: int = 1000,
    settings: Iterable[str] = SETTINGS,
    max_pairs: int = 1 << 22,
) -> dict[str, float]:
    """Easy / medium / hard AP of ``predictions`` against ``gt`` (official protocol).

    predictions: ``{(event, name): (K, 5) array of x y w h score}``, rows in the order the
        reference would read them from the prediction file (normally descending score).
        Entries for images absent from the ground truth only take part in score normalisation.
    gt: a ``WiderFaceGT`` or a directory with the four official .mat files.
    """
    if not isinstance(gt, WiderFaceGT):
        gt = load_widerface_gt(gt)
    f = gt.flat()
    preds = normalize_scores(predictions)

    # predictions of the gt images that have faces, image after image, in file order
    chunks, img_ids = [], []
    missing = 0
    for i, key in enumerate(gt.keys):
        a = preds.get(key)
        if a is None:
            missing += 1
            continue
        if f["counts"][i] == 0 or len(a) == 0:
            continue
        chunks.append(a)
        img_ids.append(np.full(len(a), i, dtype=np.int64))
    if missing:
        log.info(
            "widerface eval: %d of %d images have no predictions entry (no detections)",
            missing,
            len(gt),
        )
    if chunks:
        p = np.concatenate(chunks)
        pred_img = np.concatenate(img_ids)
    else:
        p = np.zeros((0, 5))
        pred_img = np.zeros(0, dtype=np.int64)

    xyxy = p[:, :4].copy()
    xyxy[:, 2] = p[:, 2] + p[:, 0]
    xyxy[:, 3] = p[:, 3] + p[:, 1]
    matched = _match(xyxy, pred_img, gt, iou_thresh, max_pairs)

    # first threshold index at which each prediction itself passes (thresh_num = never) ...
    thr_asc = thresholds(thresh_num)[::-1]
    scores = p[:, 4]
    t_first = thresh_num - np.searchsorted(thr_asc, scores, side="right")
    t_first[np.isnan(scores)] = thresh_num
    # ... and at which it lies before its image's last passing prediction: suffix min per image
    if len(p):
        seg_change = np.r_[True, pred_img[1:] != pred_img[:-1]]
        seg = np.cumsum(seg_change) - 1
        rev_seg = seg[::-1]
        big = thresh_num + 1
        shifted = t_first[::-1].astype(np.int64) - (seg.max() - rev_seg) * big
        t_in = (np.minimum.accumulate(shifted) + (seg.max() - rev_seg) * big)[::-1]
    else:
        t_in = np.zeros(0, dtype=np.int64)

    aps: dict[str, float] = {}
    for s in settings:
        kept = f["kept"][s]
        count_face = f["count_face"][s]  # the reference adds len(keep_index) per image
        has = matched >= 0
        kept_match = np.zeros(len(p), dtype=bool)
        kept_match[has] = kept[matched[has]]
        proposal = ~(has & ~kept_match)  # matched to an ignored face -> not a proposal
        new_recall = np.zeros(len(p), dtype=bool)
        if kept_match.any():
            idx = np.flatnonzero(kept_match)
            _, first = np.unique(matched[idx], return_index=True)
            new_recall[idx[first]] = True
        props = np.bincount(t_in, weights=proposal, minlength=thresh_num + 1)[:thresh_num]
        recs = np.bincount(t_in, weights=new_recall, minlength=thresh_num + 1)[:thresh_num]
        pr = np.stack([np.cumsum(props), np.cumsum(recs)], axis=1)
        if count_face == 0:
            log.warning("widerface eval: setting %r keeps no face; AP set to 0.0", s)
            aps[s] = 0.0
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = pr[:, 1] / pr[:, 0]
            recall = pr[:, 1] / count_face
        aps[s] = voc_ap(recall, precision)
    return aps


# ------------------------------------------------------------ prediction files
def boxes_to_widerface(dets: np.ndarray, legacy_int: bool = False) -> np.ndarray:
    """``(K, 5) x1 y1 x2 y2 score`` detections -> ``x y w h score`` rows for the text format.

    ``legacy_int=True`` reproduces RetinaFace's ``test_widerface.py``: ``x = int(x1)``,
    ``w = int(x2) - int(x1)`` (truncation, no +1).
    """
    d = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    out = d.copy()
    if legacy_int:
        xy1 = np.trunc(d[:, :2])
        out[:, :2] = xy1
        out[:, 2:4] = np.trunc(d[:, 2:4]) - xy1
    else:
        out[:, 2:4] = d[:, 2:4] - d[:, :2]
    return out


def write_widerface_predictions(
    predictions: Mapping[Key, np.ndarray], out_dir: str | os.PathLike
) -> list[Path]:
    """Write ``out_dir/event/name.txt``: name line, count line, ``x y w h score`` lines.

    Values are written with Python's shortest round-trip repr, so reading back is lossless.
    The reference reader keys files by ``name_line.rstrip('.jpg')``, which also eats trailing
    'j', 'p', 'g' letters of a name; WIDER names end in digits, so this only matters for
    custom names.
    """
    out_dir = Path(out_dir)
    written = []
    for (event, name), arr in predictions.items():
        a = np.asarray(arr, dtype=np.float64).reshape(-1, 5)
        d = out_dir / event
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{name}.txt"
        lines = [name, str(len(a))]
        lines += [" ".join(repr(float(v)) for v in row) for row in a]
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        written.append(path)
    return written


def read_widerface_predictions(pred_dir: str | os.PathLike) -> dict[Key, np.ndarray]:
    """Read a directory of per-image prediction files (official layout) into a dict.

    The key is ``(event directory, basename of the name line without .jpg)``, as the reference.
    A line that is not five numbers raises ``DataError`` naming ``file:line``; so does a count
    line that disagrees with the number of box lines (a truncated file).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction directory not found")
    out: dict[Key, np.ndarray] = {}
    for event_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        for path in sorted(event_dir.glob("*.txt")):
            lines = path.read_text().splitlines()
            if len(lines) < 2:
                raise DataError(f"{path}: needs a name line and a count line")
            name = lines[0].strip().split("/")[-1]
            if name.endswith(".jpg"):
                name = name[: -len(".jpg")]
            try:
                count = int(float(lines[1].strip()))
            except ValueError:
                raise DataError(f"{path}:2: count line {lines[1]!r} is not a number") from None
            rows = []
            for ln, line in enumerate(lines[2:], start=3):
                parts = line.split()
                if not parts:
                    continue
                try:
                    vals = [float(x) for x in parts[:5]]
                except ValueError:
                    vals = []
                if len(vals) != 5:
                    raise DataError(f"{path}:{ln}: expected 'x y w h score', got {line!r}")
                rows.append(vals)
            if len(rows) != count:
                raise DataError(
                    f"{path}: count line says {count} boxes but {len(rows)} follow "
                    "(truncated file?)"
                )
            out[(event_dir.name, name)] = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return out
