"""Non-maximum suppression: ``nms`` and class-aware ``batched_nms``.

Greedy NMS: visit boxes by decreasing score (ties: lower index first, a stable sort); keep a
box unless a kept, higher-ranked box (of the same class, for batched_nms) overlaps it with
IoU > iou_threshold (strictly). IoU uses ``offset`` like every box op (src/ops/boxes.py).
Returns int64 indices into ``boxes``, highest score first. No autograd (indices only).

The reference needs no Python loop over boxes: with the (N, N) "i suppresses j" matrix
S (i ranked before j, same class, IoU > threshold), keep is the unique fixed point of
keep[j] = not any_i(keep[i] and S[i, j]). It is solved block by block in rank order (boxes
of a block first lose to kept boxes of earlier blocks, then the block's fixed point is
iterated from "not suppressed yet", exact after at most longest-chain + 1 rounds). Memory is
O(K x block) for K kept boxes.
The kernel path (ops_cuda/nms.cu) builds the same matrix as 64-bit masks and reduces it in
one GPU thread.

On the CPU in the default ``auto`` backend, the suppression runs in torchvision's compiled
``nms`` (``_nms_torchvision``), made exactly this algorithm: boxes are put in our stable rank
order first and handed strictly decreasing rank scores (so its sort cannot break ties
differently), the legacy ``offset`` is a shift of the far corner (IoU with offset 1 of
``(x1, y1, x2, y2)`` equals IoU with offset 0 of ``(x1, y1, x2 + 1, y2 + 1)``: widths and
intersections both gain the 1), and classes are kept apart by moving each class to its own
region of the plane (``idx * (extent + offset + 1)``). All of it in float64, where those shifts
are exact for image coordinates; so the result equals ``nms_reference`` on float64 boxes
exactly, and on float32 boxes except where an IoU lies within float32 rounding of the
threshold (the reference computes IoUs in the boxes' dtype). ``use_backend("reference")``
keeps the pure-torch path.
"""

from __future__ import annotations

import numpy as np
import torch

from ._backend import get_backend, kernel_device
from .boxes import box_iou_reference


def _check(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None = None) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: boxes must be (N, 4) (x1, y1, x2, y2); got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"nms: scores must be (N,) = ({boxes.shape[0]},); got {tuple(scores.shape)}"
        )
    if idxs is not None and idxs.shape != boxes.shape[:1]:
        raise ValueError(
            f"batched_nms: idxs must be (N,) = ({boxes.shape[0]},); got {tuple(idxs.shape)}"
        )


def _order(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def nms_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    offset: float = 0,
    idxs: torch.Tensor | None = None,
    block: int = 256,
) -> torch.Tensor:
    """Vectorised torch NMS (``idxs`` given: only boxes of equal idxs suppress each other).

    Boxes are resolved in rank order, ``block`` at a time: a block's boxes first lose to the
    boxes kept in earlier blocks (one IoU matrix, kept x block), then the block's own fixed
    point is iterated. Cost O(K N + N block) IoUs for K kept boxes."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = _order(scores)
    b = boxes[order]
    c = None if idxs is None else idxs[order]

    def suppresses(i: slice | torch.Tensor, j: slice) -> torch.Tensor:
        over = box_iou_reference(b[i], b[j], offset) > iou_threshold
        if c is not None:
            over &= c[i][:, None] == c[j][None, :]
        return over

    kept = []  # per block, positions (in rank order) of kept boxes
    for start in range(0, n, block):  # a loop over blocks, not boxes
        end = min(start + block, n)
        rows = torch.cat(kept) if kept else order[:0]
        cand = ~suppresses(rows, slice(start, end)).any(dim=0)
        sub = torch.triu(suppresses(slice(start, end), slice(start, end)), diagonal=1)
        k = cand
        for _ in range(end - start + 1):  # exact after (longest chain in block + 1) rounds
            new = cand & ~(sub & k[:, None]).any(dim=0)
            if torch.equal(new, k):
                break
            k = new
        kept.append(start + torch.nonzero(k).flatten())
    return order[torch.cat(kept)]


def _nms_kernel(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    offset: float,
    idxs: torch.Tensor | None,
) -> torch.Tensor:
    from ops_cuda.launch import launch
    from ops_cuda.registry import CTYPE

    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    work_dtype = boxes.dtype if boxes.dtype in (torch.float32, torch.float64) else torch.float32
    order = _order(scores)
    b = boxes[order].to(work_dtype).contiguous()
    c = None if idxs is None else idxs[order].to(torch.int64).contiguous()
    col_blocks = -(-n // 64)
    mask = torch.empty(n * col_blocks, dtype=torch.int64, device=boxes.device)
    launch(
        "nms.cu",
        "nms_mask",
        CTYPE[work_dtype],
        boxes.device,
        n * col_blocks,
        (
            b,
            c,
            np.int64(n),
            np.int64(col_blocks),
            np.float64(iou_threshold),
            np.float64(offset),
            mask,
        ),
    )
    removed = torch.zeros(col_blocks, dtype=torch.int64, device=boxes.device)
    keep = torch.empty(n, dtype=torch.bool, device=boxes.device)
    launch(
        "nms.cu",
        "nms_reduce",
        None,
        boxes.device,
        1,
        (mask, np.int64(n), np.int64(col_blocks), removed, keep),
        single_thread=True,
    )
    return order[keep]


def _nms_torchvision(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    offset: float,
    idxs: torch.Tensor | None,
) -> torch.Tensor:
    """torchvision's compiled NMS, run as our algorithm (see the module docstring)."""
    import torchvision

    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = _order(scores)
    b = boxes[order].to(torch.float64)
    if offset:
        b = torch.cat((b[:, :2], b[:, 2:] + offset), 1)
    if idxs is not None:
        lo = b.min()
        extent = b.max() - lo + 1.0
        b = b - lo + (idxs[order].to(torch.float64) * extent)[:, None]
    rank = torch.arange(n, 0, -1, dtype=torch.float64, device=boxes.device)
    return order[torchvision.ops.nms(b, rank, float(iou_threshold))]


def _cpu_fast(boxes: torch.Tensor) -> bool:
    return get_backend() == "auto" and boxes.device.type == "cpu" and boxes.is_floating_point()


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: float = 0
) -> torch.Tensor:
    """Greedy NMS. boxes (N, 4), scores (N,) -> kept indices (K,) int64, highest score first."""
    _check(boxes, scores)
    if kernel_device(boxes) is not None:
        return _nms_kernel(boxes, scores, float(iou_threshold), float(offset), None)
    if _cpu_fast(boxes):
        return _nms_torchvision(boxes, scores, float(iou_threshold), float(offset), None)
    return nms_reference(boxes, scores, iou_threshold, offset)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
    offset: float = 0,
) -> torch.Tensor:
    """NMS within each class: boxes (N, 4), scores (N,), idxs (N,) integer class (or image)
    ids; boxes with different idxs never suppress each other. Returns kept indices (K,) int64
    sorted by decreasing score. Classes never meet: the reference masks by class, the CPU path
    separates them in float64 (module docstring)."""
    _check(boxes, scores, idxs)
    if kernel_device(boxes) is not None:
        return _nms_kernel(boxes, scores, float(iou_threshold), float(offset), idxs)
    if _cpu_fast(boxes):
        return _nms_torchvision(boxes, scores, float(iou_threshold), float(offset), idxs)
    return nms_reference(boxes, scores, iou_threshold, offset, idxs)
