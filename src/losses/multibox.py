"""RetinaFace MultiBox loss (biubug6/Pytorch_Retinaface ``MultiBoxLoss``), fully batched.

Target assignment, per image but computed for the whole batch at once (no Python loop over
images), from the detection toolkit in ``src/nn`` and the ops in ``src/ops``:

1. IoU of every prior (``cxcywh`` -> corners) with every face: ``BBoxBatchIOU`` (padding rows of
   -1 get IoU -1 and take part in nothing).
2. A face whose best prior IoU is below ``ignore_thresh`` (0.2) is ignored: it forces nothing.
3. Each kept face forces its best prior (first best on ties); when several kept faces force the
   same prior, the one with the highest index wins (the reference's loop order). Other priors
   take their best face when its IoU is ``>= overlap_thresh`` (0.35, ``MaximumMatcher``).
4. Box targets: ``NormalizedBoxCenterEncoder`` with stds ``(v0, v0, v1, v1)``; landmark targets:
   ``NormalizedLandmarkCenterEncoder`` with stds ``(v0, v0)``, variances ``[0.1, 0.2]``.
5. Faces with label -1 (no landmarks) are positives for the class and box losses and excluded
   from the landmark loss (so is a face whose landmarks are all -1).
6. Hard negative mining ``neg_pos_ratio``:1 (7) from the background cross-entropy
   (``HardNegativeSampler``); images without positives contribute no negatives, as in the
   reference.

Loss = ``loc_weight`` (2) * loc + cls + landm, where loc and cls are sums over positives (and
mined negatives) divided by the number of positives in the batch, and landm is divided by the
number of landmark positives only (each at least 1).

Reference bug fixed (``reference_matching=False``, the default): the reference's forcing loop
runs over *all* faces, ignored ones included, so an ignored tiny face whose best prior is also a
kept face's best prior steals it (when it comes later in the list), and an ignored face's best
prior that some other face matched with IoU >= 0.35 gets the ignored face's box as target.
``reference_matching=True`` restores that behaviour (for reproducing published numbers).

Options: ``landmark_loss`` ``smooth_l1`` (reference) | ``wing``; ``classification`` ``ce``
(with hard negative mining, reference) | ``focal`` (sigmoid focal loss on the logit difference,
which for two classes is the softmax focal loss, over all priors, normalised by positives).

What could move into ``src/nn``: ``force_best_anchors`` below (the SSD/RetinaFace "each ground
truth keeps its best anchor" rule, with a validity mask) is a matcher the toolkit lacks;
``BipartiteMatcher`` is a global greedy matching, which is not the reference's rule.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.nn import (
    BBoxBatchIOU,
    HardNegativeSampler,
    MaximumMatcher,
    NormalizedBoxCenterEncoder,
    NormalizedLandmarkCenterEncoder,
)
from src.nn.bbox import center_to_corner, is_padding
from src.nn.coder import gather_matched
from src.ops import sigmoid_focal_loss, smooth_l1_loss, wing_loss

__all__ = ["MultiBoxLoss", "MultiBoxTargets", "force_best_anchors"]

LANDMARK_LOSSES = ("smooth_l1", "wing")
CLASSIFICATIONS = ("ce", "focal")


def force_best_anchors(best_anchor: Tensor, forcing: Tensor, num_anchors: int) -> Tensor:
    """For every anchor, the highest-index forcing ground truth whose best anchor it is.

    Args:
        best_anchor: ``(B, M)`` index of each ground truth's best anchor.
        forcing: ``(B, M)`` bool, the ground truths that force their best anchor.
        num_anchors: N.

    Returns:
        ``(B, N)`` int64 ground-truth index, -1 where no forcing ground truth picked the anchor.
        Deterministic (``scatter_reduce`` with ``amax``): the last ground truth wins, as in a
        sequential ``for j: best_truth_idx[best_prior_idx[j]] = j`` loop.
    """
    b, m = best_anchor.shape
    out = torch.full((b, num_anchors), -1, dtype=torch.long, device=best_anchor.device)
    if m == 0:
        return out
    j = torch.arange(m, device=best_anchor.device).expand(b, m)
    src = torch.where(forcing, j, torch.full_like(j, -1))
    return out.scatter_reduce_(1, best_anchor.long(), src, reduce="amax", include_self=True)


@dataclass
class MultiBoxTargets:
    """Targets of a batch: ``matches`` (B, P) face index or -1 (background), ``loc`` (B, P, 4),
    ``landm`` (B, P, 10) and ``landm_mask`` (B, P) bool (positives whose face has landmarks)."""

    matches: Tensor
    loc: Tensor
    landm: Tensor
    landm_mask: Tensor

    @property
    def positive(self) -> Tensor:
        return self.matches >= 0


class MultiBoxLoss(nn.Module):
    """RetinaFace MultiBox loss.

    Args:
        num_classes: 2 (background, face); only 2 is supported.
        overlap_thresh: IoU at which a prior matches its best face (0.35).
        ignore_thresh: a face whose best prior IoU is below it is ignored (0.2).
        neg_pos_ratio: hard negatives per positive (7).
        variances: box / landmark encoding variances ``[0.1, 0.2]``.
        loc_weight, cls_weight, landm_weight: weights of the three terms (2, 1, 1).
        landmark_loss: ``smooth_l1`` | ``wing`` (``wing_w``, ``wing_eps``).
        classification: ``ce`` (with hard negative mining) | ``focal`` (``focal_alpha``,
            ``focal_gamma``, over all priors).
        reference_matching: True restores the reference's matching bug (see module doc).

    ``forward(predictions, priors, boxes, labels, landmarks)``:
        predictions: ``(loc (B, P, 4), conf (B, P, 2) logits, landm (B, P, 10))``;
        priors: ``(P, 4)`` normalised ``cxcywh``;
        boxes: ``(B, M, 4)`` normalised corners, padding rows all -1;
        labels: ``(B, M)`` 1 (face with landmarks) or -1 (face without landmarks);
        landmarks: ``(B, M, 10)`` normalised ``x, y`` of five points.
    Returns ``{"loss", "loc", "cls", "landm", "num_pos"}`` (0-dim tensors; only ``loss`` and
    the parts carry gradients).
    """

    def __init__(
        self,
        num_classes: int = 2,
        overlap_thresh: float = 0.35,
        ignore_thresh: float = 0.2,
        neg_pos_ratio: float = 7.0,
        variances: Sequence[float] = (0.1, 0.2),
        loc_weight: float = 2.0,
        cls_weight: float = 1.0,
        landm_weight: float = 1.0,
        landmark_loss: str = "smooth_l1",
        classification: str = "ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        wing_w: float = 10.0,
        wing_eps: float = 2.0,
        reference_matching: bool = False,
    ):
        super().__init__()
        if num_classes != 2:
            raise ValueError(f"MultiBoxLoss: num_classes must be 2 (background, face), "
                             f"got {num_classes}")
        if landmark_loss not in LANDMARK_LOSSES:
            raise ValueError(f"MultiBoxLoss: landmark_loss={landmark_loss!r}: choose one of "
                             f"{LANDMARK_LOSSES}")
        if classification not in CLASSIFICATIONS:
            raise ValueError(f"MultiBoxLoss: classification={classification!r}: choose one of "
                             f"{CLASSIFICATIONS}")
        v0, v1 = (float(v) for v in variances)
        self.overlap_thresh = float(overlap_thresh)
        self.ignore_thresh = float(ignore_thresh)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.variances = (v0, v1)
        self.loc_weight, self.cls_weight, self.landm_weight = (
            float(loc_weight), float(cls_weight), float(landm_weight))
        self.landmark_loss = landmark_loss
        self.classification = classification
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.wing_w, self.wing_eps = float(wing_w), float(wing_eps)
        self.reference_matching = bool(reference_matching)
        self.iou = BBoxBatchIOU()
        self.matcher = MaximumMatcher(self.overlap_thresh)
        self.box_encoder = NormalizedBoxCenterEncoder(stds=(v0, v0, v1, v1))
        self.landm_encoder = NormalizedLandmarkCenterEncoder(stds=(v0, v0))
        self.sampler = HardNegativeSampler(ratio=self.neg_pos_ratio)

    # ---- target assignment -----------------------------------------------------------
    @torch.no_grad()
    def match(self, priors: Tensor, boxes: Tensor) -> Tensor:
        """``(B, P)`` index of the face each prior is assigned to, -1 for background."""
        bsz, p = boxes.shape[0], priors.shape[0]
        if boxes.shape[1] == 0:
            return torch.full((bsz, p), -1, dtype=torch.long, device=boxes.device)
        anchors = center_to_corner(priors.to(boxes.dtype))
        iou = self.iou(anchors, boxes)  # (B, P, M), -1 for padding faces
        pad = is_padding(boxes)  # (B, M)
        best_iou, best_prior = iou.max(dim=1)  # (B, M) first best prior per face
        valid = (best_iou >= self.ignore_thresh) & ~pad
        by_valid = force_best_anchors(best_prior, valid, p)
        by_threshold = self.matcher(iou)  # best face where IoU >= overlap_thresh
        if not self.reference_matching:
            return torch.where(by_valid >= 0, by_valid, by_threshold)
        # reference: every face forces (the last one wins); positives are still the priors
        # forced by a kept face or above the threshold; an image without any kept face is all
        # background (the reference's early return)
        by_any = force_best_anchors(best_prior, ~pad, p)
        pos = ((by_valid >= 0) | (by_threshold >= 0)) & valid.any(dim=1, keepdim=True)
        assigned = torch.where(by_any >= 0, by_any, by_threshold)
        return torch.where(pos, assigned, torch.full_like(assigned, -1))

    @torch.no_grad()
    def assign(self, priors: Tensor, boxes: Tensor, labels: Tensor,
               landmarks: Tensor) -> MultiBoxTargets:
        """Matches and encoded targets for a batch (see ``forward`` for the shapes)."""
        if boxes.shape[1] == 0:  # no face in the whole batch: one padding row keeps shapes
            boxes = boxes.new_full((boxes.shape[0], 1, 4), -1.0)
            labels = labels.new_full((labels.shape[0], 1), -1)
            landmarks = landmarks.new_full((landmarks.shape[0], 1, 10), -1.0)
        matches = self.match(priors, boxes)
        samples = (matches >= 0).to(boxes.dtype)
        anchors = center_to_corner(priors.to(boxes.dtype))
        loc_t, _ = self.box_encoder(samples, matches, anchors, boxes)
        landm_t, landm_m = self.landm_encoder(samples, matches, anchors,
                                              landmarks.reshape(*landmarks.shape[:2], 10))
        matched_label = gather_matched(labels.unsqueeze(-1), matches).squeeze(-1)
        landm_mask = (landm_m[..., 0] > 0) & (matched_label > 0)
        landm_t = torch.where(landm_mask.unsqueeze(-1), landm_t, torch.zeros_like(landm_t))
        return MultiBoxTargets(matches, loc_t, landm_t, landm_mask)

    # ---- loss ------------------------------------------------------------------------
    def forward(self, predictions: Sequence[Tensor], priors: Tensor, boxes: Tensor,
                labels: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        loc, conf, landm = predictions
        t = self.assign(priors, boxes.to(loc.dtype), labels, landmarks.to(loc.dtype))
        pos = t.positive  # (B, P)
        num_pos = pos.sum()
        n = num_pos.clamp(min=1).to(loc.dtype)
        n_landm = t.landm_mask.sum().clamp(min=1).to(loc.dtype)
        posf = pos.unsqueeze(-1).to(loc.dtype)

        loss_loc = (smooth_l1_loss(loc, t.loc) * posf).sum() / n

        landm_mask = t.landm_mask.unsqueeze(-1).to(landm.dtype)
        if self.landmark_loss == "wing":
            per = wing_loss(landm, t.landm, w=self.wing_w, eps=self.wing_eps)
        else:
            per = smooth_l1_loss(landm, t.landm)
        loss_landm = (per * landm_mask).sum() / n_landm

        target = pos.long()
        if self.classification == "focal":
            logit = (conf[..., 1] - conf[..., 0]).reshape(-1, 1)
            loss_cls = sigmoid_focal_loss(logit, target.reshape(-1), alpha=self.focal_alpha,
                                          gamma=self.focal_gamma, normalization="positive")
        else:
            logp = F.log_softmax(conf, dim=-1)  # (B, P, 2)
            # hard negative mining on the background cross-entropy
            samples = self.sampler(t.matches, -logp[..., 0].detach())
            ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            loss_cls = (ce * (samples != 0).to(ce.dtype)).sum() / n

        total = (self.loc_weight * loss_loc + self.cls_weight * loss_cls
                 + self.landm_weight * loss_landm)
        return {"loss": total, "loc": loss_loc, "cls": loss_cls, "landm": loss_landm,
                "num_pos": num_pos.detach().to(loc.dtype)}
