"""RetinaFace post-processing: decode, score, threshold, top-k, NMS, keep-top-k, batched.

The reference (biubug6/Pytorch_Retinaface ``detect.py``) per image: decode boxes and landmarks
against the priors (variances 0.1 / 0.2) and scale them to pixels; keep scores (softmax face
probability) ``> 0.02``; sort by score and keep the top 5000; greedy NMS at IoU 0.4 with the
legacy ``+1`` areas of ``py_cpu_nms``; keep the first 750. Here the same steps run on the whole
batch at once (decoding, scoring and top-k are one tensor op each; NMS is one ``batched_nms``
call per group of images whose candidates fit ``max_nms_boxes``, since NMS memory is quadratic in
its input). Decoding uses the toolkit's ``NormalizedBoxCenterDecoder`` /
``NormalizedLandmarkCenterDecoder``; NMS is ``src.ops.batched_nms`` with ``offset`` (1 = the
reference's ``x2 - x1 + 1`` areas, the default here so detections match it; 0 = plain areas).

Boxes and landmarks come out in pixels of the network input divided by ``scale`` (the resize
factor of each image, so the default 1 gives input pixels and the evaluation's ``scale`` gives
pixels of the original file). Detections of an image are sorted by decreasing score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from src.nn import NormalizedBoxCenterDecoder, NormalizedLandmarkCenterDecoder
from src.ops import batched_nms

__all__ = ["DetectConfig", "decode", "detect"]


@dataclass
class DetectConfig:
    confidence_threshold: float = 0.02
    top_k: int = 5000
    nms_threshold: float = 0.4
    keep_top_k: int = 750
    nms_offset: float = 1.0
    variances: tuple[float, float] = (0.1, 0.2)
    max_nms_boxes: int = 8192


def decode(
    loc: Tensor,
    conf: Tensor,
    landm: Tensor,
    priors: Tensor,
    variances: Sequence[float] = (0.1, 0.2),
) -> tuple[Tensor, Tensor, Tensor]:
    """Raw outputs (B, P, 4 / 2 / 10) + priors (P, 4) ``cxcywh`` -> normalised corner boxes
    (B, P, 4), face scores (B, P) (softmax of the logits) and landmarks (B, P, 10)."""
    v0, v1 = (float(v) for v in variances)
    priors = priors.to(loc.dtype)
    boxes = NormalizedBoxCenterDecoder(stds=(v0, v0, v1, v1))(loc, priors)
    points = NormalizedLandmarkCenterDecoder(stds=(v0, v0))(landm, priors)
    scores = conf.softmax(dim=-1)[..., 1]
    return boxes, scores, points


def _groups(counts: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive image ranges whose candidate counts sum to at most ``limit`` (an image with
    more candidates than ``limit`` forms its own group)."""
    out, start, total = [], 0, 0
    for i, c in enumerate(counts):
        if i > start and total + c > limit:
            out.append((start, i))
            start, total = i, 0
        total += c
    if counts:
        out.append((start, len(counts)))
    return out


@torch.no_grad()
def detect(
    loc: Tensor,
    conf: Tensor,
    landm: Tensor,
    priors: Tensor,
    image_size: tuple[int, int],
    scale: Tensor | Sequence[float] | float = 1.0,
    cfg: DetectConfig | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image: ``[{"boxes" (K, 4) x1 y1 x2 y2, "scores" (K,), "landmarks"
    (K, 10)}, ...]`` in pixels (see the module doc), at most ``keep_top_k`` each.

    ``image_size`` is the (H, W) of the network input the priors were made for.
    """
    cfg = cfg or DetectConfig()
    bsz = loc.shape[0]
    h, w = int(image_size[0]), int(image_size[1])
    boxes, scores, points = decode(loc, conf, landm, priors, cfg.variances)
    scale_t = torch.as_tensor(scale, dtype=boxes.dtype, device=boxes.device).reshape(-1)
    scale_t = scale_t.expand(bsz) if scale_t.numel() == 1 else scale_t
    px = torch.tensor([w, h], dtype=boxes.dtype, device=boxes.device)
    boxes = boxes * px.repeat(2) / scale_t[:, None, None]
    points = points * px.repeat(5) / scale_t[:, None, None]

    # threshold + top-k before NMS, for all images at once
    k = min(int(cfg.top_k), scores.shape[1])
    masked = torch.where(
        scores > cfg.confidence_threshold, scores, torch.full_like(scores, float("-inf"))
    )
    top, idx = masked.topk(k, dim=1, sorted=True)  # (B, k) descending
    valid = top > float("-inf")
    counts = valid.sum(dim=1).tolist()
    image_id = torch.arange(bsz, device=loc.device)[:, None].expand(bsz, k)
    flat = valid.reshape(-1)
    cand_img = image_id.reshape(-1)[flat]
    cand_scores = scores.gather(1, idx).reshape(-1)[flat]
    cand_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4)).reshape(-1, 4)[flat]
    cand_points = points.gather(1, idx[..., None].expand(-1, -1, 10)).reshape(-1, 10)[flat]

    out: list[dict[str, Tensor]] = []
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    for a, b in _groups(counts, int(cfg.max_nms_boxes)):
        lo, hi = offsets[a], offsets[b]
        g_img = cand_img[lo:hi]
        keep = batched_nms(
            cand_boxes[lo:hi].float() if cand_boxes.dtype == torch.float16 else cand_boxes[lo:hi],
            cand_scores[lo:hi],
            g_img,
            float(cfg.nms_threshold),
            offset=float(cfg.nms_offset),
        )
        keep = keep + lo  # sorted by decreasing score over the whole group
        kept_img = cand_img[keep]
        order = torch.sort(kept_img, stable=True).indices  # group by image, score order kept
        keep, kept_img = keep[order], kept_img[order]
        per_image = torch.bincount(kept_img - a, minlength=b - a).tolist()
        for chunk in torch.split(keep, per_image):
            chunk = chunk[: int(cfg.keep_top_k)]
            out.append(
                {
                    "boxes": cand_boxes[chunk],
                    "scores": cand_scores[chunk],
                    "landmarks": cand_points[chunk],
                }
            )
    return out
