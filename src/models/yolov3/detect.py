"""YOLOv3 post-processing (the archive's ``non_max_suppression``), batched over images.

``postprocess(decoded, conf_thres, iou_thres, ...)`` takes ``decode``'s ``(B, N, 5 + C)``
(centre x, y, w, h in input pixels, objectness, class probabilities) and returns one dict per
image with ``boxes`` (K, 4) corners, ``scores`` (K,) and ``labels`` (K,):

1. score of (box, class) = objectness x class probability (a single-class model: objectness);
2. ``multi_label`` (the archive's choice for mAP): every (box, class) pair with score >
   ``conf_thres``; else each box's best class if its score is > ``conf_thres``;
3. boxes with a side below ``min_wh`` or above ``max_wh`` pixels are dropped (archive: 2, 4096);
4. class-aware NMS at ``iou_thres`` (``src.ops.batched_nms``, one call for the whole batch: the
   group id is image x C + class), highest scores first, at most ``max_det`` per image.

Thresholds: conf 0.001 / IoU 0.6 for mAP, 0.3 / 0.5 for pictures (the archive's test.py and
detect.py).
"""

from __future__ import annotations

import torch

from src.ops import batched_nms


def xywh_to_corners(b: torch.Tensor) -> torch.Tensor:
    half = b[..., 2:4] / 2
    return torch.cat((b[..., :2] - half, b[..., :2] + half), -1)


def scores_of(decoded: torch.Tensor) -> torch.Tensor:
    """(B, N, C) detection scores: objectness x class probability (objectness for C = 1)."""
    obj, cls = decoded[..., 4:5], decoded[..., 5:]
    return obj if cls.shape[-1] == 1 else obj * cls


def postprocess(
    decoded: torch.Tensor,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    multi_label: bool = True,
    max_det: int = 300,
    min_wh: float = 2.0,
    max_wh: float = 4096.0,
) -> list[dict[str, torch.Tensor]]:
    B, N, _ = decoded.shape
    boxes = xywh_to_corners(decoded[..., :4].float())
    scores = scores_of(decoded.float())
    C = scores.shape[-1]
    wh = decoded[..., 2:4]
    ok = ((wh > min_wh) & (wh < max_wh)).all(-1)  # (B, N)
    if multi_label:
        keep = (scores > conf_thres) & ok[..., None]
        b, n, c = keep.nonzero(as_tuple=True)
        s = scores[b, n, c]
    else:
        s, c = scores.max(-1)
        keep = (s > conf_thres) & ok
        b, n = keep.nonzero(as_tuple=True)
        s, c = s[b, n], c[b, n]
    cand = boxes[b, n]
    kept = batched_nms(cand, s, b * C + c, iou_thres)  # sorted by decreasing score
    kb = b[kept]
    # at most max_det per image: rank of each kept box within its image
    order = torch.sort(kb, stable=True).indices  # image-major, score order inside
    counts = torch.bincount(kb, minlength=B)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=kb.device) - starts[kb[order]]
    kept = kept[rank < max_det]
    kb = b[kept]
    out = []
    for i in range(B):
        sel = kept[kb == i]
        out.append({"boxes": cand[sel], "scores": s[sel], "labels": c[sel]})
    return out
