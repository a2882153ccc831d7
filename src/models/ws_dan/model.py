"""WS-DAN: Weakly Supervised Data Augmentation Network (Hu et al., arXiv:1901.09891).

``WSDAN(x)`` returns ``(logits, feature_matrix, attention_maps)``:

* ``logits``: (B, num_classes), a bias-free linear classifier on ``feature_matrix * 100``;
* ``feature_matrix``: (B, M * C), bilinear attention pooling of the backbone features
  (``einsum(A, F) / (H * W)``, signed square root, L2 normalisation over the whole M*C vector);
* ``attention_maps``: (B, M, H, W), non-negative (1x1 conv -> BN -> ReLU on the features).

The backbone is any timm model built with ``features_only=True``; ``feature_index`` picks the
stage (3 = stride 16, which for ``inception_v3`` is ``Mixed_6e`` as in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.nn.feature import timm_features

EPSILON = 1e-12


def bilinear_attention_pooling(features: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features x (B, M, H, W) attentions -> (B, M * C) normalised feature matrix.

    Row ``m`` of the (M, C) matrix is the attention-weighted average of the feature map
    ``sum_hw A[m, h, w] * F[:, h, w] / (H * W)``; then ``sign(x) * sqrt(|x| + eps)`` and
    L2 normalisation of the flattened vector. Attention maps of another size are resized
    bilinearly to the feature size first.
    """
    b, c, h, w = features.shape
    if attentions.shape[-2:] != (h, w):
        attentions = F.interpolate(attentions, size=(h, w), mode="bilinear", align_corners=True)
    m = attentions.shape[1]
    pooled = torch.bmm(
        attentions.reshape(b, m, h * w), features.reshape(b, c, h * w).transpose(1, 2)
    )
    pooled = (pooled / float(h * w)).reshape(b, m * c)
    pooled = torch.sign(pooled) * torch.sqrt(pooled.abs() + EPSILON)
    return F.normalize(pooled, dim=-1)


class AttentionHead(nn.Sequential):
    """M attention maps from C features: 1x1 conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, num_attentions: int):
        super().__init__(
            nn.Conv2d(in_channels, num_attentions, kernel_size=1, bias=False),
            nn.BatchNorm2d(num_attentions, eps=1e-3),
            nn.ReLU(inplace=True),
        )


class WSDAN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        backbone: str = "inception_v3",
        feature_index: int = 3,
        num_attentions: int = 32,
        pretrained: bool = False,
        weights: str | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"WSDAN: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.num_attentions = int(num_attentions)
        self.backbone_name = backbone
        self.backbone = _create_backbone(backbone, feature_index, pretrained, weights)
        self.num_features = int(self.backbone.feature_info.channels()[-1])
        self.attentions = AttentionHead(self.num_features, self.num_attentions)
        self.fc = nn.Linear(self.num_attentions * self.num_features, self.num_classes, bias=False)

    @property
    def feature_dim(self) -> int:
        """Length of the feature matrix (M * C): the size of a center-loss center."""
        return self.num_attentions * self.num_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone(x)[-1]
        attention_maps = self.attentions(features)
        feature_matrix = bilinear_attention_pooling(features, attention_maps)
        logits = self.fc(feature_matrix * 100.0)
        return logits, feature_matrix, attention_maps


def _create_backbone(name: str, feature_index: int, pretrained: bool, weights: str | None):
    return timm_features(
        name,
        (feature_index,),
        pretrained,
        weights,
        what="WSDAN: backbone weights file",
        hint=f"model.net.weights: give a local timm/torchvision state dict for {name}, "
        "or set it to null",
    )
