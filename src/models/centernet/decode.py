"""CenterNet decoding, batched and vectorised (no Python loop over images or boxes).

``decode`` (ONNX-exportable; the reference's ``kp_utils._decode``), on the last stack's maps:

1. sigmoid heatmaps, 3 x 3 max-pool peak NMS (a value survives where it equals its window max);
2. top-K (K=70) corners of each kind over all classes and positions, top-K centers;
3. every top-left x bottom-right pair (K x K): positions + gathered offsets, score = the mean of
   the two corner scores; a pair is rejected (score -1) when the classes differ, when
   ``|tag_tl - tag_br| > ae_threshold`` (0.5), or when the box is inverted (``br_x < tl_x`` or
   ``br_y < tl_y``);
4. the ``num_dets`` (1000) best pairs.

``postprocess`` (the reference's test/coco.py ``kp_detection``, single scale), on ``decode``'s
output for a batch (and, with ``flip``, its mirrored copy as the second half of the batch):

1. map to original pixels: output map -> input pixels (``/ (out / in)``), the mirrored half's x
   flipped (``x -> W_out - x``), then letterbox undone (``(v - pad) / scale``); boxes reaching 5
   px or more outside the image are rejected, then boxes and centers are clipped to it;
2. triplet filter: the central region of a box is its middle third (``n = 3``) when its area is
   at most 150 x 150 = 22500 original px, its middle fifth (``n = 5``) above; a box is kept only
   when a center keypoint of the same class lies strictly inside, its score becoming
   ``(2 * box + center) / 3`` with the first such center in the reference's order (the
   original image's top-K by score, then the mirrored image's);
3. per-class soft-NMS (``soft_nms_batched``: Gaussian, the reference's ``method=2``, sigma 0.5,
   ``Nt`` 0.5 for methods 0 / 1, +1 box areas, score floor 0.001), then the ``max_per_image``
   (100) best boxes of each image.

Reference difference: the reference's Cython ``soft_nms`` returns the kept indices, which the
test script ignores, so boxes whose score fell below the floor leave stale duplicates in the
array that is scored; here a box under the floor is gone (the Soft-NMS paper's algorithm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DecodeConfig", "decode", "postprocess", "soft_nms_batched", "peak_nms"]


@dataclass(frozen=True)
class DecodeConfig:
    top_k: int = 70
    kernel: int = 3
    ae_threshold: float = 0.5
    num_dets: int = 1000
    flip: bool = True
    small_area: float = 22500.0  # 150 x 150 original px: n=3 up to it, n=5 above
    border: float = 5.0  # boxes reaching this far outside the image are rejected
    nms_method: int = 2  # 0 hard, 1 linear, 2 gaussian (the reference's numbering)
    nms_threshold: float = 0.5  # Nt (methods 0 and 1)
    nms_sigma: float = 0.5
    score_floor: float = 0.001
    nms_offset: float = 1.0
    max_per_image: int = 100


def peak_nms(heat: Tensor, kernel: int = 3) -> Tensor:
    """Keep the values equal to their ``kernel`` x ``kernel`` window maximum, zero the rest."""
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (hmax == heat).to(heat.dtype)


def _topk(heat: Tensor, k: int):
    b, c, h, w = heat.shape
    scores, inds = heat.reshape(b, -1).topk(k, dim=1)
    classes = torch.div(inds, h * w, rounding_mode="floor")
    pix = inds - classes * (h * w)
    ys = torch.div(pix, w, rounding_mode="floor")
    xs = pix - ys * w
    return scores, pix, classes, ys.to(heat.dtype), xs.to(heat.dtype)


def _gather(feat: Tensor, pix: Tensor) -> Tensor:
    """(B, D, H, W) map at flat positions (B, K) -> (B, K, D)."""
    b, d = feat.shape[:2]
    return (
        feat.reshape(b, d, -1).gather(2, pix[:, None, :].expand(b, d, pix.shape[1])).transpose(1, 2)
    )


def decode(out: dict[str, Tensor], cfg: DecodeConfig = DecodeConfig()) -> dict[str, Tensor]:
    """Corner pairs and centers from one stack's maps (see the module docstring).

    Returns ``boxes`` (B, D, 4) in output-map units, ``scores`` (B, D) (-1 = rejected pair),
    ``tl_scores``, ``br_scores`` (B, D), ``classes`` (B, D) int64; ``centers`` (B, K, 2),
    ``ct_scores`` (B, K), ``ct_classes`` (B, K) int64. D = min(num_dets, K * K)."""
    tl_heat = peak_nms(torch.sigmoid(out["tl_heat"]), cfg.kernel)
    br_heat = peak_nms(torch.sigmoid(out["br_heat"]), cfg.kernel)
    ct_heat = peak_nms(torch.sigmoid(out["ct_heat"]), cfg.kernel)
    b, c, h, w = tl_heat.shape
    k = min(cfg.top_k, c * h * w)
    tl_s, tl_pix, tl_c, tl_y, tl_x = _topk(tl_heat, k)
    br_s, br_pix, br_c, br_y, br_x = _topk(br_heat, k)
    ct_s, ct_pix, ct_c, ct_y, ct_x = _topk(ct_heat, k)
    tl_r, br_r, ct_r = (
        _gather(out["tl_regr"], tl_pix),
        _gather(out["br_regr"], br_pix),
        _gather(out["ct_regr"], ct_pix),
    )
    tl_x, tl_y = (tl_x + tl_r[..., 0])[:, :, None], (tl_y + tl_r[..., 1])[:, :, None]
    br_x, br_y = (br_x + br_r[..., 0])[:, None, :], (br_y + br_r[..., 1])[:, None, :]
    tl_t = _gather(out["tl_tag"], tl_pix)[..., 0][:, :, None]
    br_t = _gather(out["br_tag"], br_pix)[..., 0][:, None, :]
    scores = (tl_s[:, :, None] + br_s[:, None, :]) / 2
    reject = (
        (tl_c[:, :, None] != br_c[:, None, :])
        | ((tl_t - br_t).abs() > cfg.ae_threshold)
        | (br_x < tl_x)
        | (br_y < tl_y)
    )
    scores = torch.where(reject, torch.full_like(scores, -1.0), scores)
    boxes = torch.stack(torch.broadcast_tensors(tl_x, tl_y, br_x, br_y), dim=3).reshape(b, k * k, 4)
    d = min(cfg.num_dets, k * k)
    scores, inds = scores.reshape(b, k * k).topk(d, dim=1)
    ti = torch.div(inds, k, rounding_mode="floor")
    bi = inds - ti * k
    return {
        "boxes": boxes.gather(1, inds[..., None].expand(b, d, 4)),
        "scores": scores,
        "tl_scores": tl_s.gather(1, ti),
        "br_scores": br_s.gather(1, bi),
        "classes": tl_c.gather(1, ti),
        "centers": torch.stack((ct_x + ct_r[..., 0], ct_y + ct_r[..., 1]), dim=2),
        "ct_scores": ct_s,
        "ct_classes": ct_c,
    }


def _as_batch(v, b: int, like: Tensor, n: int) -> Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return (
        t.reshape(-1, n).expand(b, n) if t.numel() > 1 or n == 1 else t.reshape(1, 1).expand(b, n)
    )


def postprocess(
    dec: dict[str, Tensor],
    input_size: tuple[int, int],
    orig_size: Tensor,
    scale: Tensor | float = 1.0,
    pad: Tensor | tuple[float, float] = (0.0, 0.0),
    cfg: DecodeConfig = DecodeConfig(),
    flip: bool | None = None,
    map_size: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Decoded pairs -> final detections per image in original pixels (module docstring).

    dec: ``decode``'s output for B images, or for 2B with ``flip`` (the second half mirrored).
    input_size: (H_in, W_in) of the network input; map_size: (H_out, W_out) of its maps (the
    decoded coordinates' frame; required). orig_size (B, 2) (h, w); scale (B,) and pad (B, 2)
    ``(left, top)``: ``original = (input - pad) / scale``.

    Returns ``boxes`` (B, P, 4), ``scores`` (B, P) (0 for padding), ``labels`` (B, P) (-1 for
    padding) with P = max_per_image, sorted by score."""
    flip = cfg.flip if flip is None else flip
    if map_size is None:
        raise ValueError("postprocess: map_size (H_out, W_out) is required")
    boxes, scores, classes = dec["boxes"], dec["scores"], dec["classes"]
    centers, ct_scores, ct_classes = dec["centers"], dec["ct_scores"], dec["ct_classes"]
    h_out, w_out = map_size
    if flip:
        b = boxes.shape[0] // 2
        fb = boxes[b:]
        fb = torch.stack((w_out - fb[..., 2], fb[..., 1], w_out - fb[..., 0], fb[..., 3]), -1)
        boxes = torch.cat((boxes[:b], fb), 1)
        fc = torch.stack((w_out - centers[b:, :, 0], centers[b:, :, 1]), -1)
        centers = torch.cat((centers[:b], fc), 1)
        scores = torch.cat((scores[:b], scores[b:]), 1)
        classes = torch.cat((classes[:b], classes[b:]), 1)
        ct_scores = torch.cat((ct_scores[:b], ct_scores[b:]), 1)
        ct_classes = torch.cat((ct_classes[:b], ct_classes[b:]), 1)
    b = boxes.shape[0]
    boxes, centers = boxes.double(), centers.double()
    rx, ry = w_out / input_size[1], h_out / input_size[0]
    ratio = boxes.new_tensor([rx, ry])
    sc = torch.as_tensor(scale, dtype=torch.float64, device=boxes.device).reshape(-1)
    sc = sc.expand(b) if sc.numel() == 1 else sc
    pd = torch.as_tensor(pad, dtype=torch.float64, device=boxes.device).reshape(-1, 2).expand(b, 2)
    osz = torch.as_tensor(orig_size, device=boxes.device).to(torch.float64).reshape(-1, 2)
    hw = osz.flip(-1)  # (w, h)

    def to_orig(xy: Tensor) -> Tensor:  # (B, N, 2)
        return (xy / ratio - pd[:, None, :]) / sc[:, None, None]

    tl, br = to_orig(boxes[..., :2]), to_orig(boxes[..., 2:])
    out_of = (tl <= -cfg.border).any(-1) | (br >= hw[:, None, :] + cfg.border).any(-1)
    scores = torch.where(out_of, torch.full_like(scores, -1.0), scores)
    zero = torch.zeros_like(hw)[:, None, :]
    tl = torch.minimum(torch.maximum(tl, zero), hw[:, None, :])
    br = torch.minimum(torch.maximum(br, zero), hw[:, None, :])
    ctr = torch.minimum(torch.maximum(to_orig(centers), zero), hw[:, None, :])
    boxes = torch.cat((tl, br), -1)
    scores = triplet_filter(boxes, scores, classes, ctr, ct_scores, ct_classes, cfg.small_area)
    return soft_nms_batched(
        boxes,
        scores,
        classes,
        method=cfg.nms_method,
        nt=cfg.nms_threshold,
        sigma=cfg.nms_sigma,
        floor=cfg.score_floor,
        offset=cfg.nms_offset,
        max_per_image=cfg.max_per_image,
    )


def triplet_filter(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    centers: Tensor,
    ct_scores: Tensor,
    ct_classes: Tensor,
    small_area: float = 22500.0,
) -> Tensor:
    """New box scores (B, N): ``(2 * score + center score) / 3`` where a same-class center lies
    strictly inside the box's central region (the first such center), -1 elsewhere (and for
    boxes already at -1)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    small = (x2 - x1) * (y2 - y1) <= small_area
    # n = 3: [(2 x1 + x2) / 3, (x1 + 2 x2) / 3]; n = 5: [(3 x1 + 2 x2) / 5, (2 x1 + 3 x2) / 5]
    lx = torch.where(small, (2 * x1 + x2) / 3, (3 * x1 + 2 * x2) / 5)[..., None]
    rx = torch.where(small, (x1 + 2 * x2) / 3, (2 * x1 + 3 * x2) / 5)[..., None]
    ty = torch.where(small, (2 * y1 + y2) / 3, (3 * y1 + 2 * y2) / 5)[..., None]
    by = torch.where(small, (y1 + 2 * y2) / 3, (2 * y1 + 3 * y2) / 5)[..., None]
    cx, cy = centers[..., 0][:, None, :], centers[..., 1][:, None, :]
    inside = (
        (cx > lx)
        & (cx < rx)
        & (cy > ty)
        & (cy < by)
        & (ct_classes[:, None, :] == classes[..., None])
    )  # (B, N, Kc)
    has = inside.any(-1) & (scores > -1)
    first = inside.to(torch.uint8).argmax(-1)
    ct = ct_scores.to(scores.dtype).gather(1, first)
    return torch.where(has, (2 * scores + ct) / 3, torch.full_like(scores, -1.0))


def soft_nms_batched(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    method: int = 2,
    nt: float = 0.5,
    sigma: float = 0.5,
    floor: float = 0.001,
    offset: float = 1.0,
    max_per_image: int = 100,
) -> dict[str, Tensor]:
    """Per-image, per-class soft-NMS of (B, N) boxes; scores <= -1 are absent.

    Every (image, class) group runs at once: the groups are packed into a (G, L) table and
    each of the L rounds, vectorised over the groups, takes each group's best remaining box,
    decays the overlapping remaining ones (``iw > 0`` and ``ih > 0`` with widths ``x2 - x1 +
    offset``) by ``exp(-iou^2 / sigma)`` (method 2), ``1 - iou`` above ``nt`` (1) or 0 above
    ``nt`` (0), and drops those decayed below ``floor``. Returns the ``max_per_image`` best
    kept boxes per image (``boxes``, ``scores`` (0 padding), ``labels`` (-1 padding))."""
    b, n = scores.shape
    dev = scores.device
    p = min(max_per_image, n)
    out_scores = torch.full((b, n), -1.0, dtype=torch.float64, device=dev)
    valid = scores > -1
    flat = valid.reshape(-1).nonzero()[:, 0]
    if flat.numel():
        img = torch.div(flat, n, rounding_mode="floor")
        lab = labels.reshape(-1)[flat]
        key = img * (int(labels.max()) + 1) + lab
        key, order = key.sort(stable=True)
        flat = flat[order]
        _, counts = torch.unique_consecutive(key, return_counts=True)
        g = counts.numel()
        length = int(counts.max())
        start = torch.cumsum(counts, 0) - counts
        gid = torch.repeat_interleave(torch.arange(g, device=dev), counts)
        pos = torch.arange(flat.numel(), device=dev) - start[gid]
        s = torch.zeros((g, length), dtype=torch.float64, device=dev)
        bx = torch.zeros((g, length, 4), dtype=torch.float64, device=dev)
        active = torch.zeros((g, length), dtype=torch.bool, device=dev)
        src = torch.full((g, length), -1, dtype=torch.long, device=dev)
        s[gid, pos] = scores.reshape(-1)[flat].double()
        bx[gid, pos] = boxes.reshape(-1, 4)[flat].double()
        active[gid, pos] = True
        src[gid, pos] = flat
        kept = torch.full((g, length), -1.0, dtype=torch.float64, device=dev)
        area = (bx[..., 2] - bx[..., 0] + offset) * (bx[..., 3] - bx[..., 1] + offset)
        rows = torch.arange(g, device=dev)
        neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=dev)
        for _ in range(length):
            cur = torch.where(active, s, neg_inf)
            best, sel = cur.max(1)
            live = torch.isfinite(best)
            if not bool(live.any()):
                break
            kept[rows[live], sel[live]] = best[live]
            active[rows, sel] = False
            tb = bx[rows, sel][:, None, :]  # (G, 1, 4)
            iw = (
                torch.minimum(tb[..., 2], bx[..., 2])
                - torch.maximum(tb[..., 0], bx[..., 0])
                + offset
            )
            ih = (
                torch.minimum(tb[..., 3], bx[..., 3])
                - torch.maximum(tb[..., 1], bx[..., 1])
                + offset
            )
            hit = (iw > 0) & (ih > 0) & active & live[:, None]
            ua = area[rows, sel][:, None] + area - iw * ih
            ov = iw * ih / ua
            if method == 2:
                weight = torch.exp(-(ov * ov) / sigma)
            elif method == 1:
                weight = torch.where(ov > nt, 1 - ov, torch.ones_like(ov))
            else:
                weight = torch.where(ov > nt, torch.zeros_like(ov), torch.ones_like(ov))
            s = torch.where(hit, s * weight, s)
            active &= ~(hit & (s < floor))
        done = kept > -1
        out_scores.reshape(-1)[src[done]] = kept[done]
    top, idx = out_scores.topk(p, dim=1)
    has = top > -1
    return {
        "boxes": boxes.double().gather(1, idx[..., None].expand(b, p, 4)) * has[..., None],
        "scores": torch.where(has, top, torch.zeros_like(top)),
        "labels": torch.where(has, labels.gather(1, idx), torch.full_like(idx, -1)),
    }
