"""A straightforward formulation of the WIDER FACE evaluation protocol: the test oracle.

Written to follow the reference evaluation (widerface_evaluate/evaluation.py of
biubug6/Pytorch_Retinaface, itself a port of the official MATLAB toolbox) step by step: a loop over
settings, events, images, predictions and the 1000 thresholds. Slow on purpose (about a minute
for the whole validation split); ``src.metrics.widerface`` must give identical APs.

Only two things differ from the reference, both to make the oracle usable in tests:
predictions come as a nested dict instead of a directory, and the optional ``equal_scores``
guard mirrors the documented guard of our evaluator (the reference itself gives NaN).
"""

from __future__ import annotations

import numpy as np


def bbox_overlaps_legacy(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x (K, 4) corner boxes -> (N, K) IoU with +1 widths (py-faster-rcnn Cython loop)."""
    n, k = boxes.shape[0], query_boxes.shape[0]
    overlaps = np.zeros((n, k), dtype=np.float64)
    for kk in range(k):
        q = query_boxes[kk]
        box_area = (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
        # the inner loop over n, written as one vector step with the same operations
        iw = np.minimum(boxes[:, 2], q[2]) - np.maximum(boxes[:, 0], q[0]) + 1
        ih = np.minimum(boxes[:, 3], q[3]) - np.maximum(boxes[:, 1], q[1]) + 1
        for nn in range(n):
            if iw[nn] > 0 and ih[nn] > 0:
                b = boxes[nn]
                ua = float((b[2] - b[0] + 1) * (b[3] - b[1] + 1) + box_area - iw[nn] * ih[nn])
                overlaps[nn, kk] = iw[nn] * ih[nn] / ua
    return overlaps


def norm_score(pred: dict, equal_scores_guard: bool = False) -> None:
    max_score = 0
    min_score = 1
    for _, k in pred.items():
        for _, v in k.items():
            if len(v) == 0:
                continue
            _min = np.min(v[:, -1])
            _max = np.max(v[:, -1])
            max_score = max(_max, max_score)
            min_score = min(_min, min_score)
    diff = max_score - min_score
    for _, k in pred.items():
        for _, v in k.items():
            if len(v) == 0:
                continue
            if equal_scores_guard and diff == 0:
                v[:, -1] = 1.0
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    v[:, -1] = (v[:, -1] - min_score) / diff


def image_eval(pred, gt, ignore, iou_thresh):
    _pred = pred.copy()
    _gt = gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])
    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]
    overlaps = bbox_overlaps_legacy(_pred[:, :4], _gt)
    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        r_keep_index = np.where(recall_list == 1)[0]
        pred_recall[h] = len(r_keep_index)
    return pred_recall, proposal_list


def img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
    pr_info = np.zeros((thresh_num, 2)).astype("float")
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            pr_info[t, 0] = 0
            pr_info[t, 1] = 0
        else:
            r_index = r_index[-1]
            p_index = np.where(proposal_list[: r_index + 1] == 1)[0]
            pr_info[t, 0] = len(p_index)
            pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def dataset_pr_info(thresh_num, pr_curve, count_face):
    _pr_curve = np.zeros((thresh_num, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(thresh_num):
            _pr_curve[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
            _pr_curve[i, 1] = pr_curve[i, 1] / count_face
    return _pr_curve


def voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_evaluation(
    pred: dict,
    facebox_list,
    event_list,
    file_list,
    hard_gt_list,
    medium_gt_list,
    easy_gt_list,
    iou_thresh: float = 0.5,
    equal_scores_guard: bool = False,
) -> dict[str, float]:
    """pred: {event: {name: (K, 5) float array}} (modified in place by the normalisation)."""
    norm_score(pred, equal_scores_guard)
    event_num = len(event_list)
    thresh_num = 1000
    settings = ["easy", "medium", "hard"]
    setting_gts = [easy_gt_list, medium_gt_list, hard_gt_list]
    aps = {}
    for setting_id in range(3):
        gt_list = setting_gts[setting_id]
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2)).astype("float")
        for i in range(event_num):
            event_name = str(event_list[i][0][0])
            img_list = file_list[i][0]
            pred_list = pred[event_name]
            sub_gt_list = gt_list[i][0]
            gt_bbx_list = facebox_list[i][0]
            for j in range(len(img_list)):
                pred_info = pred_list[str(img_list[j][0][0])]
                gt_boxes = gt_bbx_list[j][0].astype("float")
                keep_index = sub_gt_list[j][0]
                count_face += len(keep_index)
                if len(gt_boxes) == 0 or len(pred_info) == 0:
                    continue
                ignore = np.zeros(gt_boxes.shape[0])
                if len(keep_index) != 0:
                    ignore[keep_index - 1] = 1
                pred_recall, proposal_list = image_eval(pred_info, gt_boxes, ignore, iou_thresh)
                pr_curve += img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        pr_curve = dataset_pr_info(thresh_num, pr_curve, count_face)
        aps[settings[setting_id]] = float(voc_ap(pr_curve[:, 1], pr_curve[:, 0]))
    return aps


def load_mat_gt(gt_dir):
    """The six arrays the reference's get_gt_boxes returns, from the four .mat files."""
    import os

    from scipy.io import loadmat

    gt_mat = loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    hard = loadmat(os.path.join(gt_dir, "wider_hard_val.mat"))["gt_list"]
    medium = loadmat(os.path.join(gt_dir, "wider_medium_val.mat"))["gt_list"]
    easy = loadmat(os.path.join(gt_dir, "wider_easy_val.mat"))["gt_list"]
    return gt_mat["face_bbx_list"], gt_mat["event_list"], gt_mat["file_list"], hard, medium, easy


def nested(predictions: dict) -> dict:
    """{(event, name): arr} -> {event: {name: float64 copy}} as the reference's get_preds."""
    out: dict = {}
    for (event, name), arr in predictions.items():
        out.setdefault(event, {})[name] = np.array(arr, dtype=np.float64).reshape(-1, 5)
    return out


def synthetic_predictions(facebox_list, event_list, file_list, seed: int = 0) -> dict:
    """Deterministic predictions for every gt image: jittered, partly missed gt boxes, duplicates
    and false positives, scores sorted in descending order (as a detector writes them)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(len(event_list)):
        event = str(event_list[i][0][0])
        for j in range(len(file_list[i][0])):
            name = str(file_list[i][0][j][0][0])
            gt = facebox_list[i][0][j][0].astype(np.float64).reshape(-1, 4)
            rows = []
            if len(gt):
                found = gt[rng.random(len(gt)) < 0.8]
                size = np.maximum(found[:, 2:], 1.0)
                jit = found.copy()
                jit[:, :2] += rng.normal(0, 0.12, (len(found), 2)) * size
                jit[:, 2:] *= np.exp(rng.normal(0, 0.12, (len(found), 2)))
                big = np.sqrt(size.prod(1))
                score = 1 / (1 + np.exp(-(np.log(big) - 2.0 + rng.normal(0, 1.0, len(found)))))
                rows.append(np.c_[np.round(jit, 1), score])
                dup = jit[rng.random(len(jit)) < 0.1]
                if len(dup):
                    dup = dup + rng.normal(0, 1.0, dup.shape)
                    rows.append(np.c_[dup, rng.uniform(0.02, 0.6, len(dup))])
            nfp = rng.poisson(3)
            if nfp:
                xy = rng.uniform(0, 1000, (nfp, 2))
                wh = rng.uniform(4, 120, (nfp, 2))
                rows.append(np.c_[xy, wh, rng.uniform(0.02, 0.9, nfp)])
            arr = np.concatenate(rows) if rows else np.zeros((0, 5))
            arr = arr[np.argsort(-arr[:, 4], kind="stable")]
            out[(event, name)] = arr
    return out


def read_pred_file(filepath):
    """The reference's reader of one prediction file (name line, count line, box lines)."""
    with open(filepath) as f:
        lines = f.readlines()
        img_file = lines[0].rstrip("\n\r")
        lines = lines[2:]
    boxes = []
    for line in lines:
        line = line.rstrip("\r\n").split(" ")
        if line[0] == "":
            continue
        boxes.append(
            [float(line[0]), float(line[1]), float(line[2]), float(line[3]), float(line[4])]
        )
    boxes = np.array(boxes)
    return img_file.split("/")[-1], boxes


def get_preds(pred_dir):
    """The reference's directory walk: {event: {name: boxes}}."""
    import os

    boxes = {}
    for event in os.listdir(pred_dir):
        event_dir = os.path.join(pred_dir, event)
        current_event = {}
        for imgtxt in os.listdir(event_dir):
            imgname, _boxes = read_pred_file(os.path.join(event_dir, imgtxt))
            current_event[imgname.rstrip(".jpg")] = _boxes
        boxes[event] = current_event
    return boxes
