"""An independent plain-Python port of py-faster-rcnn's ``voc_eval`` (the official VOC devkit
logic), the oracle of tests/detection_eval/test_voc.py. Written from the protocol, not copied,
and deliberately shaped like the original: per class, a dict of per-image records with a
``det`` flag per box, detections sorted by score, one Python loop over them, the IoU of one
detection against its image's boxes computed inline with numpy (+1 widths), then ``voc_ap``.

Inputs are in memory instead of annotation caches and detection text files: ``detections`` and
``ground_truth`` are aligned lists of per-image dicts (boxes xyxy, labels, scores / difficult).
The detection list of a class is built image after image, detection after detection (the order
of the per-class detection file the original reads).

One change, shared with ``src.metrics.voc`` and documented there: ``np.argsort(-confidence)``
uses a stable sort, so tied scores keep that file order (the original leaves it to numpy's
unstable quicksort). A class with no non-difficult box gives what the original gives
(NaN / 0 from a division by zero).
"""

from __future__ import annotations

import numpy as np


def reference_voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_voc_eval(detections, ground_truth, classidx, ovthresh=0.5, use_07_metric=False):
    """(rec, prec, ap) of class ``classidx``, as the original ``voc_eval``."""
    class_recs = {}
    npos = 0
    for i, g in enumerate(ground_truth):
        labels = list(np.asarray(g["labels"]).reshape(-1))
        boxes = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)
        diff_all = g.get("difficult")
        if diff_all is None:
            diff_all = [False] * len(labels)
        diff_all = list(np.asarray(diff_all).reshape(-1))
        keep = [k for k, lab in enumerate(labels) if lab == classidx]
        bbox = np.array([boxes[k] for k in keep]).reshape(-1, 4)
        difficult = np.array([bool(diff_all[k]) for k in keep]).astype(bool)
        det = [False] * len(keep)
        npos = npos + sum(~difficult)
        class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": det}

    image_ids, confidence, BB = [], [], []
    for i, d in enumerate(detections):
        labels = list(np.asarray(d["labels"]).reshape(-1))
        boxes = np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = list(np.asarray(d["scores"], dtype=np.float64).reshape(-1))
        for k, lab in enumerate(labels):
            if lab == classidx:
                image_ids.append(i)
                confidence.append(float(scores[k]))
                BB.append([float(v) for v in boxes[k]])
    confidence = np.array(confidence, dtype=np.float64)
    BB = np.array(BB, dtype=np.float64).reshape(-1, 4)

    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos) if npos else tp / np.float64(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    with np.errstate(invalid="ignore"):
        ap = reference_voc_ap(rec, prec, use_07_metric)
    return rec, prec, ap, int(npos)
