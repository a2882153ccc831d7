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

One matching, on the IoU of the priors that can matter (``assignment``): ``dense`` takes all of
them (``BBoxBatchIOU``, no host synchronisation: the GPU path); ``windowed`` (``auto`` on CPU)
takes the rows of a ``SparseIOU`` (``src.nn.sparse``) of the prior grid the caller passes
(``grid``, the ``src.nn.AnchorGrid`` whose anchors are the priors; ``SparseIOU.from_grid(grid,
boxes, floor=overlap_thresh, k=1, k_floor=ignore_thresh)``: the priors with an IoU >=
``overlap_thresh`` with some face, found from ``AnchorGrid`` windows, and each face's best
priors, with their exact IoU against every face of the image: a few hundred priors per image
instead of 16,800 at 640 px) and scatters the result back to all priors. Why that is exact (in
fixed matching): every prior with a threshold match is a row, with its exact IoU against every
face, so ``MaximumMatcher`` gives the same best face (first on ties); ``k=1`` keeps each face's
best priors where their IoU is >= ``ignore_thresh``, ties included, in ascending prior order, so
whether a face is ignored and a kept face's first best prior are exact; a face without such a
prior reports a best IoU below ``ignore_thresh`` and is ignored (the thresholds must be > 0,
else dense). ``reference_matching`` always runs dense (an ignored face forces its best prior
even at IoU 0: prior 0, which no sparse structure knows). The windowed path then regresses boxes
and landmarks of the positives only (found from the ``(B, P)`` matches) and mines negatives with
one sorted ``topk`` of the logit difference. Same matches, losses and gradients (tests check
it); about 8x faster than the reference's per-image loop at batch 32 / 640 px
(``benchmarks/retinaface.py``), where the dense path is no faster than the loop on CPU.

The SSD/RetinaFace "each ground truth keeps its best anchor" rule is
``src.nn.force_best_anchors``; the sparse IoU is ``src.nn.sparse.SparseIOU`` (any anchor-grid
detector: its matchers and samplers take it in place of the dense IoU).
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
    force_best_anchors,
)
from src.nn.anchor import AnchorGrid, anchor_boxes
from src.nn.bbox import center_to_corner, is_padding
from src.nn.coder import gather_matched
from src.nn.sparse import SparseIOU
from src.ops import sigmoid_focal_loss, smooth_l1_loss, wing_loss

__all__ = ["MultiBoxLoss", "MultiBoxTargets"]

LANDMARK_LOSSES = ("smooth_l1", "wing")
CLASSIFICATIONS = ("ce", "focal")
ASSIGNMENTS = ("auto", "dense", "windowed")


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
        assignment: ``dense`` computes the IoU of every prior with every face (no host
            synchronisation; the GPU path); ``windowed`` only that of the priors that can
            matter (a ``SparseIOU`` of the prior grid: exact, much less work, a few host
            syncs for sizes); ``auto`` = windowed on CPU when ``grid`` is given and the priors
            are its anchors, else dense. ``reference_matching``
            and thresholds <= 0 always run dense (a face's best prior may then have IoU 0).

    ``forward(predictions, priors, boxes, labels, landmarks, grid=None)``:
        predictions: ``(loc (B, P, 4), conf (B, P, 2) logits, landm (B, P, 10))``;
        priors: ``(P, 4)`` normalised ``cxcywh``;
        boxes: ``(B, M, 4)`` normalised corners, padding rows all -1;
        labels: ``(B, M)`` 1 (face with landmarks) or -1 (face without landmarks);
        landmarks: ``(B, M, 10)`` normalised ``x, y`` of five points;
        grid: the ``AnchorGrid`` whose ``center`` anchors are ``priors`` (the model's
            ``anchor_grid(image_size)``; enables ``windowed`` assignment).
    Returns ``{"loss", "loc", "cls", "landm", "num_pos"}`` (0-dim tensors; only ``loss`` and
    the parts carry gradients).
    """

    kind = "multibox"  # what model=retinaface accepts (its Task's `accepts`)

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
        assignment: str = "auto",
    ):
        super().__init__()
        if num_classes != 2:
            raise ValueError(
                f"MultiBoxLoss: num_classes must be 2 (background, face), got {num_classes}"
            )
        if landmark_loss not in LANDMARK_LOSSES:
            raise ValueError(
                f"MultiBoxLoss: landmark_loss={landmark_loss!r}: choose one of {LANDMARK_LOSSES}"
            )
        if classification not in CLASSIFICATIONS:
            raise ValueError(
                f"MultiBoxLoss: classification={classification!r}: choose one of {CLASSIFICATIONS}"
            )
        if assignment not in ASSIGNMENTS:
            raise ValueError(
                f"MultiBoxLoss: assignment={assignment!r}: choose one of {ASSIGNMENTS}"
            )
        v0, v1 = (float(v) for v in variances)
        self.assignment = assignment
        self.overlap_thresh = float(overlap_thresh)
        self.ignore_thresh = float(ignore_thresh)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.variances = (v0, v1)
        self.loc_weight, self.cls_weight, self.landm_weight = (
            float(loc_weight),
            float(cls_weight),
            float(landm_weight),
        )
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
    def match(self, priors: Tensor, boxes: Tensor, grid: AnchorGrid | None = None) -> Tensor:
        """``(B, P)`` index of the face each prior is assigned to, -1 for background.

        One matching (``_match_rows``) on the IoU of the priors that can matter: all of them
        (``BBoxBatchIOU``, dense), or, when ``grid`` is given and the assignment is
        windowed (see ``assignment``), the rows of a ``SparseIOU`` of the prior grid, scattered
        back to all priors (the others are background); the same result either way."""
        bsz, p = boxes.shape[0], priors.shape[0]
        if boxes.shape[1] == 0:
            return torch.full((bsz, p), -1, dtype=torch.long, device=boxes.device)
        anchors = center_to_corner(priors.to(boxes.dtype))
        pad = is_padding(boxes)  # (B, M)
        if not self._windowed(priors, grid, boxes.device):
            return self._match_rows(self.iou(anchors, boxes), pad)  # (B, P, M), -1 padding
        # k=1: each face's best priors (ties included) with exact IoU where that IoU is >=
        # ignore_thresh (k_floor: the others are ignored, reported below it); floor: every pair
        # with IoU >= overlap_thresh, in rows exact against every face (see _floor)
        iou = SparseIOU.from_grid(
            grid,
            boxes,
            floor=self._floor,
            k=1,
            anchors=anchors,
            k_floor=min(self.ignore_thresh, self._floor),
        )
        iou.check_threshold(type(self).__name__, "overlap_thresh", self.overlap_thresh)
        return iou.expand(self._match_rows(iou.iou, pad), -1)

    def _match_rows(self, iou: Tensor, pad: Tensor) -> Tensor:
        """Matching on ``(B, R, M)`` IoU rows (-1 for padding faces, -inf for unused rows) that
        hold, in ascending prior order, every prior with an IoU >= ``overlap_thresh`` and each
        face's best priors: ``(B, R)`` face index or -1."""
        bsz, r, m = iou.shape
        if r == 0:  # no prior overlaps any face (windowed)
            return torch.full((bsz, 0), -1, dtype=torch.long, device=iou.device)
        best_iou, best_row = iou.max(dim=1)  # (B, M) first best prior per face
        valid = (best_iou >= self.ignore_thresh) & ~pad
        by_valid = force_best_anchors(best_row, valid, r)
        by_threshold = self.matcher(iou)  # best face where IoU >= overlap_thresh
        if not self.reference_matching:
            return torch.where(by_valid >= 0, by_valid, by_threshold)
        # reference (dense IoU only, see _windowed): every face forces (the last one wins);
        # positives are still the priors forced by a kept face or above the threshold; an
        # image without any kept face is all background (the reference's early return)
        by_any = force_best_anchors(best_row, ~pad, r)
        pos = ((by_valid >= 0) | (by_threshold >= 0)) & valid.any(dim=1, keepdim=True)
        assigned = torch.where(by_any >= 0, by_any, by_threshold)
        return torch.where(pos, assigned, torch.full_like(assigned, -1))

    @property
    def _floor(self) -> float:
        """The ``SparseIOU`` floor of windowed fixed matching: only the threshold matches need
        every pair above a floor (``overlap_thresh``); which faces are ignored and which prior
        each kept face forces need only each face's best priors, which ``k=1`` keeps (ties
        included) where their IoU is >= ``ignore_thresh`` (``k_floor``). 0 when a threshold
        is <= 0 (a face without any overlap would then count: dense only)."""
        if min(self.ignore_thresh, self.overlap_thresh) <= 0:
            return 0.0
        return self.overlap_thresh

    @torch.no_grad()
    def assign(
        self,
        priors: Tensor,
        boxes: Tensor,
        labels: Tensor,
        landmarks: Tensor,
        grid: AnchorGrid | None = None,
    ) -> MultiBoxTargets:
        """Matches and encoded targets for a batch (see ``forward`` for the shapes)."""
        if boxes.shape[1] == 0:  # no face in the whole batch: one padding row keeps shapes
            boxes = boxes.new_full((boxes.shape[0], 1, 4), -1.0)
            labels = labels.new_full((labels.shape[0], 1), -1)
            landmarks = landmarks.new_full((landmarks.shape[0], 1, 10), -1.0)
        matches = self.match(priors, boxes, grid)
        samples = (matches >= 0).to(boxes.dtype)
        anchors = center_to_corner(priors.to(boxes.dtype))
        loc_t, _ = self.box_encoder(samples, matches, anchors, boxes)
        landm_t, landm_m = self.landm_encoder(
            samples, matches, anchors, landmarks.reshape(*landmarks.shape[:2], 10)
        )
        matched_label = gather_matched(labels.unsqueeze(-1), matches).squeeze(-1)
        landm_mask = (landm_m[..., 0] > 0) & (matched_label > 0)
        landm_t = torch.where(landm_mask.unsqueeze(-1), landm_t, torch.zeros_like(landm_t))
        return MultiBoxTargets(matches, loc_t, landm_t, landm_mask)

    # ---- windowed assignment ------------------------------------------------------------
    def _windowed(self, priors: Tensor, grid: AnchorGrid | None, device: torch.device) -> bool:
        """Whether to assign on a ``SparseIOU`` of the prior grid. Never with
        ``reference_matching`` (an ignored face forces its best prior even at IoU 0: prior 0)
        nor with a threshold <= 0 (a face with no overlap at all would then count)."""
        if self.reference_matching or grid is None or self.assignment == "dense":
            return False
        if self._floor <= 0:
            if self.assignment == "windowed":
                raise ValueError(
                    f"MultiBoxLoss: assignment=windowed needs ignore_thresh and "
                    f"overlap_thresh > 0, got {self.ignore_thresh} and "
                    f"{self.overlap_thresh}"
                )
            return False
        fits = priors.shape[0] == grid.num_anchors
        if fits:  # the grid's anchors (cached tensors: usually the very same object)
            ref = anchor_boxes(grid, "center", False, priors.device, priors.dtype)
            fits = ref is priors or torch.equal(ref, priors)
        if self.assignment == "windowed":
            if not fits:
                raise ValueError(
                    f"MultiBoxLoss: assignment=windowed needs priors that are the center "
                    f"anchors of the grid, got {priors.shape[0]} priors for {grid!r}"
                )
            return True
        return fits and device.type == "cpu"

    # ---- loss ------------------------------------------------------------------------
    def _regression(self, loc, loc_t, pos, landm, landm_t, landm_pos):
        """Summed box and landmark losses over the masked rows (any leading shape)."""
        posf = pos.unsqueeze(-1).to(loc.dtype)
        loss_loc = (smooth_l1_loss(loc, loc_t) * posf).sum()
        if self.landmark_loss == "wing":
            per = wing_loss(landm, landm_t, w=self.wing_w, eps=self.wing_eps)
        else:
            per = smooth_l1_loss(landm, landm_t)
        loss_landm = (per * landm_pos.unsqueeze(-1).to(landm.dtype)).sum()
        return loss_loc, loss_landm

    def _mined_ce_sparse(self, conf: Tensor, pos: Tensor, num_pos: Tensor | None = None) -> Tensor:
        """Summed cross-entropy over the positives and the hard negatives, computed on those
        rows only (the host-synchronising path): the same negatives as ``HardNegativeSampler``
        (the ``floor(ratio * num_pos)`` largest background losses of each image; ties may pick
        other priors of equal loss), from one sorted ``topk`` of the logit difference (the
        background loss ``softplus(conf[1] - conf[0])`` increases with it) instead of a full
        sort."""
        with torch.no_grad():
            if num_pos is None:  # (B,) positives per image
                num_pos = pos.sum(dim=1)
            num_neg = torch.minimum(
                torch.floor(num_pos.to(torch.float64) * self.neg_pos_ratio).long(),
                pos.shape[1] - num_pos,
            )
            k = int(num_neg.max()) if num_neg.numel() else 0
            chosen = pos.clone()
            if k > 0:
                lowest = float("-inf")
                diff = (conf[..., 1] - conf[..., 0]).nan_to_num_(nan=lowest)
                vals, idx = diff.masked_fill_(pos, lowest).topk(k, dim=1)  # descending
                rank = torch.arange(k, device=pos.device)
                neg = (rank < num_neg[:, None]) & (vals > lowest)
                chosen.scatter_(1, idx, neg | chosen.gather(1, idx))
            rows = chosen.reshape(-1).nonzero().squeeze(1)
        picked = conf.reshape(-1, conf.shape[-1])[rows]
        return F.cross_entropy(picked, pos.reshape(-1)[rows].long(), reduction="sum")

    def forward(
        self,
        predictions: Sequence[Tensor],
        priors: Tensor,
        boxes: Tensor,
        labels: Tensor,
        landmarks: Tensor,
        grid: AnchorGrid | None = None,
    ) -> dict[str, Tensor]:
        loc, conf, landm = predictions
        boxes, landmarks = boxes.to(loc.dtype), landmarks.to(loc.dtype)
        bsz = loc.shape[0]
        if boxes.shape[1] == 0:  # no face in the whole batch: one padding row keeps shapes
            boxes = boxes.new_full((bsz, 1, 4), -1.0)
            labels = labels.new_full((bsz, 1), -1)
            landmarks = landmarks.new_full((bsz, 1, 10), -1.0)
        windowed = self._windowed(priors, grid, loc.device)
        if windowed:
            matches = self.match(priors, boxes, grid)
            pos = matches >= 0  # (B, P)
            with torch.no_grad():  # the positives: flat prior keys b * P + p and their faces
                key = pos.reshape(-1).nonzero().squeeze(1)
                img = torch.div(key, priors.shape[0], rounding_mode="floor")
                prior = key - img * priors.shape[0]
                face = img * boxes.shape[1] + matches[img, prior]  # into boxes.reshape(-1, 4)
                pos_per_image = torch.bincount(img, minlength=bsz)
                ones = torch.ones(1, face.shape[0], dtype=loc.dtype, device=loc.device)
                anchors = center_to_corner(priors[prior].to(loc.dtype))
                fid = face[None]
                loc_t = self.box_encoder(ones, fid, anchors, boxes.reshape(1, -1, 4))[0][0]
                landm_t, lm_mask = self.landm_encoder(
                    ones, fid, anchors, landmarks.reshape(1, -1, 10)
                )
                landm_t = landm_t[0]
                landm_pos = (lm_mask[0, :, 0] > 0) & (labels.reshape(-1)[face] > 0)
            loss_loc, loss_landm = self._regression(
                loc.reshape(-1, 4)[key],
                loc_t,
                torch.ones_like(landm_pos),
                landm.reshape(-1, 10)[key],
                landm_t,
                landm_pos,
            )
        else:
            t = self.assign(priors, boxes, labels, landmarks)
            matches = t.matches
            landm_pos = t.landm_mask
            loss_loc, loss_landm = self._regression(
                loc, t.loc, t.positive, landm, t.landm, landm_pos
            )
            pos = t.positive  # (B, P)
        num_pos = pos_per_image.sum() if windowed else pos.sum()
        n = num_pos.clamp(min=1).to(loc.dtype)
        loss_loc = loss_loc / n
        loss_landm = loss_landm / landm_pos.sum().clamp(min=1).to(loc.dtype)

        if self.classification == "focal":
            target = pos.long()
            logit = (conf[..., 1] - conf[..., 0]).reshape(-1, 1)
            loss_cls = sigmoid_focal_loss(
                logit,
                target.reshape(-1),
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                normalization="positive",
            )
        elif windowed:
            loss_cls = self._mined_ce_sparse(conf, pos, pos_per_image) / n
        else:
            logp = F.log_softmax(conf, dim=-1)  # (B, P, 2)
            # hard negative mining on the background cross-entropy
            samples = self.sampler(matches, -logp[..., 0].detach())
            ce = -logp.gather(-1, pos.long().unsqueeze(-1)).squeeze(-1)
            loss_cls = (ce * (samples != 0).to(ce.dtype)).sum() / n

        total = (
            self.loc_weight * loss_loc + self.cls_weight * loss_cls + self.landm_weight * loss_landm
        )
        return {
            "loss": total,
            "loc": loss_loc,
            "cls": loss_cls,
            "landm": loss_landm,
            "num_pos": num_pos.detach().to(loc.dtype),
        }
