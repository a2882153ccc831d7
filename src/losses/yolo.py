"""YOLOv3 loss (ultralytics/yolov3, archive branch: ``build_targets`` + ``compute_loss``),
batched over the images with padded targets and no host synchronisation.

Inputs: the head outputs ``p_l`` (B, 3, ny, nx, 5 + C) of each YOLO layer, its three pixel
anchors and stride; targets as the ``src/data`` collate gives them: ``boxes`` (B, M, 4) corner
pixels of the network input, ``labels`` (B, M) with -1 padding, optional ``crowd`` (B, M)
(excluded from targets). A target counts when its label is >= 0, it is not a crowd, and its
width and height are > 0 (degenerate boxes are never targets).

Target assignment (``assignment``):

* ``archive`` (default): in grid units of layer l (``g = box / stride``), every anchor of the
  layer whose width-height IoU with the target (both aligned at the origin) is > ``iou_t``
  (0.2); the cell is ``floor(g_xy)`` clamped into the grid. A target can be positive on several
  anchors and layers.
* ``darknet`` (the paper): the one best anchor of all nine (first on ties), on its layer; an
  anchor whose decoded prediction has IoU > ``ignore_thresh`` (0.7) with any ground truth
  (crowds included) is not penalised for objectness unless it is a positive.

The assignment is computed densely for every (layer anchor, image, target) triple with a mask,
so the number of positives never has to be read on the host; the loss is the archive's with
``red = "mean"``:

* box: 1 - GIoU (``src.ops.giou_loss``) of the prediction ``(sigmoid(t_xy), exp(t_wh).clamp(
  max=1e3) * anchor)`` (computed as ``exp(min(t, log 1e3))``: the same values, and a zero
  instead of NaN gradient where ``exp`` overflows) against the target ``(g_xy - cell, g_wh)``,
  both relative to the cell, mean over positives, summed over layers; ``box_loss: mse`` is
  the paper's sum-squared error on ``(sigmoid(t_xy) - (g_xy - cell), t_wh - log(g_wh /
  anchor))`` weighted by ``2 - w h`` (w, h as fractions of the input), mean over positives;
* objectness: BCE with logits of every anchor of every cell against ``(1 - gr) + gr *
  GIoU.detach().clamp(0)`` at positives (0 elsewhere), mean over all anchors and cells of the
  layer (``darknet``: ignored anchors contribute 0 to the sum, the count stays);
* class: BCE with logits against one-hot labels at the positives, mean over positives x C
  (only when C > 1, as the archive);
* gains ``box_gain`` 3.54, ``obj_gain`` 64.3, ``cls_gain`` 37.4 (the archive's ``hyp``). The
  archive rescales two things outside ``compute_loss``; both are reproduced behind flags:
  ``cls_gain_by_classes`` (train.py ``hyp['cls'] *= nc / 80``) and ``batch_scale`` (train.py
  ``loss *= batch_size / 64``, the nominal batch).

Where the archive is sloppy we are exact (``tests/yolov3/test_loss.py`` shows each):

* a target exactly on the right or bottom edge (``g_x = nx``) sits in the clamped last cell,
  and its box target is taken relative to that cell (offset 1.0); the archive takes the offset
  from the unclamped floor (0.0), i.e. a box one cell off (``reference_edge=True`` restores it);
* two targets on one cell and anchor: the archive's ``tobj[b, a, gj, gi] = ...`` keeps whichever
  write lands last (unspecified on CUDA); here the higher objectness target (higher GIoU) wins,
  deterministically. The box and class terms count both, as the archive;
* GIoU of degenerate pairs (zero-size predictions from ``exp`` underflow, zero-area enclosing
  boxes) is finite (``src.ops`` divides by max(area, tiny)), where torchvision's gives NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.ops import box_iou, giou_loss
from src.utils.errors import UserError

ASSIGNMENTS = ("archive", "darknet")
BOX_LOSSES = ("giou", "mse")


class YoloLossConfigError(UserError):
    pass


def wh_iou(anchors: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """IoU of boxes aligned at the origin: anchors (A, 2) x wh (..., 2) -> (A, ...)."""
    a = anchors.view(anchors.shape[0], *([1] * (wh.dim() - 1)), 2)
    inter = torch.minimum(a, wh[None]).clamp(min=0).prod(-1)
    union = a.prod(-1) + wh[None].clamp(min=0).prod(-1) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def _exp_clamped(t: torch.Tensor, limit: float = 1e3) -> torch.Tensor:
    """``exp(t).clamp(max=limit)`` with a finite gradient: the archive's form backpropagates
    ``0 * exp(t) = 0 * inf = NaN`` once ``exp`` overflows (t > 88 in float32)."""
    return t.clamp(max=math.log(limit)).exp().clamp(max=limit)


def cxcywh_to_corners(b: torch.Tensor) -> torch.Tensor:
    half = b[..., 2:4] / 2
    return torch.cat((b[..., :2] - half, b[..., :2] + half), -1)


@dataclass
class LayerTargets:
    """Dense targets of one YOLO layer over (anchor a, image b, target m), shape (3, B, M):
    ``mask`` which triples are positives; ``b, a, gj, gi`` the cell; ``tbox`` (3, B, M, 4) the
    box target (x, y relative to the cell, w, h in grid units); ``anchor`` (3, 1, 1, 2) in grid
    units; ``cls`` the labels. ``compact()`` lists the positives in the archive's order
    (anchor-major, then image, then target)."""

    mask: torch.Tensor
    b: torch.Tensor
    a: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    tbox: torch.Tensor
    anchor: torch.Tensor
    cls: torch.Tensor

    def compact(self) -> dict[str, torch.Tensor]:
        m = self.mask
        anchors = self.anchor.expand(*m.shape, 2)
        return {
            "b": self.b[m],
            "a": self.a[m],
            "gj": self.gj[m],
            "gi": self.gi[m],
            "tbox": self.tbox[m],
            "anchor": anchors[m],
            "cls": self.cls[m],
        }


class YoloLoss(nn.Module):
    kind = "yolo"

    def __init__(
        self,
        box_loss: str = "giou",
        assignment: str = "archive",
        iou_t: float = 0.2,
        ignore_thresh: float = 0.7,
        gr: float = 1.0,
        box_gain: float = 3.54,
        obj_gain: float = 64.3,
        cls_gain: float = 37.4,
        cls_gain_by_classes: bool = True,
        batch_scale: bool = True,
        nominal_batch: int = 64,
        reference_edge: bool = False,
    ):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise YoloLossConfigError(
                f"loss.box_loss={box_loss!r}: choose one of {', '.join(BOX_LOSSES)}"
            )
        if assignment not in ASSIGNMENTS:
            raise YoloLossConfigError(
                f"loss.assignment={assignment!r}: choose one of {', '.join(ASSIGNMENTS)}"
            )
        if not 0.0 <= gr <= 1.0:
            raise YoloLossConfigError(f"loss.gr={gr}: must be in [0, 1]")
        self.box_loss, self.assignment = box_loss, assignment
        self.iou_t, self.ignore_thresh = float(iou_t), float(ignore_thresh)
        self.gr = float(gr)  # the Task's warm-up may ramp it
        self.box_gain, self.obj_gain, self.cls_gain = (
            float(box_gain),
            float(obj_gain),
            float(cls_gain),
        )
        self.cls_gain_by_classes, self.batch_scale = bool(cls_gain_by_classes), bool(batch_scale)
        self.nominal_batch = int(nominal_batch)
        self.reference_edge = bool(reference_edge)

    # ---- targets ---------------------------------------------------------------------
    def valid_targets(
        self, boxes: torch.Tensor, labels: torch.Tensor, crowd: torch.Tensor | None
    ) -> torch.Tensor:
        wh = boxes[..., 2:4] - boxes[..., 0:2]
        valid = (labels >= 0) & (wh > 0).all(-1)
        if crowd is not None:
            valid = valid & ~crowd.bool()
        return valid

    def build_targets(
        self,
        shapes: Sequence[tuple[int, int]],
        boxes: torch.Tensor,
        labels: torch.Tensor,
        anchors: Sequence[torch.Tensor],
        strides: Sequence[int],
        crowd: torch.Tensor | None = None,
    ) -> list[LayerTargets]:
        """Targets of each layer; ``shapes`` the (ny, nx) of each layer's grid."""
        valid = self.valid_targets(boxes, labels, crowd)
        B, M = labels.shape
        dev = boxes.device
        cxcywh = torch.cat(
            ((boxes[..., 0:2] + boxes[..., 2:4]) / 2, boxes[..., 2:4] - boxes[..., 0:2]), -1
        )
        if self.assignment == "darknet":
            all_anchors = torch.cat([a.to(boxes.dtype) for a in anchors])  # (3 L, 2) pixels
            best = wh_iou(all_anchors, cxcywh[..., 2:4]).argmax(0)  # (B, M), first on ties
        out = []
        for layer, ((ny, nx), anchor_px, stride) in enumerate(zip(shapes, anchors, strides)):
            anchor = anchor_px.to(boxes.dtype) / stride  # (3, 2) grid units, the archive's vec
            na = anchor.shape[0]
            g = cxcywh / stride  # (B, M, 4)
            if self.assignment == "archive":
                mask = (wh_iou(anchor, g[..., 2:4]) > self.iou_t) & valid[None]
            else:
                ids = torch.arange(layer * na, (layer + 1) * na, device=dev).view(na, 1, 1)
                mask = (best[None] == ids) & valid[None]
            gxy = g[..., 0:2]
            cell = gxy.long()  # truncation, as the archive (negative padding rows: masked)
            gi = cell[..., 0].clamp(0, nx - 1)
            gj = cell[..., 1].clamp(0, ny - 1)
            if self.reference_edge:
                offset = gxy - gxy.floor()
            else:
                offset = gxy - torch.stack((gi, gj), -1).to(gxy.dtype)
            tbox = torch.cat((offset, g[..., 2:4]), -1)
            shape = (na, B, M)
            out.append(
                LayerTargets(
                    mask=mask,
                    b=torch.arange(B, device=dev).view(1, B, 1).expand(shape),
                    a=torch.arange(na, device=dev).view(na, 1, 1).expand(shape),
                    gj=gj[None].expand(shape),
                    gi=gi[None].expand(shape),
                    tbox=tbox[None].expand(na, B, M, 4),
                    anchor=anchor.view(na, 1, 1, 2),
                    cls=labels.clamp(min=0)[None].expand(shape),
                )
            )
        return out

    # ---- loss ------------------------------------------------------------------------
    def forward(
        self,
        outputs: Sequence[torch.Tensor],
        boxes: torch.Tensor,
        labels: torch.Tensor,
        anchors: Sequence[torch.Tensor],
        strides: Sequence[int],
        crowd: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "box", "obj", "cls", "num_targets"}`` (scalars; ``loss`` = the gained,
        scaled sum)."""
        B = outputs[0].shape[0]
        nc = outputs[0].shape[-1] - 5
        input_h, input_w = outputs[0].shape[2] * strides[0], outputs[0].shape[3] * strides[0]
        shapes = [(p.shape[2], p.shape[3]) for p in outputs]
        targets = self.build_targets(shapes, boxes, labels, anchors, strides, crowd)
        zero = outputs[0].new_zeros(())
        lbox, lobj, lcls, n_total = zero, zero, zero, zero
        for p, t, anchor_px, stride in zip(outputs, targets, anchors, strides):
            na, ny, nx = p.shape[1], p.shape[2], p.shape[3]
            w = t.mask.to(p.dtype)  # (3, B, M)
            n = w.sum()
            ps = p[t.b, t.a, t.gj, t.gi]  # (3, B, M, 5 + C)
            pxy = ps[..., 0:2].sigmoid()
            pwh = _exp_clamped(ps[..., 2:4]) * t.anchor
            pbox = torch.cat((pxy, pwh), -1)
            tbox = t.tbox.to(p.dtype)
            giou = 1.0 - giou_loss(cxcywh_to_corners(pbox), cxcywh_to_corners(tbox))
            if self.box_loss == "giou":
                per = 1.0 - giou
            else:
                twh_log = torch.log(tbox[..., 2:4].clamp(min=1e-6) / t.anchor)
                err = (pxy - tbox[..., 0:2]).square().sum(-1) + (
                    ps[..., 2:4] - twh_log
                ).square().sum(-1)
                area = tbox[..., 2] * tbox[..., 3] * (stride * stride) / (input_h * input_w)
                per = err * (2.0 - area)
            per = torch.where(t.mask, per, torch.zeros_like(per))
            lbox = lbox + per.sum() / n.clamp(min=1)

            # objectness target: the higher value wins where two targets share a cell+anchor
            flat = ((t.b * na + t.a) * ny + t.gj) * nx + t.gi  # (3, B, M)
            value = (1.0 - self.gr) + self.gr * giou.detach().clamp(0)
            value = torch.where(t.mask, value, torch.full_like(value, -1.0))
            tobj = p.new_zeros(B * na * ny * nx)
            tobj.scatter_reduce_(0, flat.reshape(-1), value.reshape(-1), "amax")
            tobj = tobj.view(B, na, ny, nx)
            bce = F.binary_cross_entropy_with_logits(p[..., 4], tobj, reduction="none")
            if self.assignment == "darknet":
                positive = p.new_zeros(B * na * ny * nx)
                positive.scatter_reduce_(0, flat.reshape(-1), w.reshape(-1), "amax")
                ignore = self._ignored(p, anchor_px, stride, boxes, labels)
                keep = (positive.view(B, na, ny, nx) > 0) | ~ignore
                bce = torch.where(keep, bce, torch.zeros_like(bce))
            lobj = lobj + bce.mean()

            if nc > 1:
                classes = torch.arange(nc, device=p.device)
                onehot = (t.cls[..., None] == classes).to(p.dtype)  # no host sync
                c = F.binary_cross_entropy_with_logits(ps[..., 5:], onehot, reduction="none")
                c = torch.where(t.mask[..., None], c, torch.zeros_like(c))
                lcls = lcls + c.sum() / (n * nc).clamp(min=1)
            n_total = n_total + n
        cls_gain = self.cls_gain * (nc / 80.0 if self.cls_gain_by_classes else 1.0)
        lbox, lobj, lcls = lbox * self.box_gain, lobj * self.obj_gain, lcls * cls_gain
        loss = lbox + lobj + lcls
        if self.batch_scale:
            loss = loss * (B / self.nominal_batch)
        return {
            "loss": loss,
            "box": lbox.detach(),
            "obj": lobj.detach(),
            "cls": lcls.detach(),
            "num_targets": n_total.detach(),
        }

    @torch.no_grad()
    def _ignored(self, p, anchor_px, stride, boxes, labels) -> torch.Tensor:
        """(B, 3, ny, nx): anchors whose decoded box has IoU > ignore_thresh with a ground
        truth of the image (any box with a label, crowds included)."""
        B, na, ny, nx = p.shape[:4]
        ys = torch.arange(ny, device=p.device, dtype=p.dtype)
        xs = torch.arange(nx, device=p.device, dtype=p.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((gx, gy), -1).view(1, 1, ny, nx, 2)
        xy = (p[..., 0:2].sigmoid() + grid) * stride
        wh = _exp_clamped(p[..., 2:4]) * anchor_px.to(p.dtype).view(1, na, 1, 1, 2)
        pred = cxcywh_to_corners(torch.cat((xy, wh), -1)).view(B, -1, 4)
        gt = torch.where((labels >= 0)[..., None], boxes.to(p.dtype), torch.zeros_like(boxes))
        iou = box_iou(pred, gt)  # (B, N, M); zero boxes give 0
        best = iou.amax(-1) if iou.shape[-1] else iou.new_zeros(iou.shape[:2])
        return (best > self.ignore_thresh).view(B, na, ny, nx)
