"""Anchor grids (SSD / RetinaFace / YOLO-style heads) and their IoU candidate pairs.

``AnchorGrid`` describes anchors laid out level -> row -> column -> anchor shape (the order of
SSD, RetinaFace's ``PriorBox`` and GluonCV's ``SSDAnchorGenerator``): level ``k`` (stride
``steps[k]``) has a ``ceil(H / step) x ceil(W / step)`` feature map, and cell ``(i, j)`` gets one
anchor per shape ``(w, h)`` of ``sizes[k]`` (pixels), centred on ``((j + offset) * step, (i +
offset) * step)``. With ``normalized=True`` x is divided by W and y by H (RetinaFace's
convention), so anchors and ground truths live in ``[0, 1]`` image coordinates.

``AnchorGrid.candidates(boxes, min_iou)`` returns every (ground truth, anchor) pair that can
have IoU >= ``min_iou`` without computing the dense ``(N, M)`` IoU: a few dozen anchors per
ground truth instead of all N (16,800 at 640 px for RetinaFace). Computing the IoU of those
pairs only (``src.ops.box_iou``) and reducing with ``scatter_reduce`` gives exactly the
maxima / threshold matches of the dense path at a fraction of the cost on CPU.

Contract: no pair whose float32 or float64 IoU reaches ``min_iou`` is missed; extra pairs
may be returned (why the pairs are a superset: ``src/nn/README.md``, "Why the candidate pairs
are a superset"). ``anchor_boxes(grid, fmt, clip, device, dtype)`` is the cached anchor tensor
of a grid (RetinaFace's priors are ``anchor_boxes(grid, "center")``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from .bbox import is_padding

__all__ = ["AnchorGrid", "anchor_boxes"]

_REL_MARGIN = 1e-4  # on min_iou, for the float32 IoU that decides afterwards
_ULPS = 8.0  # absolute slack on overlaps / sides, in float32 ulps of the largest coordinate
_CELL_EPS = 1e-6  # in cell units, for float64 rounding of window bounds


class AnchorGrid:
    """Anchors laid out level -> row -> column -> shape, and their IoU candidate pairs.

    Args:
        image_size: ``(H, W)`` in pixels.
        steps: stride of each level in pixels (int or float); the feature map of a level is
            ``ceil(H / step) x ceil(W / step)``.
        sizes: per level, the anchor shapes ``(w, h)`` in pixels (rectangles allowed; levels
            may have different numbers of shapes).
        offset: anchor centre of cell ``(i, j)`` is ``((j + offset) * step, (i + offset) *
            step)`` pixels (0.5: the cell centre).
        normalized: divide x by W and y by H (anchors, and the boxes given to ``candidates``,
            in ``[0, 1]`` image coordinates); False: pixels.

    ``AnchorGrid.square(image_size, steps, min_sizes)`` builds RetinaFace's priors (square
    shapes of side ``min_sizes[k][a]``). Values are computed in float64 and then cast.
    """

    def __init__(
        self,
        image_size: Sequence[int],
        steps: Sequence[float],
        sizes: Sequence[Sequence[Sequence[float]]],
        offset: float = 0.5,
        normalized: bool = True,
    ):
        if len(image_size) != 2:
            raise ValueError(f"AnchorGrid: image_size must be (H, W), got {image_size!r}")
        h, w = int(image_size[0]), int(image_size[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"AnchorGrid: image_size must be positive, got {(h, w)}")
        if len(steps) != len(sizes):
            raise ValueError(
                f"AnchorGrid: sizes has {len(sizes)} levels but steps has {len(steps)}"
            )
        if len(steps) == 0:
            raise ValueError("AnchorGrid: at least one level is needed")
        steps_t = tuple(_number(s) for s in steps)
        if not all(s > 0 and math.isfinite(s) for s in steps_t):
            raise ValueError(f"AnchorGrid: steps must be positive and finite, got {steps_t}")
        shapes = []
        for k, level in enumerate(sizes):
            lv = []
            for wh in level:
                if len(wh) != 2:
                    raise ValueError(f"AnchorGrid: level {k}: a shape is (w, h), got {wh!r}")
                sw, sh = _number(wh[0]), _number(wh[1])
                if not (sw > 0 and sh > 0 and math.isfinite(sw) and math.isfinite(sh)):
                    raise ValueError(
                        f"AnchorGrid: level {k}: anchor sides must be positive "
                        f"and finite, got {(sw, sh)}"
                    )
                lv.append((sw, sh))
            if not lv:
                raise ValueError(f"AnchorGrid: level {k} has no anchor shape")
            shapes.append(tuple(lv))
        self.image_size: tuple[int, int] = (h, w)
        self.steps: tuple[float, ...] = steps_t
        self.sizes: tuple[tuple[tuple[float, float], ...], ...] = tuple(shapes)
        self.offset = float(offset)
        self.normalized = bool(normalized)
        self.feature_map_sizes: list[tuple[int, int]] = [
            (math.ceil(h / s), math.ceil(w / s)) for s in self.steps
        ]
        self.num_anchors_per_level: list[int] = [
            fh * fw * len(sz) for (fh, fw), sz in zip(self.feature_map_sizes, self.sizes)
        ]
        self._tables: dict[torch.device, dict[str, Tensor]] = {}

    @classmethod
    def square(
        cls,
        image_size: Sequence[int],
        steps: Sequence[float],
        min_sizes: Sequence[Sequence[float]],
        offset: float = 0.5,
        normalized: bool = True,
    ) -> AnchorGrid:
        """Square shapes of side ``min_sizes[k][a]`` pixels (RetinaFace's ``PriorBox``)."""
        return cls(
            image_size, steps, [[(s, s) for s in level] for level in min_sizes], offset, normalized
        )

    @property
    def num_anchors(self) -> int:
        return sum(self.num_anchors_per_level)

    def __len__(self) -> int:
        return self.num_anchors

    def _key(self):
        return (self.image_size, self.steps, self.sizes, self.offset, self.normalized)

    def __eq__(self, other) -> bool:
        return isinstance(other, AnchorGrid) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"AnchorGrid(image_size={self.image_size}, steps={self.steps}, "
            f"sizes={self.sizes}, offset={self.offset}, normalized={self.normalized})"
        )

    # ---- anchors ---------------------------------------------------------------------
    def _scale(self) -> tuple[float, float]:
        """Divisors of x and y: (W, H) normalised, (1, 1) in pixels."""
        h, w = self.image_size
        return (float(w), float(h)) if self.normalized else (1.0, 1.0)

    def anchors(
        self,
        fmt: str = "corner",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """All anchors, ``(N, 4)``: ``corner`` ``(x1, y1, x2, y2)`` or ``center`` ``(cx, cy, w,
        h)``, computed in float64 and then cast (corners as ``cx -/+ w / 2`` in float64)."""
        if fmt not in ("corner", "center"):
            raise ValueError(f"AnchorGrid.anchors: fmt must be 'corner' or 'center', got {fmt!r}")
        f64 = torch.float64
        sx, sy = self._scale()
        out = []
        for (fh, fw), step, shapes in zip(self.feature_map_sizes, self.steps, self.sizes):
            cy = (torch.arange(fh, dtype=f64) + self.offset) * step / sy  # (fh,)
            cx = (torch.arange(fw, dtype=f64) + self.offset) * step / sx  # (fw,)
            sw = torch.tensor([s[0] for s in shapes], dtype=f64) / sx  # (A,)
            sh = torch.tensor([s[1] for s in shapes], dtype=f64) / sy
            shape = (fh, fw, len(shapes))
            cxe, cye = cx[None, :, None].expand(shape), cy[:, None, None].expand(shape)
            we, he = sw[None, None, :].expand(shape), sh[None, None, :].expand(shape)
            if fmt == "center":
                cols = [cxe, cye, we, he]
            else:
                cols = [cxe - we / 2, cye - he / 2, cxe + we / 2, cye + he / 2]
            out.append(torch.stack(cols, dim=-1).reshape(-1, 4))
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return torch.cat(out, 0).to(device=dev, dtype=dtype).contiguous()

    # ---- candidate pairs -------------------------------------------------------------
    def _table(self, device: torch.device) -> dict[str, Tensor]:
        """Per-level constants on ``device`` (float64 / int64), shapes padded to the widest
        level (``ok`` marks real shapes)."""
        tab = self._tables.get(device)
        if tab is not None:
            return tab
        sx, sy = self._scale()
        a_max = max(len(s) for s in self.sizes)
        n_lev = len(self.sizes)
        pw = torch.ones(n_lev, a_max, dtype=torch.float64)
        ph = torch.ones(n_lev, a_max, dtype=torch.float64)
        ok = torch.zeros(n_lev, a_max, dtype=torch.bool)
        for k, shapes in enumerate(self.sizes):
            for a, (sw, sh) in enumerate(shapes):
                pw[k, a], ph[k, a], ok[k, a] = sw / sx, sh / sy, True
        # largest |coordinate| an anchor corner can have, for the float32 slack
        reach = max(
            max((fw + abs(self.offset)) * st / sx, (fh + abs(self.offset)) * st / sy)
            + max(max(s) for s in shapes) / min(sx, sy)
            for (fh, fw), st, shapes in zip(self.feature_map_sizes, self.steps, self.sizes)
        )
        base = [0]
        for n in self.num_anchors_per_level[:-1]:
            base.append(base[-1] + n)
        i64, f64 = torch.long, torch.float64
        tab = {
            "pw": pw,
            "ph": ph,
            "ok": ok,
            "step": torch.tensor(self.steps, dtype=f64),
            "fh": torch.tensor([f[0] for f in self.feature_map_sizes], dtype=f64),
            "fh_i": torch.tensor([f[0] for f in self.feature_map_sizes], dtype=i64),
            "slot": torch.arange(a_max, dtype=i64),
            "reach": torch.tensor(reach, dtype=f64),
            # per level: step, columns, shapes, index of the first anchor (exact in float64)
            "level": torch.tensor(
                [
                    [st, fw, len(sz), b]
                    for st, (_, fw), sz, b in zip(
                        self.steps, self.feature_map_sizes, self.sizes, base
                    )
                ],
                dtype=f64,
            ),
        }
        tab = {k: v.to(device) for k, v in tab.items()}
        self._tables[device] = tab
        return tab

    @torch.no_grad()
    def candidates(self, boxes: Tensor, min_iou: float) -> tuple[Tensor, Tensor]:
        """Every (ground truth, anchor) pair that can have IoU >= ``min_iou``.

        Args:
            boxes: ``(B, M, 4)`` (any ``(..., 4)``) corner boxes in the grid's coordinates
                (normalised when ``normalized``); padding rows (all -1) and boxes without
                positive finite area get no pair.
            min_iou: ``0 < min_iou <= 1``.

        Returns:
            ``(gt, anchor)``: int64 ``(K,)`` each, on the device of ``boxes``; ``gt`` indexes
            ``boxes.reshape(-1, 4)``, ``anchor`` the N anchors of ``anchors()``; gt-major,
            ascending anchor index within a gt, no duplicates. A superset of the pairs whose
            IoU (``src.ops.box_iou`` in float32 or float64, anchors from ``anchors()``) is >=
            ``min_iou``: compute their IoU afterwards to decide.
        """
        t = float(min_iou)
        if not 0.0 < t <= 1.0:  # also rejects NaN
            raise ValueError(f"AnchorGrid.candidates: min_iou must be in (0, 1], got {min_iou!r}")
        if boxes.shape[-1:] != (4,):
            raise ValueError(
                f"AnchorGrid.candidates: boxes must be (..., 4) corners, got "
                f"shape {tuple(boxes.shape)}"
            )
        dev = boxes.device
        g = boxes.detach().reshape(-1, 4).to(torch.float64)
        n_gt = g.shape[0]
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        if n_gt == 0:
            return empty, empty
        tab = self._table(dev)
        n_lev, off = len(self.sizes), self.offset
        sx, sy = self._scale()
        eps32 = torch.finfo(torch.float32).eps
        if boxes.dtype.is_floating_point:
            eps32 = max(eps32, torch.finfo(boxes.dtype).eps)
        t_lo = t * (1 - max(_REL_MARGIN, 16 * eps32))
        c = t_lo / (1 + t_lo)

        gx1, gy1, gx2, gy2 = g.unbind(1)
        gw, gh = gx2 - gx1, gy2 - gy1
        valid = ~is_padding(g) & torch.isfinite(g).all(1) & (gw > 0) & (gh > 0)
        # absolute slack on every overlap and side: 8 float32 ulps of the largest coordinate
        delta = _ULPS * eps32 * torch.maximum(g.abs().amax(1), tab["reach"])  # (G,)

        # ---- per (gt, level, shape): which rows can reach the threshold
        pw, ph = tab["pw"][None], tab["ph"][None]  # (1, L, A)
        d3 = delta[:, None, None]
        gw3, gh3 = gw[:, None, None], gh[:, None, None]
        need = c * (
            (pw - d3).clamp(min=0) * (ph - d3).clamp(min=0)
            + (gw3 - d3).clamp(min=0) * (gh3 - d3).clamp(min=0)
        )  # (G, L, A)
        mw, mh = torch.minimum(pw, gw3), torch.minimum(ph, gh3)
        dy = need / (mw + d3) - d3  # iy must reach dy (ix at its largest)
        dx_best = need / (mh + d3) - d3  # ix must reach this in the best row
        feasible = valid[:, None, None] & tab["ok"][None] & (mh >= dy) & (mw >= dx_best)
        uy = (tab["step"] / sy)[None, :, None]  # grid units per row
        inf = float("inf")
        lo = torch.where(dy > 0, gy1[:, None, None] + dy - ph / 2, -inf) / uy - off
        hi = torch.where(dy > 0, gy2[:, None, None] - dy + ph / 2, inf) / uy - off
        fh = tab["fh"][None, :, None]
        big = torch.iinfo(torch.long).max
        i0 = torch.where(feasible, _ceil(lo - _CELL_EPS, fh), big)  # (G, L, A)
        i1 = torch.where(feasible, _floor(hi + _CELL_EPS, fh), -1)
        i0, i1 = _reduce_last(torch.minimum, i0), _reduce_last(torch.maximum, i1)  # (G, L)
        i0 = i0.clamp(min=0)
        i1 = torch.minimum(i1, tab["fh_i"][None] - 1)
        n_rows = (i1 - i0 + 1).clamp(min=0).reshape(-1)  # (G * L,)
        i0 = i0.reshape(-1)
        total_rows = int(n_rows.sum())
        if total_rows == 0:
            return empty, empty

        # ---- per row: the exact y-overlap of the row gives the columns of each shape
        n_seg = n_gt * n_lev
        seg = _expand(torch.arange(n_seg, device=dev), n_rows, total_rows, 0)  # (R,)
        row = _expand(i0, n_rows, total_rows, 1)  # (R,)
        gi = torch.div(seg, n_lev, rounding_mode="floor")
        # one gather of everything a row needs: per (gt, level) and per (gt, level, shape)
        per_gt = torch.stack([gx1, gx2, gy1, gy2, delta], 1)[:, None].expand(n_gt, n_lev, 5)
        per_seg = torch.cat([per_gt, tab["level"][None].expand(n_gt, n_lev, 4)], 2)
        need = torch.where(feasible, need, inf)  # infeasible shapes reach nothing
        per_shape = torch.stack([need, mw, pw.expand_as(need), ph.expand_as(need)], 3)
        rx1, rx2, ry1, ry2, d_r, step, fw, na, base = per_seg.reshape(n_seg, 9)[seg].unbind(1)
        need_r, mw_r, pw_r, ph_r = per_shape.reshape(n_seg, -1, 4)[seg].unbind(2)  # (R, A)
        cy = ((row.to(torch.float64) + off) * step / sy)[:, None]  # as anchors()
        iy = (
            torch.minimum(cy + ph_r / 2, ry2[:, None]) - torch.maximum(cy - ph_r / 2, ry1[:, None])
        ).clamp(min=0)
        d_r = d_r[:, None]
        dx = need_r / (iy + d_r) - d_r
        ok = mw_r >= dx
        ux = (step / sx)[:, None]
        lo = torch.where(dx > 0, rx1[:, None] + dx - pw_r / 2, -inf) / ux - off
        hi = torch.where(dx > 0, rx2[:, None] - dx + pw_r / 2, inf) / ux - off
        fw = fw[:, None]
        j0 = _ceil(lo - _CELL_EPS, fw).clamp(min=0)
        j1 = torch.minimum(_floor(hi + _CELL_EPS, fw), fw.long() - 1)
        ok &= j0 <= j1
        na = na.long()[:, None]  # shapes of the row's level
        slot = tab["slot"][None]
        # the row's run of anchors: from the first feasible (cell, shape) to the last one
        start = _reduce_last(torch.minimum, torch.where(ok, j0 * na + slot, big))
        stop = _reduce_last(torch.maximum, torch.where(ok, j1 * na + slot, -1))
        length = (stop - start + 1).clamp(min=0)
        start = base.long() + row * fw[:, 0].long() * na[:, 0] + torch.where(length > 0, start, 0)
        total = int(length.sum())
        if total == 0:
            return empty, empty

        # ---- per pair: each run is contiguous in anchor order
        return _expand(gi, length, total, 0), _expand(start, length, total, 1)


def anchor_boxes(
    grid: AnchorGrid,
    fmt: str = "center",
    clip: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``grid.anchors(fmt)`` computed in float64, clamped to ``[0, 1]`` when ``clip``, then
    cast to ``dtype`` on ``device``. Cached per (grid, fmt, clip, device, dtype), so callers
    asking for the same grid get the very same tensor: treat it as read-only."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _anchor_boxes_cached(grid, fmt, bool(clip), dev, dtype)


@lru_cache(maxsize=64)
def _anchor_boxes_cached(
    grid: AnchorGrid, fmt: str, clip: bool, device: torch.device, dtype: torch.dtype
) -> Tensor:
    out = grid.anchors(fmt, dtype=torch.float64)
    if clip:
        out = out.clamp(0.0, 1.0)
    return out.to(device=device, dtype=dtype).contiguous()


def _reduce_last(op, x: Tensor) -> Tensor:
    """``op``-fold over the (short) last dim: faster than ``amin`` / ``amax`` on CPU there."""
    out = x[..., 0]
    for a in range(1, x.shape[-1]):
        out = op(out, x[..., a])
    return out


def _floor(x: Tensor, limit: Tensor) -> Tensor:
    """int64 ``floor(x)`` with x clamped to ``[-1, limit]`` (NaN: any value, masked by the
    caller). Not ``torch.floor``: its CPU kernel goes thread-parallel from 2,048 elements,
    which costs milliseconds on a busy machine."""
    return (x.clamp(min=-1).clamp(max=limit) + 1).long() - 1


def _ceil(x: Tensor, limit: Tensor) -> Tensor:
    """int64 ``ceil(x)`` with x clamped to ``[-1, limit]`` (see ``_floor``)."""
    return (limit + 1).long() - (limit + 1 - x.clamp(min=-1).clamp(max=limit)).long()


def _expand(values: Tensor, lengths: Tensor, total: int, step: int) -> Tensor:
    """Runs ``values[r] + step * (0, 1, ..., lengths[r] - 1)`` concatenated (``total`` =
    ``lengths.sum()`` > 0): a cumulative sum of jumps, as ``repeat_interleave`` would give
    but without its thread-parallel CPU kernel (slow on small inputs of a busy machine)."""
    keep = lengths > 0
    v, n = values[keep], lengths[keep]
    first = torch.cumsum(n, 0) - n
    jump = v.clone()
    jump[1:] -= v[:-1] + step * (n[:-1] - 1)
    diff = torch.full((total,), step, dtype=values.dtype, device=values.device)
    diff[first] = jump
    return torch.cumsum(diff, 0)


def _number(x) -> int | float:
    """Integers stay ints (for the repr), anything else becomes a float."""
    if isinstance(x, bool):
        raise ValueError(f"AnchorGrid: expected a number, got {x!r}")
    if isinstance(x, torch.Tensor):
        x = x.item()
    return int(x) if isinstance(x, numbers.Integral) else float(x)
