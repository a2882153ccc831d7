"""Encoders and decoders (port of ``gluoncv.nn.coder``), batched.

Conventions (as GluonCV): ``samples`` are ``(B, N)`` with +1 positive, -1 negative, 0 ignore;
``matches`` are ``(B, N)`` indices into the M references, -1 for unmatched; encoders give targets
only where the sample is positive and return masks saying so. Anchors may be given once as
``(N, 4)`` (or ``(1, N, 4)``) and broadcast over the batch.

Additions for landmark detectors (RetinaFace): ``NormalizedLandmarkCenterEncoder`` /
``NormalizedLandmarkCenterDecoder`` encode K points relative to the anchor centre and size.
"""
from __future__ import annotations

from collections.abc import Sequence

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
        raise ValueError(f"batch sizes differ: refs {tuple(refs.shape)}, matches "
                         f"{tuple(matches.shape)}")
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


class NormalizedBoxCenterEncoder(nn.Module):
    """Encode box targets as normalized centre offsets and log size ratios.

    ``t = ((gx - ax) / aw, (gy - ay) / ah, log(gw / aw), log(gh / ah))``, then ``(t - means) /
    stds``. Anchors and references are corner boxes.

    ``forward(samples, matches, anchors, refs)`` -> ``(targets, masks)``, both ``(B, N, 4)``;
    only positive samples have non-zero targets and masks of 1.
    """

    def __init__(self, stds=(0.1, 0.1, 0.2, 0.2), means=(0.0, 0.0, 0.0, 0.0)):
        super().__init__()
        self._stds = _check_len("stds", stds, 4)
        self._means = _check_len("means", means, 4)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Plain elementwise encoding of corner ``boxes`` against corner ``anchors``."""
        g = corner_to_center(boxes)
        a = corner_to_center(anchors)
        txy = (g[..., :2] - a[..., :2]) / a[..., 2:]
        twh = torch.log(g[..., 2:] / a[..., 2:])
        t = torch.cat((txy, twh), dim=-1)
        return (t - _const(self._means, t)) / _const(self._stds, t)

    def forward(self, samples, matches, anchors, refs):
        # Work on the M references first (cheap), then one gather and two passes over (B, N, 4):
        # t = (ref_feature[match] - shift) * scale with ref_feature = (gx, gy, log gw, log gh),
        # shift = (ax + mx aw, ay + my ah, log aw + mw, log ah + mh),
        # scale = (1 / (sx aw), 1 / (sy ah), 1 / sw, 1 / sh).
        g = corner_to_center(refs)
        feat = torch.cat((g[..., :2], torch.log(g[..., 2:])), dim=-1)
        feat = torch.where(is_padding(refs).unsqueeze(-1), torch.zeros_like(feat), feat)
        a = corner_to_center(anchors.to(feat.dtype))
        stds, means = _const(self._stds, a), _const(self._means, a)
        shift = torch.cat((a[..., :2] + means[:2] * a[..., 2:],
                           torch.log(a[..., 2:]) + means[2:]), dim=-1)
        scale = torch.cat((1.0 / (stds[:2] * a[..., 2:]),
                           (1.0 / stds[2:]).expand_as(a[..., 2:])), dim=-1)
        codecs = (gather_matched(feat, matches) - shift) * scale
        pos = (samples > 0.5).unsqueeze(-1)
        targets = codecs * pos  # the reference side is finite, so non-positives are exactly 0
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

    def __init__(self, stds=(0.1, 0.1, 0.2, 0.2), means=(0.0, 0.0, 0.0, 0.0),
                 convert_anchor: bool = False, clip: float | None = None,
                 minimal_opset: bool = False):
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
    the inputs (GluonCV looped over it).
    """

    def __init__(self, num_class: int, max_pos: int = 128, per_device_batch_size: int = 1,
                 stds=(0.1, 0.1, 0.2, 0.2), means=(0.0, 0.0, 0.0, 0.0)):
        super().__init__()
        if num_class <= 0:
            raise ValueError("Number of classes must be positive")
        self._num_class = num_class
        self._max_pos = max_pos
        self.class_agnostic_encoder = NormalizedBoxCenterEncoder(stds=stds, means=means)

    def forward(self, samples, matches, anchors, labels, refs):
        targets, masks = self.class_agnostic_encoder(samples, matches, anchors, refs)
        ref_labels = gather_matched(labels.unsqueeze(-1), matches).squeeze(-1)  # (B, N)
        classes = torch.arange(self._num_class, device=labels.device)
        same_cid = ref_labels.unsqueeze(-1).long() == classes  # (B, N, C)
        # positives first, in ascending anchor order (stable sort)
        order = torch.sort(masks[..., 0], dim=1, descending=True, stable=True).indices
        k = min(self._max_pos, order.shape[1])
        indices = order[:, :k]
        targets = gather_matched(targets, indices)  # (B, K, 4)
        masks = gather_matched(masks, indices)
        same_cid = gather_matched(same_cid, indices)  # (B, K, C)
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
    """

    def __init__(self, stds=(0.1, 0.1), means=(0.0, 0.0)):
        super().__init__()
        self._stds = _check_len("stds", stds, 2)
        self._means = _check_len("means", means, 2)

    def encode(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Encode ``(..., K, 2)`` points against ``(..., 4)`` corner anchors."""
        a = corner_to_center(anchors).unsqueeze(-2)  # (..., 1, 4)
        t = (points - a[..., :2]) / a[..., 2:]
        return (t - _const(self._means, t)) / _const(self._stds, t)

    def forward(self, samples, matches, anchors, refs):
        flat = refs.dim() == 3
        pts = refs.flatten(2) if not flat else refs  # (B, M, 2K)
        num_points = pts.shape[-1] // 2
        has_landmarks = ~(pts == -1).all(dim=-1)  # (B, M)
        valid = gather_matched(has_landmarks, matches)  # (B, N)
        # per anchor: t = (p - shift) * scale, shift = a_xy + means * a_wh,
        # scale = 1 / (stds * a_wh); tiled over the K points
        a = corner_to_center(anchors.to(pts.dtype))
        stds, means = _const(self._stds, a), _const(self._means, a)
        shift = a[..., :2] + means * a[..., 2:]
        shift = shift.repeat(*([1] * (shift.dim() - 1)), num_points)
        scale = (1.0 / (stds * a[..., 2:])).repeat(*([1] * (a.dim() - 1)), num_points)
        codecs = (gather_matched(pts, matches) - shift) * scale  # (B, N, 2K)
        keep = ((samples > 0.5) & valid & (matches >= 0)).unsqueeze(-1)
        targets = codecs * keep
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
    """

    def __init__(self, ignore_label: float = -1):
        super().__init__()
        self._ignore_label = ignore_label

    def forward(self, samples, matches, refs):
        target_ids = gather_matched(refs.unsqueeze(-1), matches).squeeze(-1) + 1
        targets = torch.where(samples > 0.5, target_ids,
                              torch.full_like(target_ids, self._ignore_label))
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
        samples = samples.to(torch.get_default_dtype()) if not samples.is_floating_point() \
            else samples
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
