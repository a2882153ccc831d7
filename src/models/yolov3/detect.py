"""YOLOv3 post-processing (the archive's ``non_max_suppression``), batched over images.

``postprocess(decoded, conf_thres, iou_thres, ...)`` takes ``decode``'s ``(B, N, 5 + C)``
(centre x, y, w, h in input pixels, objectness, class probabilities) and returns one dict per
image with ``boxes`` (K, 4) corners, ``scores`` (K,) and ``labels`` (K,):

1. candidates: anchors with objectness > ``conf_thres`` and both sides in (``min_wh``,
   ``max_wh``) pixels (archive: 2, 4096), for the whole batch in one mask. Filtering on the
   objectness first is the archive's order and loses nothing: a score ``obj x p`` with
   ``p <= 1`` (a sigmoid) never exceeds ``obj`` in floating point either;
2. score of (box, class) = objectness x class probability (a single-class model: objectness),
   built for the candidates only;
3. ``multi_label`` (the archive's choice for mAP): every (box, class) pair with score >
   ``conf_thres``; else each box's best class if its score is > ``conf_thres``;
4. at most ``max_nms`` (30000, as the archive's later ``non_max_suppression``) highest-scored
   pairs per image enter NMS (ties: the earlier pair);
5. class-aware greedy NMS at ``iou_thres`` (``src.ops.batched_nms``, group id image x C +
   class), highest scores first (ties: the earlier pair), at most ``max_det`` per image.
   Greedy NMS costs kept x candidates IoUs per call, between groups too, so the sorted groups
   go through ``batched_nms`` in calls of about ``chunk`` (1024) candidates: the detections of
   one call over the batch, without its quadratic cost (67k candidates in 4 images of 80
   classes: 17 s in one call -> 0.5 s on one busy CPU thread; benchmarks/yolov3.py).

Thresholds: conf 0.001 / IoU 0.6 for mAP, 0.3 / 0.5 for pictures (the archive's test.py and
detect.py). Not done: the archive's optional "merge NMS" (boxes replaced by score-weighted
means of their suppressed neighbours).
"""

from __future__ import annotations

import torch

from src.ops import batched_nms


def xywh_to_corners(b: torch.Tensor) -> torch.Tensor:
    half = b[..., 2:4] / 2
    return torch.cat((b[..., :2] - half, b[..., :2] + half), -1)


def scores_of(decoded: torch.Tensor) -> torch.Tensor:
    """(..., C) detection scores: objectness x class probability (objectness for C = 1)."""
    obj, cls = decoded[..., 4:5], decoded[..., 5:]
    return obj if cls.shape[-1] == 1 else obj * cls


def _cap_per_image(image: torch.Tensor, scores: torch.Tensor, cap: int) -> torch.Tensor:
    """Positions (ascending) of the ``cap`` best scores of each image; ``image`` sorted."""
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(image[order], stable=True).indices]  # image-major, best first
    counts = torch.bincount(image)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=image.device) - starts[image[order]]
    return torch.sort(order[rank < cap]).values


def postprocess(
    decoded: torch.Tensor,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    multi_label: bool = True,
    max_det: int = 300,
    min_wh: float = 2.0,
    max_wh: float = 4096.0,
    max_nms: int = 30000,
    chunk: int = 1024,
) -> list[dict[str, torch.Tensor]]:
    B = decoded.shape[0]
    d = decoded.float()
    wh = d[..., 2:4]
    ok = (d[..., 4] > conf_thres) & ((wh > min_wh) & (wh < max_wh)).all(-1)  # (B, N)
    b, n = ok.nonzero(as_tuple=True)  # image-major
    x = d[b, n]
    scores = scores_of(x)  # (n, C)
    if multi_label:
        i, c = (scores > conf_thres).nonzero(as_tuple=True)
        s = scores[i, c]
    else:
        s, c = scores.max(-1)
        i = (s > conf_thres).nonzero(as_tuple=True)[0]
        s, c = s[i], c[i]
    b = b[i]
    boxes = xywh_to_corners(x[i, :4])
    counts = torch.bincount(b, minlength=B)
    if counts.numel() and int(counts.max()) > max_nms:
        sel = _cap_per_image(b, s, max_nms)
        b, c, s, boxes = b[sel], c[sel], s[sel], boxes[sel]
    kept = _grouped_nms(boxes, s, b * scores.shape[-1] + c, iou_thres, chunk)
    # per image, best first (ties: the earlier candidate, as one NMS call would give)
    kept = kept[torch.sort(s[kept], descending=True, stable=True).indices]
    kept = kept[torch.sort(b[kept], stable=True).indices]
    out = []
    for k in kept.split(torch.bincount(b[kept], minlength=B).tolist()):
        k = k[:max_det]
        out.append({"boxes": boxes[k], "scores": s[k], "labels": c[k]})
    return out


def _grouped_nms(
    boxes: torch.Tensor, scores: torch.Tensor, group: torch.Tensor, iou_thres: float, chunk: int
) -> torch.Tensor:
    """Kept positions (ascending) of NMS within each group. Greedy NMS costs kept x candidates
    IoUs per call, also between groups that never suppress each other, so the groups (sorted)
    are packed into calls of about ``chunk`` candidates: the same result as one call, at a cost
    bounded by chunk^2 per call (a group larger than ``chunk`` goes alone)."""
    if group.numel() == 0:
        return group.new_zeros(0)
    order = torch.sort(group, stable=True).indices
    _, sizes = torch.unique_consecutive(group[order], return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    calls = torch.unique_consecutive(starts // chunk, return_counts=True)[1]  # groups per call
    bounds = torch.cat((starts[torch.cumsum(calls, 0) - calls], starts.new_tensor([len(group)])))
    per_call = bounds.diff()
    kept = []
    for o in order.split(per_call.tolist()):
        kept.append(o[batched_nms(boxes[o], scores[o], group[o], iou_thres)])
    return torch.sort(torch.cat(kept)).values
