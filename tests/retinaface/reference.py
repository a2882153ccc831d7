"""Per-image Python-loop formulation of the reference RetinaFace target assignment and loss
(biubug6/Pytorch_Retinaface ``utils/box_utils.py`` ``match`` / ``encode`` / ``encode_landm`` /
``log_sum_exp`` and ``layers/modules/multibox_loss.py``), written independently of ``src/`` as
the oracle of the tests and the baseline of ``benchmarks/retinaface.py``.

Differences from the reference, none of which changes a value it can compute:

* ``fixed=True`` runs the forcing loop over the kept faces only (the bug fix this repository
  makes); ``fixed=False`` is the reference's loop over all faces;
* an image with no face at all (the reference crashes on ``max`` of an empty tensor) is all
  background;
* ``faces_without_landmarks`` (label -1) keep whatever landmark values they carry; they are
  excluded from the landmark loss by their label, as in the reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def point_form(priors: torch.Tensor) -> torch.Tensor:
    return torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    max_xy = torch.min(a[:, None, 2:], b[None, :, 2:])
    min_xy = torch.max(a[:, None, :2], b[None, :, :2])
    inter = (max_xy - min_xy).clamp(min=0)
    inter = inter[..., 0] * inter[..., 1]
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / (area_a + area_b - inter)


def encode(matched, priors, variances):
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy = g_cxcy / (variances[0] * priors[:, 2:])
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def encode_landm(matched, priors, variances):
    m = matched.reshape(-1, 5, 2)
    g = (m - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])
    return g.reshape(-1, 10)


def match_one(threshold, truths, priors, variances, labels, landms, fixed=False, ignore_thresh=0.2):
    """One image: returns (loc_t (P, 4), conf_t (P,) with labels 1/-1 or 0, landm_t (P, 10))."""
    p = priors.shape[0]
    loc_t = torch.zeros(p, 4, dtype=priors.dtype)
    landm_t = torch.zeros(p, 10, dtype=priors.dtype)
    conf_t = torch.zeros(p, dtype=torch.long)
    if truths.shape[0] == 0:
        return loc_t, conf_t, landm_t
    overlaps = jaccard(truths, point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    valid_gt = best_prior_overlap >= ignore_thresh
    if not valid_gt.any():
        return loc_t, conf_t, landm_t
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap = best_truth_overlap.clone()
    best_truth_idx = best_truth_idx.clone()
    best_truth_overlap.index_fill_(0, best_prior_idx[valid_gt], 2)
    for j in range(best_prior_idx.shape[0]):
        if fixed and not valid_gt[j]:
            continue
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx].long().clone()
    conf[best_truth_overlap < threshold] = 0
    loc = encode(matches, priors, variances)
    landm = encode_landm(landms[best_truth_idx], priors, variances)
    return loc, conf, landm


def reference_targets(priors, targets, threshold=0.35, variances=(0.1, 0.2), fixed=False):
    """``targets``: list of per-image (n_i, 15) tensors ``x1 y1 x2 y2, 10 landmarks, label``."""
    locs, confs, landms = [], [], []
    for t in targets:
        loc, conf, landm = match_one(
            threshold, t[:, :4], priors, variances, t[:, -1], t[:, 4:14], fixed=fixed
        )
        locs.append(loc)
        confs.append(conf)
        landms.append(landm)
    return torch.stack(locs), torch.stack(confs), torch.stack(landms)


def log_sum_exp(x):
    x_max = x.detach().max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max


def reference_loss(
    predictions,
    priors,
    targets,
    threshold=0.35,
    negpos_ratio=7,
    variances=(0.1, 0.2),
    fixed=False,
    loc_weight=2.0,
):
    """The reference ``MultiBoxLoss.forward`` (per-image matching loop) plus
    ``loss = loc_weight * loss_l + loss_c + loss_landm`` as its train.py forms it."""
    loc_data, conf_data, landm_data = predictions
    num = loc_data.shape[0]
    with torch.no_grad():
        loc_t, conf_t, landm_t = reference_targets(priors, targets, threshold, variances, fixed)
    pos1 = conf_t > 0
    n1 = max(float(pos1.long().sum()), 1.0)
    landm_p = landm_data[pos1.unsqueeze(-1).expand_as(landm_data)].view(-1, 10)
    landm_tt = landm_t[pos1.unsqueeze(-1).expand_as(landm_t)].view(-1, 10)
    loss_landm = F.smooth_l1_loss(landm_p, landm_tt, reduction="sum")

    pos = conf_t != 0
    conf_t = conf_t.clone()
    conf_t[pos] = 1
    loc_p = loc_data[pos.unsqueeze(-1).expand_as(loc_data)].view(-1, 4)
    loc_tt = loc_t[pos.unsqueeze(-1).expand_as(loc_t)].view(-1, 4)
    loss_l = F.smooth_l1_loss(loc_p, loc_tt, reduction="sum")

    batch_conf = conf_data.reshape(-1, 2)
    loss_c = log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))
    loss_c = loss_c.detach().clone()
    loss_c[pos.view(-1, 1)] = 0
    loss_c = loss_c.view(num, -1)
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp(negpos_ratio * num_pos, max=pos.shape[1] - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    sel = pos | neg
    conf_p = conf_data[sel.unsqueeze(2).expand_as(conf_data)].view(-1, 2)
    loss_c = F.cross_entropy(conf_p, conf_t[sel], reduction="sum")
    n = max(float(num_pos.sum()), 1.0)
    loss_l = loss_l / n
    loss_c = loss_c / n
    loss_landm = loss_landm / n1
    return {
        "loss": loc_weight * loss_l + loss_c + loss_landm,
        "loc": loss_l,
        "cls": loss_c,
        "landm": loss_landm,
        "num_pos": float(pos.sum()),
        "conf_t": conf_t,
        "pos": pos,
    }


def pad_targets(targets, dtype=torch.float64):
    """Per-image (n_i, 15) targets -> padded (boxes (B, M, 4), labels (B, M), landmarks
    (B, M, 10)) with -1 padding, as the collate function of the data module gives them."""
    m = max([t.shape[0] for t in targets] + [0])
    b = len(targets)
    boxes = torch.full((b, m, 4), -1.0, dtype=dtype)
    labels = torch.full((b, m), -1, dtype=torch.long)
    landms = torch.full((b, m, 10), -1.0, dtype=dtype)
    for i, t in enumerate(targets):
        k = t.shape[0]
        boxes[i, :k] = t[:, :4]
        landms[i, :k] = t[:, 4:14]
        labels[i, :k] = t[:, -1].long()
    return boxes, labels, landms


# ------------------------------------------------------------ post-processing (detect.py)
def py_cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """The reference's greedy NMS (Fast R-CNN py_cpu_nms, +1 areas)."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def reference_detect(
    loc,
    conf,
    landm,
    priors,
    h,
    w,
    resize=1.0,
    conf_thresh=0.02,
    top_k=5000,
    nms_thresh=0.4,
    keep_top_k=750,
):
    """One image, the reference's detect.py steps in numpy (float64 decoding)."""
    v = (0.1, 0.2)
    p = priors.astype(np.float64)
    c = p[:, :2] + loc[:, :2] * v[0] * p[:, 2:]
    wh = p[:, 2:] * np.exp(loc[:, 2:] * v[1])
    boxes = np.concatenate([c - wh / 2, c - wh / 2 + wh], 1) * np.array([w, h, w, h]) / resize
    e = np.exp(conf - conf.max(1, keepdims=True))
    scores = e[:, 1] / e.sum(1)
    lm = (p[:, None, :2] + landm.reshape(-1, 5, 2) * v[0] * p[:, None, 2:]).reshape(-1, 10)
    lm = lm * np.array([w, h] * 5) / resize
    inds = np.where(scores > conf_thresh)[0]
    boxes, lm, scores = boxes[inds], lm[inds], scores[inds]
    order = scores.argsort()[::-1][:top_k]
    boxes, lm, scores = boxes[order], lm[order], scores[order]
    dets = np.hstack((boxes, scores[:, None]))
    keep = py_cpu_nms(dets, nms_thresh)
    return dets[keep][:keep_top_k], lm[keep][:keep_top_k]


def reference_prior_box(h, w, min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32)):
    """The reference's ``PriorBox.forward`` (layers/functions/prior_box.py): Python loops over
    levels, cells and sizes, a float32 (P, 4) ``cxcywh`` tensor. Its detect.py builds it for
    every image."""
    from itertools import product
    from math import ceil

    anchors = []
    for k, step in enumerate(steps):
        for i, j in product(range(ceil(h / step)), range(ceil(w / step))):
            for min_size in min_sizes[k]:
                s_kx, s_ky = min_size / w, min_size / h
                dense_cx = [x * step / w for x in [j + 0.5]]
                dense_cy = [y * step / h for y in [i + 0.5]]
                for cy, cx in product(dense_cy, dense_cx):
                    anchors += [cx, cy, s_kx, s_ky]
    return torch.Tensor(anchors).view(-1, 4)


def reference_ssh_forward(ssh, x: torch.Tensor) -> torch.Tensor:
    """Pytorch_Retinaface ``models/net.py`` ``SSH.forward`` on an ``src`` SSH module's layers:
    the three branches concatenated, then one ReLU over the concatenation."""
    conv3x3 = ssh.conv3X3(x)
    conv5x5_1 = ssh.conv5X5_1(x)
    conv5x5 = ssh.conv5X5_2(conv5x5_1)
    conv7x7 = ssh.conv7x7_3(ssh.conv7X7_2(conv5x5_1))
    return F.relu(torch.cat([conv3x3, conv5x5, conv7x7], dim=1))
