"""Box ops in corner format (x1, y1, x2, y2). ``offset=1`` is the legacy +1 width (VOC,
py-faster-rcnn, seed 000's ``legacy_box``): width = x2 - x1 + offset.

Conventions shared by the references and the kernels (ops_cuda/boxes.cu): widths, heights and
intersections clamp at 0; a union or enclosing area is divided by after max(value, tiny), so
degenerate boxes give IoU 0 instead of NaN. Worked example: [0,0,10,10] vs [5,5,15,15] has
IoU 25/175 = 0.142857 with offset 0 and 36/206 = 0.174757 with offset 1.

Pairwise ops broadcast leading batch dims: (..., N, 4) x (..., M, 4) -> (..., N, M). They run
the kernel (forward only) when no gradient is needed, else the differentiable reference.
``giou_loss`` (aligned pairs) has a kernel forward and backward.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._backend import kernel_device, reference_backward

REDUCTIONS = ("none", "mean", "sum")


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny if t.is_floating_point() else torch.finfo().tiny


def _span(lo: torch.Tensor, hi: torch.Tensor, offset: float) -> torch.Tensor:
    """max(hi - lo + offset, 0); the offset add is skipped when 0 (same value, one op less)."""
    d = hi - lo
    return (d + offset if offset else d).clamp(min=0)


def box_area(boxes: torch.Tensor, offset: float = 0) -> torch.Tensor:
    """Area of (..., 4) boxes; negative widths/heights clamp to 0."""
    return _span(boxes[..., 0], boxes[..., 2], offset) * _span(boxes[..., 1], boxes[..., 3], offset)


def _overlaps(
    a: list, b: list, area_a: torch.Tensor, area_b: torch.Tensor, offset: float, giou: bool
) -> torch.Tensor:
    """IoU (or GIoU) from per-coordinate tensors a = [x1, y1, x2, y2] and b, broadcastable.
    Works coordinate by coordinate: no (..., N, M, 2) temporaries."""
    inter = _span(torch.maximum(a[0], b[0]), torch.minimum(a[2], b[2]), offset) * _span(
        torch.maximum(a[1], b[1]), torch.minimum(a[3], b[3]), offset
    )
    union = area_a + area_b - inter
    tiny = _tiny(inter)
    iou = inter / union.clamp(min=tiny)
    if not giou:
        return iou
    area_c = _span(torch.minimum(a[0], b[0]), torch.maximum(a[2], b[2]), offset) * _span(
        torch.minimum(a[1], b[1]), torch.maximum(a[3], b[3]), offset
    )
    return iou - (area_c - union) / area_c.clamp(min=tiny)


def _pairwise_reference(boxes1, boxes2, offset, giou):
    a = [boxes1[..., :, None, k] for k in range(4)]
    b = [boxes2[..., None, :, k] for k in range(4)]
    area_a = box_area(boxes1, offset)[..., :, None]
    area_b = box_area(boxes2, offset)[..., None, :]
    return _overlaps(a, b, area_a, area_b, offset, giou)


def box_iou_reference(
    boxes1: torch.Tensor, boxes2: torch.Tensor, offset: float = 0
) -> torch.Tensor:
    """Pairwise IoU in torch: (..., N, 4) x (..., M, 4) -> (..., N, M)."""
    return _pairwise_reference(boxes1, boxes2, offset, giou=False)


def generalized_box_iou_reference(
    boxes1: torch.Tensor, boxes2: torch.Tensor, offset: float = 0
) -> torch.Tensor:
    """Pairwise GIoU in torch: IoU - (C - U) / C with C the enclosing box area."""
    return _pairwise_reference(boxes1, boxes2, offset, giou=True)


def giou_loss_reference(
    boxes1: torch.Tensor, boxes2: torch.Tensor, offset: float = 0
) -> torch.Tensor:
    """Aligned 1 - GIoU in torch: (..., 4) x (..., 4) -> (...)."""
    a = [boxes1[..., k] for k in range(4)]
    b = [boxes2[..., k] for k in range(4)]
    return 1 - _overlaps(
        a, b, box_area(boxes1, offset), box_area(boxes2, offset), offset, giou=True
    )


def _check_boxes(name: str, *boxes: torch.Tensor) -> None:
    for b in boxes:
        if b.dim() < 1 or b.shape[-1] != 4:
            raise ValueError(
                f"{name}: boxes must have a last dim of 4 (x1, y1, x2, y2); "
                f"got shape {tuple(b.shape)}"
            )


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _pairwise_kernel(
    boxes1: torch.Tensor, boxes2: torch.Tensor, offset: float, giou: bool
) -> torch.Tensor:
    from ops_cuda.launch import launch
    from ops_cuda.registry import CTYPE

    out_dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    work_dtype = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    batch = torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    n, m = boxes1.shape[-2], boxes2.shape[-2]
    nb = math.prod(batch)
    b1 = boxes1.to(work_dtype).expand(*batch, n, 4).reshape(nb, n, 4).contiguous()
    b2 = boxes2.to(work_dtype).expand(*batch, m, 4).reshape(nb, m, 4).contiguous()
    out = torch.empty((nb, n, m), dtype=work_dtype, device=b1.device)
    if out.numel() > 0:
        launch(
            "boxes.cu",
            "box_iou_pairwise",
            CTYPE[work_dtype],
            b1.device,
            out.numel(),
            (
                b1,
                b2,
                np.int64(nb),
                np.int64(n),
                np.int64(m),
                np.float64(offset),
                np.int32(1 if giou else 0),
                out,
            ),
        )
    return out.reshape(*batch, n, m).to(out_dtype)


def _use_pairwise_kernel(boxes1: torch.Tensor, boxes2: torch.Tensor) -> bool:
    return (
        boxes1.dim() >= 2
        and boxes2.dim() >= 2
        and not _needs_grad(boxes1, boxes2)
        and boxes1.is_floating_point()
        and boxes2.is_floating_point()
        and kernel_device(boxes1, boxes2) is not None
    )


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, offset: float = 0) -> torch.Tensor:
    """Pairwise IoU: (..., N, 4) x (..., M, 4) -> (..., N, M). Leading dims broadcast."""
    _check_boxes("box_iou", boxes1, boxes2)
    if _use_pairwise_kernel(boxes1, boxes2):
        return _pairwise_kernel(boxes1, boxes2, offset, giou=False)
    return box_iou_reference(boxes1, boxes2, offset)


def generalized_box_iou(
    boxes1: torch.Tensor, boxes2: torch.Tensor, offset: float = 0
) -> torch.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019), in [-1, 1]:
    (..., N, 4) x (..., M, 4) -> (..., N, M). Leading dims broadcast."""
    _check_boxes("generalized_box_iou", boxes1, boxes2)
    if _use_pairwise_kernel(boxes1, boxes2):
        return _pairwise_kernel(boxes1, boxes2, offset, giou=True)
    return generalized_box_iou_reference(boxes1, boxes2, offset)


class GIoULoss(torch.autograd.Function):
    """Kernel path of the aligned GIoU loss on (n, 4) float32/float64 boxes."""

    @staticmethod
    def forward(ctx, boxes1, boxes2, offset):
        from ops_cuda.launch import launch
        from ops_cuda.registry import CTYPE

        b1, b2 = boxes1.contiguous(), boxes2.contiguous()
        n = b1.shape[0]
        out = torch.empty(n, dtype=b1.dtype, device=b1.device)
        launch(
            "boxes.cu",
            "giou_loss_fwd",
            CTYPE[b1.dtype],
            b1.device,
            n,
            (b1, b2, np.int64(n), np.float64(offset), out),
        )
        ctx.save_for_backward(boxes1, boxes2)
        ctx.offset = offset
        return out

    @staticmethod
    def backward(ctx, grad):
        from ops_cuda.launch import launch, upstream
        from ops_cuda.registry import CTYPE

        boxes1, boxes2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            g1, g2 = reference_backward(
                lambda a, b: giou_loss_reference(a, b, ctx.offset),
                (boxes1, boxes2),
                needs[:2],
                grad,
            )
            return g1, g2, None
        b1, b2 = boxes1.contiguous(), boxes2.contiguous()
        n = b1.shape[0]
        g1, g2 = torch.empty_like(b1), torch.empty_like(b2)
        g, g_stride = upstream(grad)
        launch(
            "boxes.cu",
            "giou_loss_bwd",
            CTYPE[b1.dtype],
            b1.device,
            n,
            (b1, b2, np.int64(n), np.float64(ctx.offset), g, g_stride, g1, g2),
        )
        return (g1 if needs[0] else None, g2 if needs[1] else None, None)


def giou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, offset: float = 0, reduction: str = "none"
) -> torch.Tensor:
    """Aligned GIoU loss 1 - GIoU(boxes1[i], boxes2[i]) in [0, 2].

    boxes1, boxes2: (..., 4), broadcastable. Returns (...) for reduction "none", else the
    "mean" or "sum" (torchvision.ops.generalized_box_iou_loss's meaning, without its eps)."""
    _check_boxes("giou_loss", boxes1, boxes2)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {REDUCTIONS}")
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    if (
        boxes1.dtype == boxes2.dtype
        and kernel_device(boxes1, boxes2, dtypes=(torch.float32, torch.float64)) is not None
    ):
        shape = boxes1.shape[:-1]
        loss = GIoULoss.apply(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), float(offset))
        loss = loss.reshape(shape)
    else:
        loss = giou_loss_reference(boxes1, boxes2, offset)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss
