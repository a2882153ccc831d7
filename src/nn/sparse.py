"""Anchor x ground-truth IoU kept only for the anchors that can matter (``SparseIOU``).

A batch of 32 images with 16,800 anchors and 10 ground truths has 5.4 M IoU pairs, of which a
few thousand decide anything: most anchors are far from every box. ``SparseIOU`` keeps, per
image, the rows (anchors) that some matcher or sampler can act on, with their **exact** IoU
against **all** ground truths of the image (a compact ``(B, R, M)`` matrix, rows in ascending
anchor order), and guarantees for the rows it leaves out:

* every pair with IoU ``>= floor`` is kept (so an absent row's best IoU is below ``floor``);
* each ground truth's ``k`` best anchors with IoU > 0 are kept, ties at the ``k``-th value
  included, as are anchors within ``eps`` of its best IoU (``k = min(N, M)`` by default);
  with ``k_floor > 0``, only its ``k`` best with IoU ``>= k_floor`` (a consumer that ignores
  boxes whose best IoU is below ``k_floor`` needs no more).

The toolkit's matchers and samplers accept a ``SparseIOU`` wherever they accept a dense
``(B, N, M)`` IoU and return the same ``(B, N)`` result: ``MaximumMatcher(t)`` with ``t >=
floor``, ``BipartiteMatcher`` (descending, threshold >= 0), and samplers with thresholds ``>=
floor`` or ``<= 0``; a threshold in between raises a ``ValueError`` (why they are exact:
``src/nn/README.md``, "Why matchers and samplers are exact on a SparseIOU").

Candidate pairs come from anywhere that never misses a pair with IoU ``>= floor - eps``:
``AnchorGrid.candidates`` (a window of grid cells per box), or every pair. Ground truths with
fewer than ``k`` candidates at ``floor`` (tiny boxes) get their IoU against all anchors computed
densely, which keeps the ``k``-best guarantee whatever the boxes.

The point is speed on CPU (``benchmarks/nn.py``): building it needs host reads of a few sizes,
which are free on CPU; on CUDA the dense path has no host synchronisation and is fast anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from src.ops import box_iou

from .bbox import PAD_IOU, is_padding

__all__ = ["SparseIOU"]


@dataclass
class SparseIOU:
    """IoU of the rows that matter; see the module docstring for the guarantees.

    Attributes:
        rows: ``(B, R)`` int64 anchor indices, ascending per image; unused slots hold ``N``.
        iou: ``(B, R, M)`` exact IoU of those anchors with every ground truth (``PAD_IOU`` for
            padding ground truths, ``-inf`` in unused slots).
        num_anchors: N.
        floor: every pair with IoU ``>= floor`` is kept.
        k: every ground truth's ``k`` best anchors with IoU > 0 (``>= k_floor``) are kept
            (ties included).
        k_floor: see ``k``; 0 for the full guarantee.
        eps: anchors within ``eps`` of a ground truth's best IoU are kept.
        has_gt: ``(B,)`` bool, the image has at least one real ground truth.
    """

    rows: torch.Tensor
    iou: torch.Tensor
    num_anchors: int
    floor: float
    k: int
    eps: float
    has_gt: torch.Tensor
    k_floor: float = 0.0

    # ---- shape ------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        """The dense shape ``(B, N, M)`` this stands for."""
        b, _, m = self.iou.shape
        return torch.Size((b, self.num_anchors, m))

    # ---- back to anchors ----------------------------------------------------------------
    def expand(self, values: torch.Tensor, fill) -> torch.Tensor:
        """Scatter per-row ``values`` ``(B, R, ...)`` to a contiguous ``(B, N, ...)``; absent
        rows get ``fill``."""
        b, r = self.rows.shape
        n = self.num_anchors
        trailing = values.shape[2:]
        # flat keys b * N + row; unused slots go to one extra sentinel entry at the end
        base = torch.arange(b, device=self.rows.device)[:, None] * n
        key = torch.where(self.rows < n, self.rows + base, b * n)
        out = values.new_full((b * n + 1, *trailing), fill)
        out.index_copy_(0, key.reshape(-1), values.reshape(b * r, *trailing))
        return out[: b * n].view(b, n, *trailing)

    def max(self) -> torch.Tensor:
        """``(B, N)`` best IoU of each anchor: exact for kept rows; absent rows report 0 (-1
        when the image has no ground truth), which compares with any threshold ``>= floor``
        or ``<= 0`` as the true value does (see ``check_threshold``)."""
        b, r, m = self.iou.shape
        if m == 0 or r == 0:
            out = self.iou.new_zeros((b, self.num_anchors))
        else:
            out = self.expand(self.iou.max(dim=-1).values, 0.0)
        if not bool(self.has_gt.all()):  # no ground truth: every pair is padding (-1)
            out.masked_fill_(~self.has_gt[:, None], PAD_IOU)
        return out

    # ---- validity of consumers ------------------------------------------------------------
    def check_threshold(self, owner: str, name: str, value: float) -> None:
        """Raise unless comparisons with ``value`` are exact for absent rows."""
        if value <= 0 or value >= self.floor or math.isnan(value):
            return
        raise ValueError(
            f"{owner}: {name}={value} lies in (0, floor={self.floor}) of the "
            f"SparseIOU; build it with floor <= {value}"
        )

    def check_bipartite(self, owner: str, threshold: float, is_ascend: bool, eps: float) -> None:
        """Raise unless a greedy bipartite matching on the kept rows is exact."""
        if is_ascend:
            raise ValueError(f"{owner}: is_ascend=True needs the dense score matrix")
        if threshold < 0:
            raise ValueError(
                f"{owner}: threshold={threshold} < 0 needs the dense IoU "
                "(pairs with IoU 0 are not kept)"
            )
        b, _, m = self.iou.shape
        if self.k < min(self.num_anchors, m):
            raise ValueError(
                f"{owner}: the SparseIOU keeps k={self.k} best anchors per "
                f"ground truth, bipartite matching needs {min(self.num_anchors, m)}"
            )
        if eps > self.eps:
            raise ValueError(f"{owner}: eps={eps} exceeds the SparseIOU's eps={self.eps}")
        if threshold < self.k_floor:
            raise ValueError(
                f"{owner}: threshold={threshold} is below the SparseIOU's "
                f"k_floor={self.k_floor}; build it with k_floor <= {threshold}"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pairs(
        cls,
        anchors: torch.Tensor,
        boxes: torch.Tensor,
        gt: torch.Tensor,
        anchor: torch.Tensor,
        floor: float,
        k: int | None = None,
        eps: float = 1e-12,
        offset: float = 0,
    ) -> SparseIOU:
        """Build from candidate pairs.

        Args:
            anchors: ``(N, 4)`` corner anchors (shared by the batch).
            boxes: ``(B, M, 4)`` corner ground truths, padding rows all -1.
            gt, anchor: int64 ``(K,)`` candidate pairs; ``gt`` indexes ``boxes.reshape(-1, 4)``.
                They must include every pair with IoU ``>= floor - eps`` (extra pairs are
                fine; ``AnchorGrid.candidates``' relative margin covers the default ``eps``).
            floor: in ``(0, 1]``.
            k: best anchors kept per ground truth (default ``min(N, M)``); a ground truth
                with fewer than ``k`` pairs at ``floor`` gets its IoU with every anchor.
            eps: keep anchors within ``eps`` of a ground truth's best IoU (the sharing
                tolerance of ``BipartiteMatcher``).
            offset: 1 for legacy ``x2 - x1 + 1`` widths.
        """
        pairs = (gt.long(), anchor.long())
        return cls.from_candidates(
            anchors, boxes, lambda idx, t: pairs, floor, k, eps, offset, refine=()
        )

    @classmethod
    @torch.no_grad()
    def from_candidates(
        cls,
        anchors: torch.Tensor,
        boxes: torch.Tensor,
        candidates,
        floor: float,
        k: int | None = None,
        eps: float = 1e-12,
        offset: float = 0,
        refine: tuple[float, ...] = (3.0, 9.0),
        k_floor: float = 0.0,
    ) -> SparseIOU:
        """Build from a candidate source ``candidates(gt_index, min_iou) -> (gt, anchor)``.

        The source returns int64 pairs (``gt`` indexing ``boxes.reshape(-1, 4)``) including
        every pair with IoU ``>= min_iou - eps``, for all ground truths (``gt_index`` None, the
        first call, at ``floor``) or for the int64 subset ``gt_index``. Ground truths with fewer
        than ``k`` pairs at ``floor`` are asked again at ``floor / refine[i]`` (cheap windows for
        small boxes); those still short get their IoU with every anchor. With ``k_floor > 0``
        the lowered floors stop at ``k_floor`` and nothing is dense: a box keeps its ``k`` best
        pairs with IoU ``>= k_floor`` (all of them when it has fewer). Other arguments as
        ``from_pairs``.
        """
        if not 0 < floor <= 1:
            raise ValueError(f"SparseIOU: floor must be in (0, 1], got {floor}")
        if anchors.dim() != 2 or boxes.dim() != 3:
            raise ValueError(
                f"SparseIOU: anchors (N, 4) and boxes (B, M, 4) expected, got "
                f"{tuple(anchors.shape)} and {tuple(boxes.shape)}"
            )
        bsz, m = boxes.shape[:2]
        n = anchors.shape[0]
        dev = boxes.device
        kk = min(n, m) if k is None else min(int(k), n)
        dtype = torch.promote_types(anchors.dtype, boxes.dtype)
        anchors, boxes = anchors.to(dtype), boxes.to(dtype)
        flat = boxes.reshape(-1, 4)
        nf = flat.shape[0]
        real = ~is_padding(flat)

        if not 0 <= k_floor <= floor:
            raise ValueError(f"SparseIOU: k_floor must be in [0, floor={floor}], got {k_floor}")
        if k_floor > 0:  # lowered floors stop at k_floor, the last one is k_floor itself
            refine = tuple(d for d in refine if floor / d > k_floor) + (floor / k_floor,)

        def stage(gt, anchor, t, trim, last=False):
            """Pairs worth a row, and which ground truths have ``k`` pairs ``>= t``.

            ``trim``: keep only each complete ground truth's ``k`` best pairs (ties included),
            not every pair ``>= t`` (the refining stages, whose floors are below ``floor``);
            ``last``: the others keep all their pairs ``>= t`` (the ``k_floor`` stage).
            """
            gt, anchor = gt.long(), anchor.long()
            # the same elementwise formula as the dense matrix: identical values
            iou = box_iou(anchors[anchor][:, None, :], flat[gt][:, None, :], offset)[:, 0, 0]
            best = iou.new_full((nf,), PAD_IOU).scatter_reduce(0, gt, iou, "amax")
            ok = (iou > 0) & real[gt]
            band = iou + eps >= best[gt]
            if not trim:
                keep = ((iou >= t) | band) & ok
                complete = torch.bincount(gt[keep & (iou >= t)], minlength=nf) >= kk
                return gt[keep], anchor[keep], complete
            # k-th largest IoU of each ground truth: sort by (gt, IoU descending)
            order = torch.argsort(iou, descending=True, stable=True)
            order = order[torch.argsort(gt[order], stable=True)]
            g_sorted = gt[order]
            per_gt = torch.bincount(g_sorted, minlength=nf)
            starts = per_gt.cumsum(0) - per_gt
            rank = torch.arange(g_sorted.numel(), device=dev) - starts[g_sorted]
            at_k = rank == kk - 1
            kth = iou.new_full((nf,), float("-inf"))
            kth[g_sorted[at_k]] = iou[order][at_k]
            complete = kth >= t
            keep = ((iou >= kth[gt]) | band) & ok & complete[gt]
            if last:
                keep |= ok & ~complete[gt] & ((iou >= t) | band)
            return gt[keep], anchor[keep], complete

        gt, anchor, complete = stage(*candidates(None, floor), floor, trim=False)
        gts, anchs = [gt], [anchor]
        short = (real & ~complete).nonzero().squeeze(1)
        for i, div in enumerate(refine):  # small boxes: a lower floor, still from windows
            if not short.numel() or kk == 0:
                break
            last = k_floor > 0 and i == len(refine) - 1
            t = k_floor if last else floor / div
            gt, anchor, complete = stage(*candidates(short, t), t, trim=True, last=last)
            gts.append(gt)
            anchs.append(anchor)
            short = short[~complete[short]]
        if short.numel() and kk > 0 and k_floor <= 0:  # still short: k best from a dense column
            col = box_iou(anchors, flat[short], offset)  # (N, S)
            kth = col.topk(kk, dim=0).values[-1]  # (S,)
            top = col.max(dim=0).values
            sel = ((col >= kth) | (col + eps >= top)) & (col > 0)
            a_idx, s_idx = sel.nonzero(as_tuple=True)
            gts.append(short[s_idx])
            anchs.append(a_idx)
        gt_all, anchor_all = torch.cat(gts), torch.cat(anchs)

        # one row per (image, anchor), ascending
        key = torch.unique(torch.div(gt_all, max(m, 1), rounding_mode="floor") * n + anchor_all)
        img = torch.div(key, n, rounding_mode="floor")
        per_image = torch.bincount(img, minlength=bsz)
        r = int(per_image.max()) if key.numel() else 0
        starts = torch.cumsum(per_image, 0) - per_image
        slot = torch.arange(key.numel(), device=dev) - starts[img]
        rows = torch.full((bsz, r), n, dtype=torch.long, device=dev)
        rows[img, slot] = key - img * n

        # exact IoU of the kept rows with every ground truth of their image
        used = rows < n
        sub = box_iou(anchors[rows.clamp(max=max(n - 1, 0))], boxes, offset)  # (B, R, M)
        sub = sub.masked_fill_(is_padding(boxes)[:, None, :], PAD_IOU)
        sub = sub.masked_fill_(~used[..., None], float("-inf"))
        has_gt = real.reshape(bsz, m).any(dim=1)
        return cls(rows, sub, n, float(floor), kk, float(eps), has_gt, float(k_floor))

    @classmethod
    def from_grid(
        cls,
        grid,
        boxes: torch.Tensor,
        floor: float,
        k: int | None = None,
        eps: float = 1e-12,
        anchors: torch.Tensor | None = None,
        k_floor: float = 0.0,
    ) -> SparseIOU:
        """Build for the anchors of an ``AnchorGrid`` (``anchors``: its corner anchors if
        already at hand), with candidates from the grid's windows; ``boxes`` ``(B, M, 4)``
        corner ground truths in the grid's coordinates. Other arguments as ``from_pairs``."""
        if eps >= floor / 9:
            raise ValueError(f"SparseIOU.from_grid: eps={eps} must be far below floor={floor}")
        if anchors is None:
            anchors = grid.anchors("corner", device=boxes.device, dtype=boxes.dtype)
        flat = boxes.reshape(-1, 4)

        def source(idx, t):
            t = t - eps  # the eps band below t
            if idx is None:
                return grid.candidates(boxes, t)
            gt, anchor = grid.candidates(flat[idx].reshape(1, -1, 4), t)
            return idx[gt], anchor

        return cls.from_candidates(anchors, boxes, source, floor, k, eps, k_floor=k_floor)

    @classmethod
    def dense_pairs(cls, n: int, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (ground truth, anchor) pair: a candidate source that needs no structure."""
        nf = boxes.reshape(-1, 4).shape[0]
        gt = torch.arange(nf, device=boxes.device).repeat_interleave(n)
        anchor = torch.arange(n, device=boxes.device).repeat(nf)
        return gt, anchor
