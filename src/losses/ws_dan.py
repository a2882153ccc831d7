"""WS-DAN losses: center loss on the attention feature matrix, and the combined loss.

Center loss (Hu et al. 2019, eq. 4, as GuYuc/WS-DAN.PyTorch trains it): each class k has a
center c_k (a buffer, saved in checkpoints, never touched by the optimizer). For a batch

    loss   = sum_i || f_i - normalize(c_{y_i}) ||^2 / B        (centers *before* the update)
    update   c_k <- c_k + beta * (mean_{i: y_i = k} f_i - normalize(c_k))   (training only)

with f_i the (already L2-normalised) feature matrix, detached for the update.

A class seen several times in one batch: we average that class's features and apply ONE
moving-average step. Why: the reference writes ``centers[y] += ...`` with repeated indices,
so only one (unspecified) sample's update survives; sequential per-sample updates would
depend on the order of samples in the batch and move a frequent class ``n`` times further
per step than a rare one. The average is order-free, equals the reference whenever labels
are distinct, and extends to DDP exactly: per-class sums and counts are all-reduced, so every
rank applies the same update from the global batch and the centers stay identical.
Samples with non-finite features are left out of the update (a NaN step the engine skips
must not poison the centers).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class CenterLoss(nn.Module):
    def __init__(self, num_classes: int = 0, feature_dim: int = 0, beta: float = 0.05):
        super().__init__()
        self.beta = float(beta)
        self.register_buffer("centers", torch.zeros(num_classes, feature_dim))

    def build(self, num_classes: int, feature_dim: int) -> None:
        """(Re)allocate zero centers of their final shape (before any checkpoint is loaded)."""
        self.centers = torch.zeros(
            num_classes, feature_dim, device=self.centers.device, dtype=self.centers.dtype
        )

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.centers.numel() == 0:
            raise RuntimeError("CenterLoss: centers are not sized yet; call build(K, D) first")
        target = F.normalize(self.centers[labels], dim=-1)
        loss = (features.to(target.dtype) - target).pow(2).sum() / features.shape[0]
        if self.training:
            self.update(features.detach(), labels)
        return loss

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = features.to(self.centers.dtype)
        finite = torch.isfinite(features).all(dim=1)
        features = torch.where(finite[:, None], features, torch.zeros_like(features))
        sums = torch.zeros_like(self.centers).index_add_(0, labels, features)
        counts = torch.zeros(self.centers.shape[0], device=features.device, dtype=features.dtype)
        counts.index_add_(0, labels, finite.to(features.dtype))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        mean = sums / counts.clamp(min=1.0)[:, None]
        step = self.beta * (mean - F.normalize(self.centers, dim=-1))
        self.centers += torch.where(counts[:, None] > 0, step, torch.zeros_like(step))


class WSDANLoss(nn.Module):
    """CE(raw)/3 + CE(crop)/3 + CE(drop)/3 + center_weight * center loss.

    ``center_weight=0`` (``loss=ce``) drops the center term and allocates no centers.
    The owning task calls ``build(num_classes, feature_dim)`` at construction.
    """

    kind = "ws_dan"  # what model=ws_dan accepts (its Task's `accepts`)

    def __init__(self, center_weight: float = 1.0, beta: float = 0.05):
        super().__init__()
        self.center_weight = float(center_weight)
        self.center = CenterLoss(beta=beta) if self.center_weight > 0 else None

    def build(self, num_classes: int, feature_dim: int) -> None:
        if self.center is not None:
            self.center.build(num_classes, feature_dim)

    def forward(
        self,
        logits_raw: torch.Tensor,
        logits_crop: torch.Tensor,
        logits_drop: torch.Tensor,
        feature_matrix: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        ce_raw = F.cross_entropy(logits_raw.float(), labels)
        ce_crop = F.cross_entropy(logits_crop.float(), labels)
        ce_drop = F.cross_entropy(logits_drop.float(), labels)
        if self.center is not None:
            center = self.center(feature_matrix, labels)
        else:
            center = ce_raw.new_zeros(())
        total = (ce_raw + ce_crop + ce_drop) / 3.0 + self.center_weight * center
        return {
            "loss": total,
            "ce_raw": ce_raw.detach(),
            "ce_crop": ce_crop.detach(),
            "ce_drop": ce_drop.detach(),
            "center": center.detach(),
        }
