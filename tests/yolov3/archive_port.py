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


def archive_compute_loss(p, targets, anchor_vecs, hyp, nc, gr=1.0, writes="last"):
    """(lbox, lobj, lcls) after the gains (hyp keys giou, obj, cls, iou_t), unscaled.
    ``writes="max"``: a shared cell and anchor keeps the higher objectness target (our fix)
    instead of the last one written (the archive)."""
    built = archive_build_targets(p, targets, anchor_vecs, hyp["iou_t"])
    lbox = lobj = lcls = torch.zeros((), dtype=p[0].dtype)
    for pi, t in zip(p, built):
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
            obj_sum = obj_sum + F.binary_cross_entropy_with_logits(
                pi[b, ..., 4], tobj[b], reduction="sum"
            )
        if n:
            lbox = lbox + box_sum / n
            if nc > 1:
                lcls = lcls + cls_sum / (n * nc)
        lobj = lobj + obj_sum / tobj.numel()
    return lbox * hyp["giou"], lobj * hyp["obj"], lcls * hyp["cls"]
