"""Samplers: choose positive / negative / ignored anchors (port of ``gluoncv.nn.sampler``).

Output convention: a tensor shaped like the matches, +1 positive, -1 negative, 0 ignore (same
dtype as the matches when they are floating point, else float32). Everything is batched: quotas
are computed per image as ``(B,)`` tensors and applied with one sort over the batch, so there is
no Python loop over images and no host synchronisation.

Additions: ``HardNegativeSampler`` (SSD/RetinaFace hard negative mining from per-anchor losses,
e.g. 7:1) and the helper ``select_top_k``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .sparse import SparseIOU

__all__ = [
    "NaiveSampler",
    "OHEMSampler",
    "QuotaSampler",
    "HardNegativeSampler",
    "select_top_k",
]


def select_top_k(scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per row, select the ``k[b]`` eligible entries with the highest score.

    Ties go to the lower index; ineligible entries are never selected (even if ``k`` exceeds the
    number of eligible entries); NaN or -inf scores of eligible entries rank last among them.

    Args:
        scores: ``(B, N)`` floats.
        eligible: ``(B, N)`` bool.
        k: ``(B,)`` integer quota per row (or a Python int).

    Returns:
        ``(B, N)`` bool mask with ``min(k[b], eligible[b].sum())`` True entries per row.
    """
    if scores.shape[-1] == 0:
        return torch.zeros_like(eligible)
    lowest = torch.finfo(scores.dtype).min
    key = torch.nan_to_num(scores, nan=lowest, posinf=torch.finfo(scores.dtype).max, neginf=lowest)
    k = torch.as_tensor(k, device=scores.device)
    if k.dim() > 0:
        k = k.unsqueeze(-1)
    if scores.device.type == "cpu" and scores.dtype in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ):
        return _select_top_k_packed(key, eligible, k)
    key = torch.where(eligible, key, torch.full_like(key, float("-inf")))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    ar = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, ar)
    return eligible & (rank < k)


def _select_top_k_packed(key: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor):
    """``select_top_k`` for finite float32-representable keys via one partial ``topk``.

    Each key becomes an int64 ``(order-preserving bits of the float32 score) << 32 | (N - 1 -
    index)``, so the integer order is (score desc, index asc) exactly, ties included. The size
    of the ``topk`` is read on the host, which is free on CPU (the only device it runs on).
    """
    n = key.shape[-1]
    kmax = int(torch.as_tensor(k).clamp(max=n).max()) if k.numel() else 0
    if kmax <= 0:
        return torch.zeros_like(eligible)
    # in place where possible: fresh (B, N) int64 buffers cost page faults on CPU
    # key is select_top_k's own (nan_to_num made it): + 0.0 in place turns -0 into +0
    bits = key.float().add_(0.0).view(torch.int32).to(torch.int64)
    negative = bits < 0
    if bool(negative.any()):  # monotone for negative floats
        bits[negative] ^= 0x7FFFFFFF
    idx = torch.arange(n - 1, -1, -1, dtype=torch.int64, device=key.device)
    packed = bits.bitwise_left_shift_(32).bitwise_or_(idx)
    packed.masked_fill_(~eligible, torch.iinfo(torch.int64).min)
    top = packed.topk(kmax, dim=-1).indices  # sorted by (score desc, index asc)
    in_quota = torch.arange(kmax, device=key.device) < k
    chosen = torch.zeros_like(eligible).scatter_(-1, top, in_quota.expand_as(top))
    return chosen & eligible


def background_loss(logits: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)[..., 0]``, the cross-entropy of calling each anchor background.

    Two classes: ``softplus(x1 - x0)``, elementwise (a log-softmax over a last dim of 2 is
    several times slower on CPU); otherwise the log-softmax.
    """
    if logits.shape[-1] == 2:  # softplus is x itself beyond threshold, to the dtype's precision
        threshold = 40.0 if logits.dtype == torch.float64 else 20.0
        return torch.nn.functional.softplus(logits[..., 1] - logits[..., 0], threshold=threshold)
    return torch.log_softmax(logits, dim=-1)[..., 0].neg()


def _out(matches: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    dtype = matches.dtype if matches.is_floating_point() else torch.float32
    out = torch.zeros(matches.shape, dtype=dtype, device=matches.device)
    return out.masked_fill_(neg, -1.0).masked_fill_(pos, 1.0)


def _max_iou(ious, like: torch.Tensor, owner: str = "", **thresholds) -> torch.Tensor:
    """Each anchor's best IoU from ``(B, N, M)`` IoU, ``(B, N)`` maxima or a ``SparseIOU``
    (whose ``thresholds`` are checked to compare exactly)."""
    if isinstance(ious, SparseIOU):
        for name, value in thresholds.items():
            ious.check_threshold(owner, name, value)
        return ious.max()
    if ious.dim() == like.dim() + 1:
        if ious.shape[-1] == 0:  # no ground truth at all
            return torch.full(like.shape, -1.0, dtype=ious.dtype, device=ious.device)
        return ious.max(dim=-1).values
    return ious


def _ratio_count(count: torch.Tensor, ratio: float) -> torch.Tensor:
    # floor(ratio * count), in float64 so 7 * 3 is exactly 21
    return torch.floor(count.to(torch.float64) * ratio).to(torch.long)


class NaiveSampler(nn.Module):
    """All matched anchors are positive, all others negative; nothing ignored."""

    def forward(self, x):
        pos = x >= 0
        return _out(x, pos, ~pos)


class OHEMSampler(nn.Module):
    """Online hard negative mining (https://arxiv.org/abs/1604.03540), batched.

    Per image: positives are the matched anchors (``x >= 0``); ``num_neg = min(max(min_samples,
    floor(ratio * num_pos)), N - num_pos)`` negatives are the unmatched anchors whose best IoU is
    below ``thresh`` with the largest background cross-entropy ``-log softmax(logits)[..., 0]``.

    ``forward(x, logits, ious)``: matches ``(B, N)``, logits ``(B, N, C)`` (class 0 =
    background), ious ``(B, N, M)``, ``(B, N)`` or a ``SparseIOU``.

    Deviation from GluonCV: when fewer unmatched anchors pass ``thresh`` than ``num_neg``,
    GluonCV filled the rest with masked anchors, even overwriting positives with -1; here only
    eligible anchors become negatives.
    """

    def __init__(self, ratio: float, min_samples: int = 0, thresh: float = 0.5):
        super().__init__()
        if ratio <= 0:
            raise ValueError(f"OHEMSampler ratio must > 0, {ratio} given")
        self._ratio = ratio
        self._min_samples = min_samples
        self._thresh = thresh

    def forward(self, x, logits, ious):
        with torch.no_grad():
            pos = x >= 0
            num_pos = pos.sum(dim=-1)
            num_neg = _ratio_count(num_pos, self._ratio).clamp(min=self._min_samples)
            num_neg = torch.minimum(num_neg, x.shape[-1] - num_pos)
            score = background_loss(logits.detach())
            best = _max_iou(ious, x, "OHEMSampler", thresh=self._thresh)
            eligible = ~pos & (best < self._thresh)
            neg = select_top_k(score, eligible, num_neg)
        return _out(x, pos, neg)


class HardNegativeSampler(nn.Module):
    """Hard negative mining from per-anchor losses (SSD, RetinaFace ``negpos_ratio=7``).

    Per image: positives are ``matches >= 0``; the ``min(max(min_samples, floor(ratio *
    num_pos)), N - num_pos)`` unmatched anchors (restricted to ``valid`` when given) with the
    largest ``losses`` become negatives; everything else is ignored.

    ``forward(matches, losses, valid=None)``: ``losses`` ``(B, N)``, e.g. the background
    cross-entropy of each anchor (detached here); ``valid`` ``(B, N)`` bool marks anchors allowed
    to be negatives (e.g. not ignored).
    """

    def __init__(self, ratio: float = 3.0, min_samples: int = 0):
        super().__init__()
        if ratio <= 0:
            raise ValueError(f"HardNegativeSampler ratio must > 0, {ratio} given")
        self._ratio = ratio
        self._min_samples = min_samples

    def forward(self, matches, losses, valid=None):
        with torch.no_grad():
            pos = matches >= 0
            num_pos = pos.sum(dim=-1)
            num_neg = _ratio_count(num_pos, self._ratio).clamp(min=self._min_samples)
            num_neg = torch.minimum(num_neg, matches.shape[-1] - num_pos)
            eligible = ~pos if valid is None else ~pos & valid.bool()
            neg = select_top_k(losses.detach(), eligible, num_neg)
        return _out(matches, pos, neg)


class QuotaSampler(nn.Module):
    """Random sampling under positive / negative quotas (R-CNN), batched.

    Per image: positives are matched anchors or those with best IoU ``>= pos_thresh``;
    negatives are the remaining anchors with best IoU in ``[neg_thresh_low, neg_thresh_high)``.
    At most ``round(pos_ratio * num_sample)`` positives and ``int(neg_ratio * num_sample)``
    negatives are kept, chosen uniformly at random; with ``fill_negative`` the negative quota of
    an image grows to ``num_sample - kept positives`` when positives are scarce. Dropped samples
    become 0 (ignore).

    ``forward(matches, ious)``: matches ``(B, N)``, ious ``(B, N, M)``, ``(B, N)`` maxima or a
    ``SparseIOU``.

    Deviations from GluonCV: ``neg_ratio`` given explicitly works (GluonCV raised
    AttributeError); the filled negative quota is computed per image (GluonCV carried one image's
    quota over to the next images of the batch); a positive is never also a negative.
    ``generator`` makes the random choice reproducible.
    """

    def __init__(
        self,
        num_sample: int,
        pos_thresh: float,
        neg_thresh_high: float,
        neg_thresh_low: float = -math.inf,
        pos_ratio: float = 0.5,
        neg_ratio: float | None = None,
        fill_negative: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self._num_sample = int(num_sample)
        self._fill_negative = fill_negative
        self._pos_ratio = float(pos_ratio)
        self._neg_ratio = 1.0 - self._pos_ratio if neg_ratio is None else float(neg_ratio)
        if self._neg_ratio + self._pos_ratio > 1.0 + 1e-12:
            raise ValueError(
                f"Positive and negative ratio {self._pos_ratio + self._neg_ratio} exceed 1"
            )
        self._pos_thresh = min(1.0, max(0.0, pos_thresh))
        self._neg_thresh_high = min(1.0, max(0.0, neg_thresh_high))
        self._neg_thresh_low = neg_thresh_low
        self._generator = generator

    def forward(self, matches, ious):
        with torch.no_grad():
            ious_max = _max_iou(
                ious,
                matches,
                "QuotaSampler",
                pos_thresh=self._pos_thresh,
                neg_thresh_high=self._neg_thresh_high,
                neg_thresh_low=self._neg_thresh_low,
            )
            pos = (matches >= 0) | (ious_max >= self._pos_thresh)
            neg = ~pos & (ious_max < self._neg_thresh_high) & (ious_max >= self._neg_thresh_low)
            max_pos = int(round(self._pos_ratio * self._num_sample))
            max_neg = int(self._neg_ratio * self._num_sample)
            keys = torch.rand(
                matches.shape,
                generator=self._generator,
                device=matches.device if self._generator is None else self._generator.device,
            ).to(matches.device)
            pos = select_top_k(keys, pos, max_pos)
            if self._fill_negative:
                num_pos = pos.sum(dim=-1)
                neg_quota = (self._num_sample - num_pos).clamp(min=max_neg)
            else:
                neg_quota = max_neg
            neg = select_top_k(keys, neg, neg_quota)
        return _out(matches, pos, neg)
