"""CenterNet (keypoint triplets) targets and loss (Duankaiwen/CenterNet ``AELoss``), batched.

Targets (``build_targets``), from padded (B, M, 4) corner boxes in input pixels and (B, M)
labels with -1 padding (the ``collate_detection`` convention; an optional (B, M) ``crowd`` mask):

* boxes are clipped to ``[0, W_in - 1] x [0, H_in - 1]`` (the reference's ``_clip_detections``);
  crowd, padding and boxes left without width or height are no objects (an image whose boxes
  all fall outside the crop is a negative); at most ``max_objects`` (128) per image, in order;
* the top-left, bottom-right and center of each box, scaled by ``W_out / W_in`` and
  ``H_out / H_in``, give integer positions (``int``, truncation) and fractional offsets; tag
  indices are ``y * W_out + x``;
* Gaussians at the integer positions, radius ``max(0, int(gaussian_radius((ceil(h * ry),
  ceil(w * rx)), 0.7)))``, sigma = diameter / 6 for corners and diameter / 5 for centers
  (``diameter = 2 r + 1``), merged by maximum (CornerNet's ``draw_gaussian``). ``radius``:
  ``reference`` (default, the formula published models were trained with) or ``exact`` (the
  corrected quadratic roots, Duankaiwen/CenterNet#47).

Loss per stack, averaged over stacks: focal loss on ``clamp(sigmoid(x), 1e-4, 1 - 1e-4)`` for the
three heatmaps (alpha 2 on ``(1 - p)`` at the peaks, ``p^2 (1 - y)^4`` elsewhere; summed over
the batch and divided by its number of peaks, ``-neg`` when the batch has none, as the
reference); pull ``sum (e - mean)^2 / (N_i + 1e-4)`` and push ``sum_{i != j} relu(1 - |mean_i -
mean_j|) / (N (N - 1) + 1e-4)`` on the corner embeddings (weights 0.1); offset smooth L1 (beta
1, ``src.ops.smooth_l1_loss``) of the three offsets, summed and divided by ``N + 1e-4``.

Reference bugs fixed (no flag: none changes a gradient):

* with ``bool`` masks on modern torch the reference's push is silently zero (``mask_i + mask_j``
  is a logical or, never 2); its masks were uint8. Ours works with any mask dtype.
* the reference adds ``relu(1 - 0) - 1 / (N + 1e-4)`` for each object paired with itself, which
  cancels for ``N >= 2`` up to ``N eps / ((N + eps)(N (N - 1) + eps))`` but adds ~1 (0.9999)
  for an image with one object: the logged push shifts by a constant. Ours sums pairs
  ``i != j`` only (``reference_push_constant`` gives the difference, for tests).
* ``tag.squeeze()`` drops the batch dimension at batch size 1 (the reference then fails);
  ours gathers without squeezing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.ops import smooth_l1_loss

__all__ = ["CenterNetLoss", "build_targets", "gaussian_radius", "reference_push_constant"]

RADIUS_MODES = ("reference", "exact")
EPS = 1e-4


def gaussian_radius(
    height: Tensor, width: Tensor, min_overlap: float = 0.7, mode: str = "reference"
) -> Tensor:
    """CornerNet's Gaussian radius for box sizes (tensors, any shape).

    ``reference``: the published formula (``(b + sqrt(b^2 - 4ac)) / 2`` for all three cases);
    ``exact``: the roots of the three quadratics (both corners shifted the same way, both
    inside, both outside) that keep IoU >= min_overlap: ``(b1 - sq1) / 2``, ``(b2 - sq2) / 8``,
    ``(b3 + sq3) / (8 o)`` in the reference's notation."""
    if mode not in RADIUS_MODES:
        raise ValueError(f"gaussian_radius: mode={mode!r}; choose one of {RADIUS_MODES}")
    h, w, o = height, width, min_overlap
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    sq1 = torch.sqrt(b1**2 - 4 * c1)
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    sq2 = torch.sqrt(b2**2 - 16 * c2)
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    sq3 = torch.sqrt(b3**2 - 4 * a3 * c3)
    if mode == "reference":
        r1, r2, r3 = (b1 + sq1) / 2, (b2 + sq2) / 2, (b3 + sq3) / 2
    else:
        r1, r2, r3 = (b1 - sq1) / 2, (b2 - sq2) / 8, (b3 + sq3) / (2 * a3)
    return torch.minimum(torch.minimum(r1, r2), r3)


def _draw(
    heat: Tensor, b: Tensor, c: Tensor, x: Tensor, y: Tensor, r: Tensor, delte: float
) -> None:
    """Max-merge Gaussians (in float64, as the reference) into heat (B, C, H, W) in place."""
    if b.numel() == 0:
        return
    _, n_cls, h, w = heat.shape
    big = int(r.max())
    d = torch.arange(-big, big + 1, device=heat.device)
    dy, dx = d[:, None], d[None, :]  # (S, 1), (1, S)
    sigma = (2 * r + 1).double() / delte
    g = torch.exp(-(dx * dx + dy * dy)[None].double() / (2 * sigma * sigma)[:, None, None])
    g = torch.where(g < torch.finfo(torch.float64).eps, torch.zeros_like(g), g)
    yy, xx = y[:, None, None] + dy, x[:, None, None] + dx
    rr = r[:, None, None]
    ok = (dy.abs() <= rr) & (dx.abs() <= rr) & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    idx = ((b * n_cls + c)[:, None, None] * h + yy) * w + xx
    flat = heat.view(-1)
    flat.scatter_reduce_(0, idx[ok], g[ok].to(heat.dtype), reduce="amax", include_self=True)


def build_targets(
    boxes: Tensor,
    labels: Tensor,
    num_classes: int,
    input_size: tuple[int, int],
    map_size: tuple[int, int],
    crowd: Tensor | None = None,
    max_objects: int = 128,
    min_overlap: float = 0.7,
    radius: str = "reference",
) -> dict[str, Tensor]:
    """Heatmaps (B, C, H, W) ``tl_heat`` / ``br_heat`` / ``ct_heat``, ``tl_inds`` / ``br_inds``
    / ``ct_inds`` (B, K) int64, ``tl_regr`` / ``br_regr`` / ``ct_regr`` (B, K, 2) and ``mask``
    (B, K) bool, K = max_objects (module docstring)."""
    bsz = boxes.shape[0]
    h_in, w_in = input_size
    h_out, w_out = map_size
    dev = boxes.device
    boxes = boxes.double().reshape(bsz, -1, 4)
    labels = labels.reshape(bsz, -1)
    x1, x2 = boxes[..., 0].clamp(0, w_in - 1), boxes[..., 2].clamp(0, w_in - 1)
    y1, y2 = boxes[..., 1].clamp(0, h_in - 1), boxes[..., 3].clamp(0, h_in - 1)
    valid = (labels >= 0) & (labels < num_classes) & (x2 > x1) & (y2 > y1)
    if crowd is not None:
        valid &= ~crowd.reshape(bsz, -1).bool()
    rank = torch.cumsum(valid.long(), 1) - 1
    valid &= rank < max_objects
    rx, ry = w_out / w_in, h_out / h_in
    pts = {
        "tl": (x1 * rx, y1 * ry),
        "br": (x2 * rx, y2 * ry),
        "ct": ((x1 + x2) / 2 * rx, (y1 + y2) / 2 * ry),
    }
    bi, oi = valid.nonzero(as_tuple=True)
    slot = rank[bi, oi]
    cls = labels[bi, oi]
    width = torch.ceil((x2 - x1)[bi, oi] * rx)
    height = torch.ceil((y2 - y1)[bi, oi] * ry)
    rad = gaussian_radius(height, width, min_overlap, radius).clamp(min=0).long()
    out: dict[str, Tensor] = {"mask": torch.zeros((bsz, max_objects), dtype=torch.bool, device=dev)}
    out["mask"][bi, slot] = True
    for name, (fx, fy) in pts.items():
        fx, fy = fx[bi, oi], fy[bi, oi]
        ix, iy = fx.long(), fy.long()  # truncation: coordinates are >= 0
        heat = torch.zeros((bsz, num_classes, h_out, w_out), dtype=torch.float32, device=dev)
        _draw(heat, bi, cls, ix, iy, rad, 5.0 if name == "ct" else 6.0)
        inds = torch.zeros((bsz, max_objects), dtype=torch.long, device=dev)
        inds[bi, slot] = iy * w_out + ix
        regr = torch.zeros((bsz, max_objects, 2), dtype=torch.float32, device=dev)
        regr[bi, slot] = torch.stack((fx - ix, fy - iy), -1).float()
        out[f"{name}_heat"], out[f"{name}_inds"], out[f"{name}_regr"] = heat, inds, regr
    return out


def focal_loss(logits: Tensor, gt: Tensor, clamp: float = EPS) -> Tensor:
    """CornerNet's penalty-reduced focal loss on clamped sigmoid heatmaps, over the batch."""
    p = torch.sigmoid(logits).clamp(clamp, 1 - clamp)
    pos = gt == 1
    neg_w = (1 - gt).pow(4)
    pos_loss = torch.where(pos, torch.log(p) * (1 - p).pow(2), torch.zeros_like(p)).sum()
    neg_loss = torch.where(gt < 1, torch.log(1 - p) * p.pow(2) * neg_w, torch.zeros_like(p)).sum()
    num_pos = pos.sum()
    return torch.where(num_pos > 0, -(pos_loss + neg_loss) / num_pos.clamp(min=1), -neg_loss)


def _gather(feat: Tensor, inds: Tensor) -> Tensor:
    """(B, D, H, W) at flat positions (B, K) -> (B, K, D)."""
    b, d = feat.shape[:2]
    return (
        feat.reshape(b, d, -1)
        .gather(2, inds[:, None, :].expand(b, d, inds.shape[1]))
        .transpose(1, 2)
    )


def ae_loss(tag0: Tensor, tag1: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Pull and push of (B, K) corner embeddings with a (B, K) object mask (any dtype)."""
    mask = mask.bool()
    m = mask.to(tag0.dtype)
    num = m.sum(1, keepdim=True)
    mean = (tag0 + tag1) / 2
    pull = ((((tag0 - mean) ** 2 + (tag1 - mean) ** 2) / (num + EPS)) * m).sum()
    k = mask.shape[1]
    pair = mask[:, :, None] & mask[:, None, :]
    pair &= ~torch.eye(k, dtype=torch.bool, device=mask.device)
    dist = torch.relu(1 - (mean[:, :, None] - mean[:, None, :]).abs())
    push = (dist / ((num - 1) * num + EPS)[:, :, None] * pair.to(dist.dtype)).sum()
    return pull, push


def reference_push_constant(mask: Tensor) -> Tensor:
    """What the reference's push adds over ours (no gradient): sum over images with N >= 1
    objects of ``N eps / ((N + eps)(N (N - 1) + eps))`` (~1 for N = 1, < 5e-5 for N >= 2)."""
    n = mask.bool().sum(1).double()
    c = n * EPS / ((n + EPS) * (n * (n - 1) + EPS))
    return torch.where(n > 0, c, torch.zeros_like(c)).sum()


class CenterNetLoss(nn.Module):
    """The CenterNet loss (module docstring). ``forward(outputs, boxes, labels, input_size,
    crowd=None)``: ``outputs`` the model's list of per-stack map dicts; returns ``loss``,
    ``focal``, ``pull``, ``push``, ``regr`` (each averaged over stacks, weights applied) and
    ``num_objects``."""

    kind = "centernet"

    def __init__(
        self,
        pull_weight: float = 0.1,
        push_weight: float = 0.1,
        regr_weight: float = 1.0,
        min_overlap: float = 0.7,
        radius: str = "reference",
        max_objects: int = 128,
    ):
        super().__init__()
        if radius not in RADIUS_MODES:
            raise ValueError(f"CenterNetLoss: radius={radius!r}; choose one of {RADIUS_MODES}")
        self.pull_weight, self.push_weight = float(pull_weight), float(push_weight)
        self.regr_weight = float(regr_weight)
        self.min_overlap, self.radius = float(min_overlap), radius
        self.max_objects = int(max_objects)

    def targets(self, outputs, boxes, labels, input_size, crowd=None) -> dict[str, Tensor]:
        heat = outputs[-1]["tl_heat"]
        return build_targets(
            boxes,
            labels,
            heat.shape[1],
            input_size,
            tuple(heat.shape[-2:]),
            crowd,
            self.max_objects,
            self.min_overlap,
            self.radius,
        )

    def forward(
        self, outputs, boxes, labels, input_size, crowd=None, targets=None
    ) -> dict[str, Tensor]:
        t = (
            targets
            if targets is not None
            else self.targets(outputs, boxes, labels, input_size, crowd)
        )
        mask = t["mask"]
        num = mask.sum()
        focal = pull = push = regr = 0
        for out in outputs:
            for k in ("tl", "br", "ct"):
                focal = focal + focal_loss(out[f"{k}_heat"], t[f"{k}_heat"])
            tl_tag = _gather(out["tl_tag"], t["tl_inds"])[..., 0]
            br_tag = _gather(out["br_tag"], t["br_inds"])[..., 0]
            p, q = ae_loss(tl_tag, br_tag, mask)
            pull, push = pull + p, push + q
            for k in ("tl", "br", "ct"):
                pred = _gather(out[f"{k}_regr"], t[f"{k}_inds"])
                sl1 = smooth_l1_loss(pred, t[f"{k}_regr"], reduction="none")
                regr = regr + (sl1 * mask[..., None]).sum() / (num + EPS)
        n = len(outputs)
        focal, pull = focal / n, self.pull_weight * pull / n
        push, regr = self.push_weight * push / n, self.regr_weight * regr / n
        return {
            "loss": focal + pull + push + regr,
            "focal": focal.detach(),
            "pull": pull.detach(),
            "push": push.detach(),
            "regr": regr.detach(),
            "num_objects": num.detach().float(),
        }
