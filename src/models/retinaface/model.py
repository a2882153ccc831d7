"""RetinaFace (Deng et al. 2019) as built by biubug6/Pytorch_Retinaface.

backbone (strides 8/16/32) -> FPN -> one SSH context module per level -> per-level 1x1 heads
with two anchors per cell. Parameter counts: 426,608 (``mobilenet0.25``, neck width 64) and
27,293,600 (``resnet50``, neck width 256).

``forward`` returns raw outputs in training and in eval mode alike:

* ``loc``   (B, P, 4)  box offsets, encoded against the priors (variances 0.1 / 0.2),
* ``conf``  (B, P, 2)  background / face **logits** (the reference applies a softmax in its
  test phase; here that is the post-processor's job: ``conf.softmax(-1)[..., 1]``),
* ``landm`` (B, P, 10) five landmark offsets,

where P = ``num_priors((H, W))`` and the order of P matches ``priors.prior_boxes`` (level ->
row -> column -> anchor). Inputs are BGR images minus the mean (104, 117, 123:
``src.data.face_transforms.BGR_MEAN``), any H and W.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from src.models.retinaface.backbones import build_backbone, canonical_backbone
from src.models.retinaface.layers import FPN, SSH, BboxHead, ClassHead, LandmarkHead
from src.models.retinaface.priors import MIN_SIZES, STEPS, anchor_grid, prior_boxes
from src.models.retinaface.weights import load_reference_weights
from src.nn.anchor import AnchorGrid

_DEFAULT_OUT_CHANNELS = {"mobilenet0.25": 64, "resnet50": 256}


class RetinaFace(nn.Module):
    """RetinaFace detector.

    Args:
        backbone: ``"mobilenet0.25"`` or ``"resnet50"``.
        pretrained: ImageNet weights for the backbone: False, True (see
            ``backbones.build_backbone``) or a path to a local file such as the reference's
            ``mobilenetV1X0.25_pretrain.tar`` or a torchvision / timm resnet50 state dict.
        weights: path to a full detector checkpoint (e.g. the reference's
            ``mobilenet0.25_Final.pth`` / ``Resnet50_Final.pth``), loaded strictly after
            building; overrides ``pretrained``.
        out_channels: FPN / SSH width (default 64 for MobileNet, 256 for ResNet-50).
        min_sizes: prior sizes per level; the number per level is the number of anchors.
    """

    steps: tuple[int, ...] = STEPS

    def __init__(
        self,
        backbone: str = "mobilenet0.25",
        pretrained: bool | str | os.PathLike = False,
        weights: str | os.PathLike | None = None,
        out_channels: int | None = None,
        min_sizes: Sequence[Sequence[int]] = MIN_SIZES,
    ):
        super().__init__()
        self.backbone_name = canonical_backbone(backbone)
        self.min_sizes = tuple(tuple(int(s) for s in m) for m in min_sizes)
        if len(self.min_sizes) != 3 or len({len(m) for m in self.min_sizes}) != 1:
            raise ValueError(
                f"min_sizes must give the same number of sizes for each of 3 levels, "
                f"got {self.min_sizes}"
            )
        num_anchors = len(self.min_sizes[0])
        width = out_channels or _DEFAULT_OUT_CHANNELS[self.backbone_name]

        self.body = build_backbone(self.backbone_name, pretrained=False if weights else pretrained)
        self.fpn = FPN(self.body.out_channels, width)
        self.ssh1 = SSH(width, width)
        self.ssh2 = SSH(width, width)
        self.ssh3 = SSH(width, width)
        self.ClassHead = nn.ModuleList(ClassHead(width, num_anchors) for _ in range(3))
        self.BboxHead = nn.ModuleList(BboxHead(width, num_anchors) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(LandmarkHead(width, num_anchors) for _ in range(3))

        if weights:
            load_reference_weights(self, weights)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images (B, 3, H, W) -> (loc (B, P, 4), conf logits (B, P, 2), landm (B, P, 10))."""
        feats = self.fpn(self.body(images))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, feats)], dim=1)
        landm = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, conf, landm

    def priors(
        self,
        image_size: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """The (P, 4) ``cxcywh`` priors matching this model's outputs for an (H, W) input."""
        return prior_boxes(image_size, self.min_sizes, self.steps, False, device, dtype)

    def anchor_grid(self, image_size: tuple[int, int]) -> AnchorGrid:
        """The ``AnchorGrid`` whose ``center`` anchors are ``priors(image_size)`` (cached)."""
        return anchor_grid(image_size, self.min_sizes, self.steps)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
