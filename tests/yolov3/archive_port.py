"""An independent, deliberately plain port of the ultralytics/yolov3 archive branch's
``build_targets`` + ``compute_loss`` (``red = "mean"``, ``iou_t`` rejection, all anchors),
written from the formulas, one image at a time, with Python loops. The oracle for
``src.losses.yolo`` (tests) and its baseline (benchmarks/yolov3.py).

Archive conventions kept on purpose: targets ``[image, class, x, y, w, h]`` normalised to the
input size, ``gain = (nx, ny)`` to grid units, the cell index ``long()`` then clamped, the box
offset from the unclamped ``floor`` (one cell off on the right/bottom edge), objectness targets
written in order (last write wins on a shared cell and anchor), the archive's GIoU with its
1e-16 epsilons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def xyxy_px_to_archive(boxes: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]):
    """(B, M, 4) corner pixels + (B, M) labels (-1 padding) -> the archive's (nt, 6) targets."""
    h, w = size
    rows = []
    for b in range(boxes.shape[0]):
        for m in range(boxes.shape[1]):
            if labels[b, m] < 0:
                continue
            x1, y1, x2, y2 = boxes[b, m].tolist()
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                continue
            rows.append(
                [b, int(labels[b, m]), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w,
                 (y2 - y1) / h]
            )  # fmt: skip
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)


def archive_wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    inter = torch.min(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter)


def archive_giou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Both (n, 4) xywh; the archive's bbox_iou(..., x1y1x2y2=False, GIoU=True)."""
    b1x1, b1x2 = box1[:, 0] - box1[:, 2] / 2, box1[:, 0] + box1[:, 2] / 2
    b1y1, b1y2 = box1[:, 1] - box1[:, 3] / 2, box1[:, 1] + box1[:, 3] / 2
    b2x1, b2x2 = box2[:, 0] - box2[:, 2] / 2, box2[:, 0] + box2[:, 2] / 2
    b2y1, b2y2 = box2[:, 1] - box2[:, 3] / 2, box2[:, 1] + box2[:, 3] / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(0)
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1
    union = (w1 * h1 + 1e-16) + w2 * h2 - inter
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c_area = cw * ch + 1e-16
    return iou - (c_area - union) / c_area


def archive_build_targets(p, targets, anchor_vecs, iou_t=0.2):
    """Per image, per layer; returns (tcls, tbox, indices, anchors) per layer, positives in the
    archive's order (anchor-major over the whole batch, then target order)."""
    B = p[0].shape[0]
    out = []
    for pi, anchors in zip(p, anchor_vecs):
        ny, nx = pi.shape[2], pi.shape[3]
        rows = []  # (a, b, target index, ...)
        for b in range(B):
            idx = [k for k in range(targets.shape[0]) if int(targets[k, 0]) == b]
            for a in range(anchors.shape[0]):
                for k in idx:
                    t = targets[k].clone()
                    t[[2, 4]] *= nx
                    t[[3, 5]] *= ny
                    iou = archive_wh_iou(anchors[a : a + 1], t[None, 4:6])[0, 0]
                    if not iou > iou_t:
                        continue
                    gx, gy = float(t[2]), float(t[3])
                    gi = min(max(int(gx), 0), nx - 1)  # .long() then clamped
                    gj = min(max(int(gy), 0), ny - 1)
                    box = [gx - torch.floor(t[2]).item(), gy - torch.floor(t[3]).item(),
                           float(t[4]), float(t[5])]  # fmt: skip
                    rows.append((a, b, k, gj, gi, box, int(t[1])))
        rows.sort(key=lambda r: (r[0], r[2]))  # anchor-major, then target order
        dt = torch.float64
        out.append(
            {
                "b": torch.tensor([r[1] for r in rows], dtype=torch.long),
                "a": torch.tensor([r[0] for r in rows], dtype=torch.long),
                "gj": torch.tensor([r[3] for r in rows], dtype=torch.long),
                "gi": torch.tensor([r[4] for r in rows], dtype=torch.long),
                "tbox": torch.tensor([r[5] for r in rows], dtype=dt).reshape(-1, 4),
                "anchor": anchors[[r[0] for r in rows]].reshape(-1, 2),
                "cls": torch.tensor([r[6] for r in rows], dtype=torch.long),
            }
        )
    return out


def archive_compute_loss(
    p, targets, anchor_vecs, hyp, nc, gr=1.0, writes="last", built=None, ignore=None
):
    """(lbox, lobj, lcls) after the gains (hyp keys giou, obj, cls, iou_t), unscaled.
    ``writes="max"``: a shared cell and anchor keeps the higher objectness target (our fix)
    instead of the last one written (the archive). ``built`` / ``ignore``: other targets and,
    per layer, a (B, 3, ny, nx) mask of anchors left out of the objectness sum unless positive
    (the darknet assignment below)."""
    if built is None:
        built = archive_build_targets(p, targets, anchor_vecs, hyp["iou_t"])
    lbox = lobj = lcls = torch.zeros((), dtype=p[0].dtype)
    for layer, (pi, t) in enumerate(zip(p, built)):
        n = t["b"].shape[0]
        B = pi.shape[0]
        box_sum = cls_sum = obj_sum = torch.zeros((), dtype=pi.dtype)
        tobj = torch.zeros_like(pi[..., 4])
        for b in range(B):  # one image at a time
            sel = [k for k in range(n) if int(t["b"][k]) == b]
            if sel:
                ps = torch.stack([pi[b, t["a"][k], t["gj"][k], t["gi"][k]] for k in sel])
                pxy = ps[:, :2].sigmoid()
                pwh = ps[:, 2:4].exp().clamp(max=1e3) * t["anchor"][sel]
                giou = archive_giou(torch.cat((pxy, pwh), 1), t["tbox"][sel])
                box_sum = box_sum + (1.0 - giou).sum()
                for j, k in enumerate(sel):  # in order: the last write wins
                    v = (1.0 - gr) + gr * giou[j].detach().clamp(0)
                    cell = (b, t["a"][k], t["gj"][k], t["gi"][k])
                    tobj[cell] = torch.maximum(tobj[cell], v) if writes == "max" else v
                if nc > 1:
                    onehot = torch.zeros_like(ps[:, 5:])
                    for j, k in enumerate(sel):
                        onehot[j, t["cls"][k]] = 1.0
                    cls_sum = cls_sum + F.binary_cross_entropy_with_logits(
                        ps[:, 5:], onehot, reduction="sum"
                    )
        for b in range(B):  # after every write (the targets are saved for backward)
            bce = F.binary_cross_entropy_with_logits(pi[b, ..., 4], tobj[b], reduction="none")
            if ignore is not None:
                positive = torch.zeros_like(bce, dtype=torch.bool)
                for k in range(n):
                    if int(t["b"][k]) == b:
                        positive[t["a"][k], t["gj"][k], t["gi"][k]] = True
                bce = torch.where(ignore[layer][b] & ~positive, torch.zeros_like(bce), bce)
            obj_sum = obj_sum + bce.sum()
        if n:
            lbox = lbox + box_sum / n
            if nc > 1:
                lcls = lcls + cls_sum / (n * nc)
        lobj = lobj + obj_sum / tobj.numel()
    return lbox * hyp["giou"], lobj * hyp["obj"], lcls * hyp["cls"]


def darknet_build_targets(p, targets, anchors_px, strides, size):
    """The paper's assignment, per target: the one anchor of all nine (pixel anchors, layer
    after layer) with the highest width-height IoU, the first on ties; its layer gets the target
    in its cell (the clamped cell, box offset from that cell: our exact convention, not the
    archive's one-cell-off edge). Same output layout as ``archive_build_targets``."""
    h, w = size
    flat = [(layer, a) for layer in range(len(anchors_px)) for a in range(len(anchors_px[layer]))]
    rows = [[] for _ in anchors_px]
    for k in range(targets.shape[0]):
        t = targets[k]
        wh = torch.stack((t[4] * w, t[5] * h))
        ious = [
            float(archive_wh_iou(anchors_px[layer][a : a + 1], wh[None])[0, 0]) for layer, a in flat
        ]
        layer, a = flat[max(range(len(ious)), key=lambda i: (ious[i], -i))]
        ny, nx = p[layer].shape[2], p[layer].shape[3]
        s = strides[layer]
        gx, gy = float(t[2]) * w / s, float(t[3]) * h / s
        gi, gj = min(max(int(gx), 0), nx - 1), min(max(int(gy), 0), ny - 1)
        box = [gx - gi, gy - gj, float(t[4]) * w / s, float(t[5]) * h / s]
        rows[layer].append((a, int(t[0]), k, gj, gi, box, int(t[1])))
    out = []
    for layer, r in enumerate(rows):
        r.sort(key=lambda x: (x[0], x[2]))
        out.append(
            {
                "b": torch.tensor([x[1] for x in r], dtype=torch.long),
                "a": torch.tensor([x[0] for x in r], dtype=torch.long),
                "gj": torch.tensor([x[3] for x in r], dtype=torch.long),
                "gi": torch.tensor([x[4] for x in r], dtype=torch.long),
                "tbox": torch.tensor([x[5] for x in r], dtype=torch.float64).reshape(-1, 4),
                "anchor": (anchors_px[layer] / strides[layer])[[x[0] for x in r]].reshape(-1, 2),
                "cls": torch.tensor([x[6] for x in r], dtype=torch.long),
            }
        )
    return out


def darknet_ignore(p, targets, anchors_px, strides, size, ignore_thresh=0.7):
    """Per layer (B, 3, ny, nx): anchors whose decoded box ((sigmoid(t_xy) + cell) x stride,
    exp(t_wh) x anchor) has IoU > ignore_thresh with some ground truth of its image (darknet's
    yolo_layer best_iou test), image by image, box by box."""
    h, w = size
    out = []
    for pi, anchors, s in zip(p, anchors_px, strides):
        B, na, ny, nx = pi.shape[:4]
        mask = torch.zeros(B, na, ny, nx, dtype=torch.bool)
        for b in range(B):
            gts = [targets[k] for k in range(targets.shape[0]) if int(targets[k, 0]) == b]
            for a in range(na):
                gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
                cx = (pi[b, a, ..., 0].sigmoid() + gx) * s
                cy = (pi[b, a, ..., 1].sigmoid() + gy) * s
                pw = pi[b, a, ..., 2].exp().clamp(max=1e3) * anchors[a, 0]
                ph = pi[b, a, ..., 3].exp().clamp(max=1e3) * anchors[a, 1]
                best = torch.zeros(ny, nx, dtype=pi.dtype)
                for t in gts:
                    tx, ty, tw, th = t[2] * w, t[3] * h, t[4] * w, t[5] * h
                    iw = torch.min(cx + pw / 2, tx + tw / 2) - torch.max(cx - pw / 2, tx - tw / 2)
                    ih = torch.min(cy + ph / 2, ty + th / 2) - torch.max(cy - ph / 2, ty - th / 2)
                    inter = iw.clamp(0) * ih.clamp(0)
                    best = torch.max(best, inter / (pw * ph + tw * th - inter))
                mask[b, a] = best.detach() > ignore_thresh
        out.append(mask)
    return out


def archive_non_max_suppression(
    prediction, conf_thres, iou_thres, multi_label=True, max_det=300, max_nms=30000
):
    """The archive's ``non_max_suppression`` (merge off), one image at a time: objectness >
    conf, 2 < w, h < 4096, conf = obj x cls, every class over conf (``multi_label``) or the best,
    at most ``max_nms`` best pairs, torchvision NMS with boxes moved apart by class, the first
    ``max_det``. The class offset is ``class * 4096`` as the archive, added in float64 (in
    float32 the archive's offset rounds the coordinates of high class ids)."""
    import torchvision

    out = []
    for x in prediction:
        x = x[x[:, 4] > conf_thres]
        x = x[((x[:, 2:4] > 2) & (x[:, 2:4] < 4096)).all(1)]
        x = x.clone()
        if x.shape[1] > 6:
            x[:, 5:] *= x[:, 4:5]
        else:  # one class: the archive's YOLOLayer sets its probability to 1
            x[:, 5:] = x[:, 4:5]
        box = torch.cat((x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2), 1)
        if multi_label:
            i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((box[i], x[i, j + 5, None], j[:, None].float()), 1)
        else:
            conf, j = x[:, 5:].max(1)
            det = torch.cat((box, conf[:, None], j[:, None].float()), 1)[conf > conf_thres]
        if det.shape[0] > max_nms:
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        offset = det[:, 5:6].double() * 4096
        keep = torchvision.ops.nms(det[:, :4].double() + offset, det[:, 4].double(), iou_thres)
        det = det[keep[:max_det]]
        out.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
    return out
