"""RetinaFace post-processing: decode, score, threshold, top-k, NMS, keep-top-k, batched.

The reference (biubug6/Pytorch_Retinaface ``detect.py``) per image: decode boxes and landmarks
against the priors (variances 0.1 / 0.2) and scale them to pixels; keep scores (softmax face
probability) ``> 0.02``; sort by score and keep the top 5000; greedy NMS at IoU 0.4 with the
legacy ``+1`` areas of ``py_cpu_nms``; keep the first 750. Here the same detections come out of
less work, for the whole batch at once, with no Python loop over boxes:

* scores first: the softmax runs only on priors whose logit difference can pass the threshold
  (``_candidates``, exact), then threshold and top-k per image (two stable sorts: by decreasing
  score, ties by prior index);
* only those candidates' boxes are decoded, and only the detections' landmarks;
* NMS stops early: greedy NMS decides a box by the kept boxes above it only, so NMS of an
  image's best ``m`` candidates keeps exactly what full NMS keeps among them; once that reaches
  ``keep_top_k`` the rest cannot change the output (``_nms_first_kept``: ``m`` starts at
  ``1.25 * keep_top_k`` and grows while an image keeps fewer);
* NMS is ``src.ops.batched_nms`` (torchvision's compiled NMS on CPU, exact for the legacy
  ``offset``), one call per group of images whose candidates fit ``max_nms_boxes``;
* ``priors=None`` takes the cached default priors of the input size (``prior_boxes``: an lru
  cache keyed by size, device and dtype).

Decoding uses the toolkit's ``NormalizedBoxCenterDecoder`` / ``NormalizedLandmarkCenterDecoder``;
``nms_offset`` 1 = the reference's ``x2 - x1 + 1`` areas (the default, so detections match it),
0 = plain areas. tests/retinaface/test_detect*.py compare with a numpy port of the reference.

Boxes and landmarks come out in pixels of the network input divided by ``scale`` (the resize
factor of each image, so the default 1 gives input pixels and the evaluation's ``scale`` gives
pixels of the original file). Detections of an image are sorted by decreasing score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from src.models.retinaface.priors import prior_boxes
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
    priors: Tensor | None,
    image_size: tuple[int, int],
    scale: Tensor | Sequence[float] | float = 1.0,
    cfg: DetectConfig | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image: ``[{"boxes" (K, 4) x1 y1 x2 y2, "scores" (K,), "landmarks"
    (K, 10)}, ...]`` in pixels (see the module doc), at most ``keep_top_k`` each.

    ``image_size`` is the (H, W) of the network input the priors were made for; ``priors``
    None takes the default ones for that size (``prior_boxes``, cached per size, device and
    dtype).
    """
    cfg = cfg or DetectConfig()
    if loc.dtype in (torch.float16, torch.bfloat16):
        loc, conf, landm = loc.float(), conf.float(), landm.float()
    bsz, device, dtype = loc.shape[0], loc.device, loc.dtype
    h, w = int(image_size[0]), int(image_size[1])
    if priors is None:
        priors = prior_boxes((h, w), device=device, dtype=dtype)
    priors = priors.to(device=device, dtype=dtype)
    v0, v1 = (float(v) for v in cfg.variances)
    top_k = int(cfg.top_k)

    # threshold and per-image top-k on the scores alone
    img, pri, cand_scores = _candidates(conf, float(cfg.confidence_threshold))
    # per image, by decreasing score (ties: lower prior index first, two stable sorts)
    order = torch.sort(cand_scores, descending=True, stable=True).indices
    order = order[torch.sort(img[order], stable=True).indices]
    img, pri, cand_scores = img[order], pri[order], cand_scores[order]
    counts = torch.bincount(img, minlength=bsz)
    rank = _rank_in_image(img, counts)
    if top_k < len(img):  # top-k per image
        sel = rank < top_k
        img, pri, cand_scores, rank = img[sel], pri[sel], cand_scores[sel], rank[sel]
        counts = counts.clamp(max=top_k)

    # decode the candidates' boxes only, scaled to pixels of the input divided by `scale`
    scale_t = torch.as_tensor(scale, dtype=dtype, device=device).reshape(-1)
    scale_t = scale_t.expand(bsz) if scale_t.numel() == 1 else scale_t
    px = torch.tensor([w, h], dtype=dtype, device=device)
    boxes = NormalizedBoxCenterDecoder(stds=(v0, v0, v1, v1))(loc[img, pri], priors[pri])
    boxes = boxes * px.repeat(2) / scale_t[img, None]

    keep = _nms_first_kept(boxes, cand_scores, img, rank, counts, cfg)
    img_k, pri_k = img[keep], pri[keep]
    points = NormalizedLandmarkCenterDecoder(stds=(v0, v0))(
        landm[img_k, pri_k].reshape(-1, 5, 2), priors[pri_k]
    )
    points = points.reshape(-1, 10) * px.repeat(5) / scale_t[img_k, None]
    boxes, kept_scores = boxes[keep], cand_scores[keep]
    per_image = torch.bincount(img_k, minlength=bsz).tolist()
    return [
        {"boxes": b, "scores": s, "landmarks": p}
        for b, s, p in zip(
            torch.split(boxes, per_image),
            torch.split(kept_scores, per_image),
            torch.split(points, per_image),
        )
    ]


def _candidates(conf: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """(image, prior, score) of the priors whose face score (softmax) is above ``threshold``,
    in (image, prior) order. The softmax runs on the candidates only: priors whose logit
    difference is clearly below ``logit(threshold)`` (by a margin far wider than float
    rounding) are dropped first, then the exact threshold applies to the softmax scores, so
    the result is that of thresholding the softmax of every prior."""
    if 0.0 < threshold < 1.0:
        c0, c1 = conf[..., 0], conf[..., 1]
        margin = 1e-3 * (1.0 + c0.abs() + c1.abs())
        pre = (c1 - c0) > (math.log(threshold) - math.log1p(-threshold)) - margin
        img, pri = torch.nonzero(pre, as_tuple=True)
    else:
        everything = torch.ones(conf.shape[:2], dtype=torch.bool, device=conf.device)
        img, pri = torch.nonzero(everything, as_tuple=True)
    scores = conf[img, pri].softmax(dim=-1)[:, 1]
    sel = scores > threshold
    return img[sel], pri[sel], scores[sel]


def _rank_in_image(img: Tensor, counts: Tensor) -> Tensor:
    """Position of each candidate among its image's (candidates sorted by image)."""
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(img), device=img.device) - starts[img]


def _nms_first_kept(
    boxes: Tensor, scores: Tensor, img: Tensor, rank: Tensor, counts: Tensor, cfg: DetectConfig
) -> Tensor:
    """Indices of the first ``keep_top_k`` boxes greedy NMS keeps in each image, sorted by image
    then decreasing score; candidates come sorted the same way.

    Greedy NMS decides a box by the kept boxes ranked above it only, so NMS of an image's
    ``m`` best candidates keeps exactly what NMS of all of them keeps among those ``m``: once it
    keeps ``keep_top_k`` of them, the rest cannot change the output. Each image starts with
    ``2 * keep_top_k`` candidates and, while it keeps fewer than ``keep_top_k`` and has more,
    grows its prefix (by the kept fraction seen, at least doubling) and runs again."""
    bsz, keep_top_k = len(counts), int(cfg.keep_top_k)
    if len(img) == 0 or keep_top_k <= 0:
        return img[:0]
    m = counts.clamp(max=max(-(-5 * keep_top_k // 4), 64))
    todo = counts > 0
    done_keep = []
    while True:
        idx = torch.nonzero(todo[img] & (rank < m[img])).flatten()
        sub_img = img[idx]
        keep = idx[_nms_groups(boxes[idx], scores[idx], sub_img, bsz, cfg)]
        kept = torch.bincount(img[keep], minlength=bsz)
        done = todo & ((kept >= keep_top_k) | (m >= counts))
        done_keep.append(keep[done[img[keep]]])
        todo &= ~done
        if not bool(todo.any()):
            break
        grow = torch.ceil(m * 1.25 * keep_top_k / kept.clamp(min=1)).long()
        m = torch.minimum(torch.maximum(grow, 2 * m), counts)
    keep = torch.sort(torch.cat(done_keep)).values
    return keep[_rank_in_image(img[keep], torch.bincount(img[keep], minlength=bsz)) < keep_top_k]


def _nms_groups(boxes: Tensor, scores: Tensor, img: Tensor, bsz: int, cfg: DetectConfig) -> Tensor:
    """``batched_nms`` over candidates sorted by image, one call per group of images whose
    candidates fit ``max_nms_boxes``; kept indices sorted ascending (= by image, then score)."""
    counts = torch.bincount(img, minlength=bsz).tolist()
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    out = []
    for a, b in _groups(counts, int(cfg.max_nms_boxes)):
        lo, hi = offsets[a], offsets[b]
        if hi > lo:
            keep = batched_nms(
                boxes[lo:hi],
                scores[lo:hi],
                img[lo:hi],
                float(cfg.nms_threshold),
                offset=float(cfg.nms_offset),
            )
            out.append(keep + lo)
    return torch.sort(torch.cat(out)).values if out else img[:0]
