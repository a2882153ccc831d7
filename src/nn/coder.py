"""Encoders and decoders (port of ``gluoncv.nn.coder``), batched.

Conventions (as GluonCV): ``samples`` are ``(B, N)`` with +1 positive, -1 negative, 0 ignore;
``matches`` are ``(B, N)`` indices into the M references, -1 for unmatched; encoders give targets
only where the sample is positive and return masks saying so. Anchors may be given once as
``(N, 4)`` (or ``(1, N, 4)``) and broadcast over the batch.

Positive-only encoding: only a few percent of a detector's anchors at most are positive, so on
CPU the encoders find the positive ``(b, n)`` with ``nonzero`` (a host sync, free there) and
encode those rows alone, with the very same elementwise operations as the dense path
(bit-identical results), into zero-initialised outputs. On CUDA the dense path (no host sync)
is the default. Force either with the ``positive_only`` constructor keyword or attribute
(``None``: by device, and dense when an input requires grad).

Additions for landmark detectors (RetinaFace): ``NormalizedLandmarkCenterEncoder`` /
``NormalizedLandmarkCenterDecoder`` encode K points relative to the anchor centre and size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .bbox import center_to_corner, corner_to_center, is_padding

__all__ = [
    "NormalizedBoxCenterEncoder",
    "NormalizedBoxCenterDecoder",
    "NormalizedPerClassBoxCenterEncoder",
    "NormalizedLandmarkCenterEncoder",
    "NormalizedLandmarkCenterDecoder",
    "MultiClassEncoder",
    "MultiClassDecoder",
    "MultiPerClassDecoder",
    "SigmoidClassEncoder",
    "CenterNetDecoder",
    "gather_matched",
]


def gather_matched(refs: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """Pick ``refs[b, matches[b, n]]`` for every ``(b, n)``; -1 matches pick row 0 (mask later).

    Args:
        refs: ``(B, M, ...)``.
        matches: ``(B, N)`` integer indices into M.

    Returns:
        ``(B, N, ...)``.
    """
    idx = matches.long().clamp(min=0)
    bsz, m = refs.shape[:2]
    trailing = refs.shape[2:]
    if m == 0:  # nothing to pick from: zeros of the right shape
        return refs.new_zeros((*idx.shape, *trailing))
    if idx.shape[0] != bsz:
        raise ValueError(
            f"batch sizes differ: refs {tuple(refs.shape)}, matches {tuple(matches.shape)}"
        )
    # one flat index_select is several times faster than gather with an expanded index
    offsets = torch.arange(bsz, device=idx.device).mul_(m).reshape(-1, *([1] * (idx.dim() - 1)))
    flat = refs.reshape(bsz * m, *trailing).index_select(0, (idx + offsets).reshape(-1))
    return flat.reshape(*idx.shape, *trailing)


def _const(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def _check_len(name: str, values: Sequence[float], n: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != n:
        raise ValueError(f"{name} needs {n} values, got {len(values)}")
    return values


def _positive_only_default(device: torch.device | str) -> bool:
    """Positive-only encoding by default where ``nonzero``'s host sync is free: on CPU."""
    return torch.device(device).type == "cpu"


def _use_positive_only(choice: bool | None, *tensors: torch.Tensor) -> bool:
    if choice is not None:
        return bool(choice)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # targets are not differentiated; keep the dense graph if asked for one
    return _positive_only_default(tensors[0].device)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """``mask.reshape(-1).nonzero()`` as ascending 1-D indices, cheap for a sparse bool mask.

    On CPU the bool bytes are read 8 at a time as int64 words: ``nonzero`` over the words, then
    over the bytes of the few non-zero words (several times faster than a plain ``nonzero``).
    """
    flat = mask.reshape(-1).contiguous()
    whole = flat.numel() // 8 * 8
    if flat.device.type != "cpu" or whole < 4096 or flat.storage_offset() % 8:
        return flat.nonzero().squeeze(1)
    words = flat[:whole].view(torch.int64).nonzero().squeeze(1)
    byte = flat[:whole].view(-1, 8).index_select(0, words).nonzero()
    keys = words.index_select(0, byte[:, 0]).mul_(8).add_(byte[:, 1])
    if whole == flat.numel():
        return keys
    return torch.cat((keys, flat[whole:].nonzero().squeeze(1).add_(whole)))


def _positives(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat keys ``b * N + n`` (ascending) of the True entries of a ``(B, N)`` mask, and b, n."""
    keys = _flat_nonzero(mask)
    n = mask.shape[1]
    b = torch.div(keys, n, rounding_mode="floor") if n else keys
    return keys, b, keys - b * n


def _matched_rows(refs: torch.Tensor, b: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """``gather_matched`` at given ``(b, match)`` pairs only: ``refs[b, max(match, 0)]``."""
    bsz, m = refs.shape[:2]
    trailing = refs.shape[2:]
    if m == 0:
        return refs.new_zeros((match.shape[0], *trailing))
    return refs.reshape(bsz * m, *trailing).index_select(0, b * m + match.long().clamp(min=0))


def _anchor_rows(
    anchors: torch.Tensor, bsz: int, n: int, b: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """Rows ``(b, idx)`` of the anchors broadcast to ``(bsz, n, 4)``: ``(N, 4)``, ``(1, N, 4)``
    or ``(B, N, 4)``."""
    a = anchors.expand(bsz, n, anchors.shape[-1])
    if bsz and a.stride(0) == 0:  # one set of anchors for the whole batch
        return a[0].index_select(0, idx)
    return a[b, idx]


def _sparse_zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Zeros for an output that stays mostly zero. On CPU the buffer comes from ``calloc``
    (``numpy.zeros``): the OS hands out zero pages lazily, so the untouched part costs neither a
    memset nor a page fault (for (32, 16,800, 10) landmark targets this halves the encoder's
    time); the tensor shares numpy's buffer, which it keeps alive (its storage cannot be
    resized). Elsewhere, or for dtypes numpy lacks, ``new_zeros``."""
    dtype = _NUMPY_DTYPES.get(like.dtype) if like.device.type == "cpu" else None
    if dtype is None:
        return like.new_zeros(shape)
    return torch.from_numpy(np.zeros(shape, dtype=dtype))


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _scatter_rows(codes: torch.Tensor, keys: torch.Tensor, bsz: int, n: int):
    """Zero ``(bsz, n, C)`` targets holding ``codes`` at the flat keys, and the 0/1 masks."""
    c = codes.shape[-1]
    targets = _sparse_zeros((bsz * n, c), codes).index_copy_(0, keys, codes)
    masks = _sparse_zeros((bsz * n, c), codes).index_fill_(0, keys, 1)
    return targets.reshape(bsz, n, c), masks.reshape(bsz, n, c)


class NormalizedBoxCenterEncoder(nn.Module):
    """Encode box targets as normalized centre offsets and log size ratios.

    ``t = ((gx - ax) / aw, (gy - ay) / ah, log(gw / aw), log(gh / ah))``, then ``(t - means) /
    stds``. Anchors and references are corner boxes.

    ``forward(samples, matches, anchors, refs)`` -> ``(targets, masks)``, both ``(B, N, 4)``;
    only positive samples have non-zero targets and masks of 1 (everything else is +0.0).

    ``positive_only``: encode only the positive rows (``None``: on CPU, see the module notes);
    both paths give bit-identical results.
    """

    def __init__(
        self,
        stds=(0.1, 0.1, 0.2, 0.2),
        means=(0.0, 0.0, 0.0, 0.0),
        positive_only: bool | None = None,
    ):
        super().__init__()
        self._stds = _check_len("stds", stds, 4)
        self._means = _check_len("means", means, 4)
        self.positive_only = positive_only

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Plain elementwise encoding of corner ``boxes`` against corner ``anchors``."""
        g = corner_to_center(boxes)
        a = corner_to_center(anchors)
        txy = (g[..., :2] - a[..., :2]) / a[..., 2:]
        twh = torch.log(g[..., 2:] / a[..., 2:])
        t = torch.cat((txy, twh), dim=-1)
        return (t - _const(self._means, t)) / _const(self._stds, t)

    # t = (ref_feature[match] - shift) * scale with ref_feature = (gx, gy, log gw, log gh),
    # shift = (ax + mx aw, ay + my ah, log aw + mw, log ah + mh),
    # scale = (1 / (sx aw), 1 / (sy ah), 1 / sw, 1 / sh). Both paths use these two helpers.
    @staticmethod
    def _ref_features(refs: torch.Tensor) -> torch.Tensor:
        g = corner_to_center(refs)
        feat = torch.cat((g[..., :2], torch.log(g[..., 2:])), dim=-1)
        return torch.where(is_padding(refs).unsqueeze(-1), torch.zeros_like(feat), feat)

    def _anchor_side(self, anchors: torch.Tensor, dtype: torch.dtype):
        a = corner_to_center(anchors.to(dtype))
        stds, means = _const(self._stds, a), _const(self._means, a)
        shift = torch.cat(
            (a[..., :2] + means[:2] * a[..., 2:], torch.log(a[..., 2:]) + means[2:]), dim=-1
        )
        scale = torch.cat(
            (1.0 / (stds[:2] * a[..., 2:]), (1.0 / stds[2:]).expand_as(a[..., 2:])), dim=-1
        )
        return shift, scale

    def forward(self, samples, matches, anchors, refs):
        feat = self._ref_features(refs)  # the M references first (cheap)
        if _use_positive_only(self.positive_only, samples, anchors, refs):
            bsz, n = matches.shape
            keys, b, idx = _positives((samples > 0.5).expand(bsz, n))
            rows = _matched_rows(feat, b, matches.reshape(-1).index_select(0, keys))
            shift, scale = self._anchor_side(_anchor_rows(anchors, bsz, n, b, idx), feat.dtype)
            return _scatter_rows((rows - shift) * scale, keys, bsz, n)
        # dense: one gather and two passes over (B, N, 4)
        shift, scale = self._anchor_side(anchors, feat.dtype)
        codecs = (gather_matched(feat, matches) - shift) * scale
        pos = (samples > 0.5).unsqueeze(-1)
        targets = torch.where(pos, codecs, codecs.new_zeros(()))
        masks = pos.expand_as(codecs).to(codecs.dtype)
        return targets, masks


class NormalizedBoxCenterDecoder(nn.Module):
    """Decode normalized centre offsets back to corner boxes (inverse of the encoder).

    Args:
        stds, means: as the encoder (GluonCV's decoder ignored ``means``; ours applies them).
        convert_anchor: anchors are corner boxes (True) or centre boxes (False, GluonCV default).
        clip: if given, the log size ratio is clamped to at most ``clip`` before ``exp``
            (``clip=0`` clips too; GluonCV treated 0 as "no clip").
        minimal_opset: accepted for GluonCV compatibility; the decoder only uses basic ops.

    Argument order follows the GluonCV documentation (``stds, means, convert_anchor, clip``);
    GluonCV's code has no ``means`` argument, so pass the others by keyword.

    ``forward(x, anchors)``: ``x`` ``(B, N, 4)``, anchors ``(B, N, 4)`` or ``(N, 4)``; returns
    ``(B, N, 4)`` corner boxes. ONNX-exportable.
    """

    def __init__(
        self,
        stds=(0.1, 0.1, 0.2, 0.2),
        means=(0.0, 0.0, 0.0, 0.0),
        convert_anchor: bool = False,
        clip: float | None = None,
        minimal_opset: bool = False,
    ):
        super().__init__()
        self._stds = _check_len("stds", stds, 4)
        self._means = _check_len("means", means, 4)
        self._convert_anchor = convert_anchor
        self._clip = clip

    def forward(self, x, anchors):
        a = corner_to_center(anchors) if self._convert_anchor else anchors
        p = x * _const(self._stds, x) + _const(self._means, x)
        cxy = p[..., :2] * a[..., 2:] + a[..., :2]
        dwh = p[..., 2:]
        if self._clip is not None:
            dwh = dwh.clamp(max=self._clip)
        wh = torch.exp(dwh) * a[..., 2:]
        return center_to_corner(torch.cat((cxy, wh), dim=-1))


class NormalizedPerClassBoxCenterEncoder(nn.Module):
    """Per-class box targets for the positive samples (R-CNN box heads).

    ``forward(samples, matches, anchors, labels, refs)`` with ``labels`` ``(B, M)`` class ids of
    the references in ``[0, num_class)``. Returns ``(targets, masks, indices)``:
    ``targets``/``masks`` ``(B, max_pos, num_class, 4)`` and ``indices`` ``(B, max_pos)``, the
    anchor indices of the (up to ``max_pos``) positive samples in ascending order, padded with
    non-positive anchors whose masks are 0. Only the matched class has mask 1.

    ``per_device_batch_size`` is accepted for GluonCV compatibility; the batch size is read from
    the inputs (GluonCV looped over it). ``positive_only`` is passed to the class-agnostic
    encoder.
    """

    def __init__(
        self,
        num_class: int,
        max_pos: int = 128,
        per_device_batch_size: int = 1,
        stds=(0.1, 0.1, 0.2, 0.2),
        means=(0.0, 0.0, 0.0, 0.0),
        positive_only: bool | None = None,
    ):
        super().__init__()
        if num_class <= 0:
            raise ValueError("Number of classes must be positive")
        self._num_class = num_class
        self._max_pos = max_pos
        self.class_agnostic_encoder = NormalizedBoxCenterEncoder(
            stds=stds, means=means, positive_only=positive_only
        )

    def forward(self, samples, matches, anchors, labels, refs):
        targets, masks = self.class_agnostic_encoder(samples, matches, anchors, refs)
        # positives first, in ascending anchor order (stable sort)
        order = torch.sort(
            (samples > 0.5).to(torch.uint8), dim=1, descending=True, stable=True
        ).indices
        k = min(self._max_pos, order.shape[1])
        indices = order[:, :k]
        targets = gather_matched(targets, indices)  # (B, K, 4)
        masks = gather_matched(masks, indices)
        # labels of the K selected anchors only
        ref_labels = gather_matched(labels.unsqueeze(-1), matches.gather(1, indices)).squeeze(-1)
        classes = torch.arange(self._num_class, device=labels.device)
        same_cid = ref_labels.unsqueeze(-1).long() == classes  # (B, K, C)
        all_targets = targets.unsqueeze(2).expand(-1, -1, self._num_class, -1)
        all_masks = masks.unsqueeze(2) * same_cid.unsqueeze(-1).to(masks.dtype)
        return all_targets, all_masks, indices


class NormalizedLandmarkCenterEncoder(nn.Module):
    """Encode K landmark points relative to the anchor centre, normalized by anchor size.

    ``t_k = ((px_k - ax) / aw, (py_k - ay) / ah)``, then ``(t - means) / stds`` (RetinaFace uses
    ``stds=(0.1, 0.1)``: the box variance 0.1 on both coordinates).

    ``forward(samples, matches, anchors, refs)``: corner anchors ``(B, N, 4)`` or ``(N, 4)``;
    ``refs`` ``(B, M, K, 2)`` or ``(B, M, 2K)``. Returns ``(targets, masks)`` shaped like the
    matched refs ``(B, N, K, 2)`` / ``(B, N, 2K)``. Masks are 1 only for positive samples whose
    matched reference has landmarks; a reference whose points are all -1 has none (the WIDER
    FACE convention), so its anchors are excluded from the landmark loss.

    ``positive_only``: encode only those rows (``None``: on CPU, see the module notes); both
    paths give bit-identical results.
    """

    def __init__(self, stds=(0.1, 0.1), means=(0.0, 0.0), positive_only: bool | None = None):
        super().__init__()
        self._stds = _check_len("stds", stds, 2)
        self._means = _check_len("means", means, 2)
        self.positive_only = positive_only

    def encode(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Encode ``(..., K, 2)`` points against ``(..., 4)`` corner anchors."""
        a = corner_to_center(anchors).unsqueeze(-2)  # (..., 1, 4)
        t = (points - a[..., :2]) / a[..., 2:]
        return (t - _const(self._means, t)) / _const(self._stds, t)

    def _anchor_side(self, anchors: torch.Tensor, dtype: torch.dtype):
        # per anchor: t = (p - shift) * scale, shift = a_xy + means * a_wh,
        # scale = 1 / (stds * a_wh); the same for each of the K points
        a = corner_to_center(anchors.to(dtype))
        stds, means = _const(self._stds, a), _const(self._means, a)
        return a[..., :2] + means * a[..., 2:], 1.0 / (stds * a[..., 2:])

    def forward(self, samples, matches, anchors, refs):
        flat = refs.dim() == 3
        pts = refs.flatten(2) if not flat else refs  # (B, M, 2K)
        num_points = pts.shape[-1] // 2
        has_landmarks = ~(pts == -1).all(dim=-1)  # (B, M)
        if _use_positive_only(self.positive_only, samples, anchors, refs):
            bsz, n = matches.shape
            m = pts.shape[1]
            keys, b, idx = _positives((samples > 0.5).expand(bsz, n))
            match = matches.reshape(-1).index_select(0, keys)
            keep = match >= 0
            if m:  # matched to a reference with landmarks (none to match if M = 0)
                rows = b * m + match.clamp(min=0)
                keep &= has_landmarks.reshape(-1).index_select(0, rows)
            else:
                rows, keep = match, torch.zeros_like(keep)
            keys, b, idx, rows = keys[keep], b[keep], idx[keep], rows[keep]
            shift, scale = self._anchor_side(_anchor_rows(anchors, bsz, n, b, idx), pts.dtype)
            p = pts.reshape(bsz * m, pts.shape[-1]).index_select(0, rows)
            p = p.unflatten(-1, (num_points, 2))
            codes = (p - shift.unsqueeze(-2)) * scale.unsqueeze(-2)
            targets, masks = _scatter_rows(codes.flatten(-2), keys, bsz, n)
        else:
            valid = gather_matched(has_landmarks, matches)  # (B, N)
            shift, scale = self._anchor_side(anchors, pts.dtype)
            shift = shift.repeat(*([1] * (shift.dim() - 1)), num_points)  # tiled over K
            scale = scale.repeat(*([1] * (scale.dim() - 1)), num_points)
            codecs = (gather_matched(pts, matches) - shift) * scale  # (B, N, 2K)
            keep = ((samples > 0.5) & valid & (matches >= 0)).unsqueeze(-1)
            targets = torch.where(keep, codecs, codecs.new_zeros(()))
            masks = keep.expand_as(codecs).to(codecs.dtype)
        if not flat:
            targets = targets.unflatten(-1, (num_points, 2))
            masks = masks.unflatten(-1, (num_points, 2))
        return targets, masks


class NormalizedLandmarkCenterDecoder(nn.Module):
    """Decode landmark offsets back to points (inverse of ``NormalizedLandmarkCenterEncoder``).

    ``forward(x, anchors)``: ``x`` ``(B, N, K, 2)`` or ``(B, N, 2K)``; anchors centre boxes unless
    ``convert_anchor`` (then corner), ``(B, N, 4)`` or ``(N, 4)``. Output has the shape of ``x``.
    ONNX-exportable.
    """

    def __init__(self, stds=(0.1, 0.1), means=(0.0, 0.0), convert_anchor: bool = False):
        super().__init__()
        self._stds = _check_len("stds", stds, 2)
        self._means = _check_len("means", means, 2)
        self._convert_anchor = convert_anchor

    def forward(self, x, anchors):
        a = corner_to_center(anchors) if self._convert_anchor else anchors
        a = a.unsqueeze(-2)
        shape = x.shape
        p = x.reshape(*shape[:-1], -1, 2) if shape[-1] != 2 else x
        p = p * _const(self._stds, p) + _const(self._means, p)
        out = p * a[..., 2:] + a[..., :2]
        return out.reshape(shape)


class MultiClassEncoder(nn.Module):
    """Class targets: matched ground-truth label + 1 for positives, 0 for negatives,
    ``ignore_label`` for ignored samples.

    ``forward(samples, matches, refs)`` with ``refs`` ``(B, M)`` labels in
    ``[0, num_fg_class)``; returns ``(B, N)`` targets with the dtype of ``refs``.
    ``positive_only``: look up the labels of the positive samples only (``None``: on CPU).
    """

    def __init__(self, ignore_label: float = -1, positive_only: bool | None = None):
        super().__init__()
        self._ignore_label = ignore_label
        self.positive_only = positive_only

    def forward(self, samples, matches, refs):
        if _use_positive_only(self.positive_only, samples, refs):
            keys, b, _ = _positives((samples > 0.5).expand(matches.shape))
            ids = _matched_rows(refs, b, matches.reshape(-1).index_select(0, keys)) + 1
            targets = ids.new_full(matches.shape, self._ignore_label)
            targets.masked_fill_(samples < -0.5, 0)
            targets.view(-1).index_copy_(0, keys, ids)
            return targets
        target_ids = gather_matched(refs.unsqueeze(-1), matches).squeeze(-1) + 1
        targets = torch.where(
            samples > 0.5, target_ids, torch.full_like(target_ids, self._ignore_label)
        )
        return torch.where(samples < -0.5, torch.zeros_like(targets), targets)


class MultiClassDecoder(nn.Module):
    """Best foreground class per anchor from post-softmax scores (class 0 = background).

    Returns ``(cls_id, scores)``: ``cls_id`` in ``[0, num_fg_class)`` or -1 where the score is
    not above ``thresh`` (its score is then 0). ONNX-exportable.
    """

    def __init__(self, axis: int = -1, thresh: float = 0.01):
        super().__init__()
        self._axis = axis
        self._thresh = thresh

    def forward(self, x):
        pos_x = x.narrow(self._axis, 1, x.shape[self._axis] - 1)
        scores, cls_id = pos_x.max(dim=self._axis)
        mask = scores > self._thresh
        cls_id = torch.where(mask, cls_id, torch.full_like(cls_id, -1))
        scores = torch.where(mask, scores, torch.zeros_like(scores))
        return cls_id, scores


class MultiPerClassDecoder(nn.Module):
    """Every foreground class per anchor from post-softmax scores (class 0 = background).

    ``num_class`` includes the background. Returns ``(cls_id, scores)`` of shape
    ``(..., num_class - 1)``; entries not above ``thresh`` get id -1 and score 0.
    ONNX-exportable.
    """

    def __init__(self, num_class: int, axis: int = -1, thresh: float = 0.01):
        super().__init__()
        self._fg_class = num_class - 1
        self._axis = axis
        self._thresh = thresh

    def forward(self, x):
        scores = x.narrow(self._axis, 1, self._fg_class).movedim(self._axis, -1)
        cls_id = torch.arange(self._fg_class, device=x.device).expand(scores.shape)
        mask = scores > self._thresh
        cls_id = torch.where(mask, cls_id, torch.full_like(cls_id, -1))
        scores = torch.where(mask, scores, torch.zeros_like(scores))
        return cls_id, scores


class SigmoidClassEncoder(nn.Module):
    """Targets for sigmoid cross-entropy from samples (+1 pos, -1 neg, 0 ignore).

    Returns ``(target, mask)``: target 1 positive, 0 negative, -1 ignore; mask 0 for ignored.
    """

    def forward(self, samples):
        samples = (
            samples.to(torch.get_default_dtype()) if not samples.is_floating_point() else samples
        )
        target = (samples + 1) / 2
        ignore = samples.abs() < 1e-5
        target = torch.where(ignore, torch.full_like(target, -1), target)
        mask = (~ignore).to(samples.dtype)
        return target, mask


class CenterNetDecoder(nn.Module):
    """CenterNet decoding: the ``topk`` best heatmap peaks to boxes.

    ``forward(x, wh, reg)``: ``x`` ``(B, C, H, W)`` heatmap scores (after sigmoid and the
    max-pool peak filter), ``wh`` and ``reg`` ``(B, 2, H, W)`` box sizes and centre offsets in
    output-map units. Returns ``(classes, scores, boxes)``: ``(B, K)`` int64 class ids,
    ``(B, K)`` scores (decreasing) and ``(B, K, 4)`` corner boxes scaled by ``scale`` to input
    pixels, with ``K = min(topk, C * H * W)``. ONNX-exportable.
    """

    def __init__(self, topk: int = 100, scale: float = 4.0):
        super().__init__()
        self._topk = topk
        self._scale = scale

    def forward(self, x, wh, reg):
        b, c, h, w = x.shape
        k = min(self._topk, c * h * w)
        scores, indices = x.reshape(b, -1).topk(k, dim=1)
        classes = torch.div(indices, h * w, rounding_mode="floor")
        pix = indices - classes * (h * w)
        ys = torch.div(pix, w, rounding_mode="floor")
        xs = pix - ys * w
        idx = pix.unsqueeze(1).expand(-1, 2, -1)
        off = torch.gather(reg.reshape(b, 2, -1), 2, idx)  # (B, 2, K)
        size = torch.gather(wh.reshape(b, 2, -1), 2, idx)
        cx = xs.to(x.dtype) + off[:, 0]
        cy = ys.to(x.dtype) + off[:, 1]
        half_w = size[:, 0] / 2
        half_h = size[:, 1] / 2
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
        return classes, scores, boxes * self._scale
