"""CenterNet decoding, batched and vectorised (no Python loop over images or boxes).

``decode`` (ONNX-exportable; the reference's ``kp_utils._decode``), on the last stack's maps:

1. sigmoid heatmaps, 3 x 3 max-pool peak NMS (a value survives where it equals its window max);
2. top-K (K=70) corners of each kind over all classes and positions, top-K centers, ties in
   flat-index order (the reference's stable ``argsort``). Eagerly ``_peak_topk`` gets the same
   K without the full-map sigmoid and pooling (candidates = the largest logits, their windows
   checked, grown until provably complete); traced / exported it is the full-map graph;
3. every top-left x bottom-right pair (K x K): positions + gathered offsets, score = the mean of
   the two corner scores; a pair is rejected (score -1) when the classes differ, when
   ``|tag_tl - tag_br| > ae_threshold`` (0.5), or when the box is inverted (``br_x < tl_x`` or
   ``br_y < tl_y``);
4. the ``num_dets`` (1000) best pairs (eagerly a stable sort: ties in pair order).

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
    return (scores, *_unravel(inds, h, w, heat.dtype))


def _unravel(inds: Tensor, h: int, w: int, dtype: torch.dtype):
    classes = torch.div(inds, h * w, rounding_mode="floor")
    pix = inds - classes * (h * w)
    ys = torch.div(pix, w, rounding_mode="floor")
    xs = pix - ys * w
    return pix, classes, ys.to(dtype), xs.to(dtype)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def _peak_topk(logits: Tensor, k: int, kernel: int = 3, first: int = 1024):
    """``_topk(peak_nms(sigmoid(logits)), k)`` without the full-map sigmoid and pooling, ties in
    flat-index order (the reference's stable ``argsort``).

    The ``m`` largest logits of each image are the candidates (sigmoid is monotone, so every
    other position's sigmoid is at most that of the smallest candidate); each candidate's
    ``kernel`` x ``kernel`` window is gathered and it is a peak when its sigmoid equals the
    window's maximum (out-of-map neighbours are -inf, as the pooling's padding). The K best
    candidate peaks are the map's K best peaks when the K-th is above the smallest candidate's
    sigmoid (no other position can reach or tie it); otherwise ``m`` grows (x 8) and it runs
    again, up to the whole map."""
    b, c, h, w = logits.shape
    n = c * h * w
    flat = logits.reshape(b, -1)
    r = (kernel - 1) // 2
    d = torch.arange(-r, r + 1, device=logits.device)
    dy, dx = (v.reshape(-1) for v in torch.meshgrid(d, d, indexing="ij"))
    m = min(n, max(first, 4 * k))
    while True:
        low, cand = flat.topk(m, dim=1, sorted=False)
        cand = cand.sort(dim=1).values  # flat-index order: stable ties below
        cls = torch.div(cand, h * w, rounding_mode="floor")
        pix = cand - cls * (h * w)
        y = torch.div(pix, w, rounding_mode="floor")
        x = pix - y * w
        ny, nx = y[..., None] + dy, x[..., None] + dx  # (B, m, kernel^2)
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        nb = (cls[..., None] * h + ny.clamp(0, h - 1)) * w + nx.clamp(0, w - 1)
        win = flat.gather(1, nb.reshape(b, -1)).reshape(nb.shape)
        win = torch.sigmoid(torch.where(inside, win, torch.full_like(win, float("-inf"))))
        centre = win[..., (kernel * kernel) // 2]
        score = centre * (win.amax(-1) == centre).to(centre.dtype)
        score, order = torch.sort(score, dim=1, descending=True, stable=True)
        score, order = score[:, :k], order[:, :k]
        if m == n:
            break
        floor = torch.sigmoid(low.amin(1))
        if bool((score[:, -1] > torch.nextafter(floor, torch.full_like(floor, 2.0))).all()):
            break
        m = min(n, m * 8)
    inds = cand.gather(1, order)
    return (score, *_unravel(inds, h, w, logits.dtype))


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
    b, c, h, w = out["tl_heat"].shape
    k = min(cfg.top_k, c * h * w)
    export = _exporting()

    def top(name):
        if export:  # the graph: full-map sigmoid, pooling, top-k
            return _topk(peak_nms(torch.sigmoid(out[name]), cfg.kernel), k)
        return _peak_topk(out[name], k, cfg.kernel)

    tl_s, tl_pix, tl_c, tl_y, tl_x = top("tl_heat")
    br_s, br_pix, br_c, br_y, br_x = top("br_heat")
    ct_s, ct_pix, ct_c, ct_y, ct_x = top("ct_heat")
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
    if export:
        scores, inds = scores.reshape(b, k * k).topk(d, dim=1)
    else:  # ties in index order, as the reference's stable argsort
        scores, inds = torch.sort(scores.reshape(b, k * k), dim=1, descending=True, stable=True)
        scores, inds = scores[:, :d], inds[:, :d]
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
    check_every: int = 8,
) -> dict[str, Tensor]:
    """Per-image, per-class soft-NMS of (B, N) boxes; scores <= -1 are absent.

    The reference's sequential ``soft_nms`` (nms.pyx, with the boxes under the floor removed)
    for every (image, class) group at once: the groups are packed into a (G, L) table and each
    round, vectorised over the groups, takes each group's best remaining box, decays the
    overlapping remaining ones (``iw > 0`` and ``ih > 0`` with widths ``x2 - x1 + offset``) by
    ``exp(-iou^2 / sigma)`` (method 2), ``1 - iou`` above ``nt`` (1) or 0 above ``nt`` (0), and
    drops those decayed below ``floor``. Rounds = the largest group, not the sum.

    Ties as the reference: it picks the first maximum in its working array, which it permutes
    (the pick swaps with the head; a dropped box is replaced by the array's last one), so each
    box's place in that array is tracked (``pos`` / ``at``) and a tie goes to the lowest place.
    The result is sorted as the reference's ``argsort(-score, kind="stable")`` over the groups'
    outputs concatenated in class order, each in pick order.

    Early exit: every ``check_every`` rounds, an image whose ``max_per_image``-th best kept
    score is above all its remaining scores is finished (scores only decrease, so nothing left
    can reach its output). Returns the ``max_per_image`` best kept boxes per image (``boxes``,
    ``scores`` (0 padding), ``labels`` (-1 padding))."""
    b, n = scores.shape
    dev = scores.device
    p = min(max_per_image, n)
    boxes64 = boxes.double()
    valid = scores > -1
    flat = valid.reshape(-1).nonzero()[:, 0]
    if not flat.numel():
        return {
            "boxes": boxes64.new_zeros((b, p, 4)),
            "scores": torch.zeros((b, p), dtype=torch.float64, device=dev),
            "labels": torch.full((b, p), -1, dtype=labels.dtype, device=dev),
        }
    img = torch.div(flat, n, rounding_mode="floor")
    lab = labels.reshape(-1)[flat].long()
    key = img * (lab.max() + 1) + lab
    key, order = key.sort(stable=True)
    flat = flat[order]
    _, counts = torch.unique_consecutive(key, return_counts=True)
    g = counts.numel()
    length = int(counts.max())
    start = torch.cumsum(counts, 0) - counts
    gid = torch.repeat_interleave(torch.arange(g, device=dev), counts)
    gimg = img[order][start]  # (G,) image of each group
    col = torch.arange(flat.numel(), device=dev) - start[gid]
    s = torch.zeros((g, length), dtype=torch.float64, device=dev)
    bx = torch.zeros((g, length, 4), dtype=torch.float64, device=dev)
    active = torch.zeros((g, length), dtype=torch.bool, device=dev)
    src = torch.full((g, length), b * n, dtype=torch.long, device=dev)
    s[gid, col] = scores.reshape(-1)[flat].double()
    bx[gid, col] = boxes64.reshape(-1, 4)[flat]
    active[gid, col] = True
    src[gid, col] = flat
    x1, y1, x2, y2 = bx.unbind(-1)
    area = (x2 - x1 + offset) * (y2 - y1 + offset)
    rows = torch.arange(g, device=dev)
    places = torch.arange(length, device=dev).expand(g, length)
    # pos[g, e]: place of box e in group g's working array; at[g, q]: the box at place q
    # (column ``length`` of both is scratch for masked scatters)
    pos = torch.cat((places, places[:, :1]), 1).clone()
    at = pos.clone()
    scratch = torch.full((g, length), length, dtype=torch.long, device=dev)
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=dev)
    kept_s = torch.full((g, length), float("-inf"), dtype=torch.float64, device=dev)
    kept_src = torch.full((g, length), b * n, dtype=torch.long, device=dev)
    by_img = torch.full((b * n + 1,), float("-inf"), dtype=torch.float64, device=dev)
    rounds = 0
    for t in range(length):
        cur = torch.where(active, s, neg_inf)
        best = cur.amax(1)
        live = best > neg_inf
        if t % check_every == check_every - 1 or t == 0:
            if not bool(live.any()):
                break
        # the first maximum in working-array order
        sel = torch.where(cur == best[:, None], pos[:, :length], scratch).argmin(1)
        sel = torch.where(live, sel, 0)
        rounds = t + 1
        kept_s[:, t] = torch.where(live, best, neg_inf)
        kept_src[:, t] = torch.where(live, src[rows, sel], b * n)
        by_img[kept_src[:, t]] = kept_s[:, t]
        # swap the pick with the head (place t)
        head = at[:, t].clone()
        q = pos[rows, sel]
        at[rows, q] = head
        pos[rows, head] = q
        at[:, t] = sel
        pos[rows, sel] = t
        active[rows, sel] = False
        tb = bx[rows, sel][:, None, :]  # (G, 1, 4)
        iw = torch.minimum(tb[..., 2], x2) - torch.maximum(tb[..., 0], x1) + offset
        ih = torch.minimum(tb[..., 3], y2) - torch.maximum(tb[..., 1], y1) + offset
        hit = (iw > 0) & (ih > 0) & active
        inter = iw * ih
        ov = inter / (area[rows, sel][:, None] + area - inter)
        if method == 2:
            weight = torch.exp(-(ov * ov) / sigma)
        elif method == 1:
            weight = torch.where(ov > nt, 1 - ov, torch.ones_like(ov))
        else:
            weight = torch.where(ov > nt, torch.zeros_like(ov), torch.ones_like(ov))
        s = torch.where(hit, s * weight, s)
        drop = hit & (s < floor)
        if bool(drop.any()):
            active &= ~drop
            _compact(pos, at, active, drop, t, length, scratch)
        if t % check_every == check_every - 1 and p > 0:
            # images whose p-th kept score beats everything they have left are done
            thr = by_img[:-1].reshape(b, n).topk(p, dim=1).values[:, -1]
            left = torch.full((b,), float("-inf"), dtype=torch.float64, device=dev)
            rem = torch.where(active, s, neg_inf).amax(1)
            left = left.scatter_reduce(0, gimg, rem, reduce="amax")
            active &= ~(left < thr)[gimg][:, None]
    kept_s, kept_src = kept_s[:, :rounds], kept_src[:, :rounds]
    # the reference's order: groups in (image, class) order, each in pick order, then a stable
    # sort by descending score within the image
    ok = (kept_s > neg_inf).reshape(-1)
    ent = ok.nonzero()[:, 0]
    e_img = gimg[torch.div(ent, max(rounds, 1), rounding_mode="floor")]
    e_s, e_src = kept_s.reshape(-1)[ent], kept_src.reshape(-1)[ent]
    per = torch.bincount(e_img, minlength=b)
    width = max(int(per.max()) if ent.numel() else 0, p)
    slot = torch.arange(ent.numel(), device=dev) - (torch.cumsum(per, 0) - per)[e_img]
    tab = torch.full((b, width), float("-inf"), dtype=torch.float64, device=dev)
    tsrc = torch.zeros((b, width), dtype=torch.long, device=dev)
    tab[e_img, slot] = e_s
    tsrc[e_img, slot] = e_src - e_img * n
    top, idx = torch.sort(tab, dim=1, descending=True, stable=True)
    top, idx = top[:, :p], tsrc.gather(1, idx[:, :p])
    has = top > neg_inf
    return {
        "boxes": boxes64.gather(1, idx[..., None].expand(b, p, 4)) * has[..., None],
        "scores": torch.where(has, top, torch.zeros_like(top)),
        "labels": torch.where(has, labels.gather(1, idx), torch.full_like(idx, -1)),
    }


def _compact(
    pos: Tensor, at: Tensor, active: Tensor, drop: Tensor, t: int, length: int, scratch: Tensor
) -> None:
    """The reference's removal of dropped boxes in one round, in place on ``pos`` / ``at``.

    Its scan replaces a dropped box by the array's last box (itself scanned next), so with
    ``m`` boxes left after the head ``t``, the dropped places below ``t + 1 + m`` are filled, in
    ascending order, by the remaining boxes above it taken from the end."""
    places = scratch.new_tensor(range(length)).expand_as(scratch)
    bound = t + 1 + active.sum(1, keepdim=True)
    e = at[:, :length]
    holes = drop.gather(1, e) & (places < bound)
    end = bound + drop.sum(1, keepdim=True)  # the array's length before this round's drops
    movers = active.gather(1, e) & (places >= bound) & (places < end)  # (stale entries past it)
    if not bool(movers.any()):
        return
    hole_rank = torch.where(holes, holes.cumsum(1) - 1, scratch)
    mover_rank = torch.where(movers, movers.flip(1).cumsum(1).flip(1) - 1, scratch)
    hole_at = torch.cat((places, places[:, :1]), 1).clone().scatter_(1, hole_rank, places)
    target = hole_at.gather(1, mover_rank)  # the place each mover goes to
    pos.scatter_(1, torch.where(movers, e, scratch), target)
    at.copy_(at.scatter(1, torch.where(movers, target, scratch), e))
