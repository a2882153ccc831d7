"""CenterNet: keypoint triplets (Duan et al. 2019, Duankaiwen/CenterNet) on a GhostNet backbone.

image -> backbone -> one stride-4 map per stack (``cnv``, ``cnv_dim`` channels) -> per stack:

* ``tl_cnvs`` / ``br_cnvs``: cascade corner pooling (``CascadeCornerPool``), ``ct_cnvs``: center
  pooling (``CenterPool``);
* heads (``kp_layer``: 3x3 conv + ReLU -> 1x1 conv): ``tl_heats`` / ``br_heats`` / ``ct_heats``
  (C class logits; the last bias is -2.19, a prior of 0.1), ``tl_tags`` / ``br_tags``
  (1-d embeddings, corners only), ``tl_regrs`` / ``br_regrs`` / ``ct_regrs`` (2-d offsets).

Backbones (``backbone``): any timm name (default ``ghostnet_100``; full-depth stage outputs and
our FPN-style neck, see ``backbone.py``), or ``hourglass52`` / ``hourglass104`` (the reference's,
``hourglass.py``: one stack, or two with intermediate supervision). Module names of the pools and
heads are the reference's (``tl_cnvs.0.p1_conv1.conv.weight``, ``tl_heats.0.1.bias``, ...).

``forward(x)`` returns a list (one per stack, the last is the one decoded) of dicts of dense
maps: ``tl_heat``, ``br_heat``, ``ct_heat`` (B, C, H, W) logits, ``tl_tag``, ``br_tag``
(B, 1, H, W), ``tl_regr``, ``br_regr``, ``ct_regr`` (B, 2, H, W). H, W = the stride-4 size.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from src.models.centernet.backbone import FPNNeck, TimmStages
from src.models.centernet.hourglass import Hourglass
from src.models.centernet.layers import CascadeCornerPool, CenterPool, kp_layer

__all__ = ["HOURGLASS", "CenterNet", "HEAD_KEYS"]

HEAD_KEYS = ("tl_heat", "br_heat", "ct_heat", "tl_tag", "br_tag", "tl_regr", "br_regr", "ct_regr")
HOURGLASS = {
    "hourglass52": dict(
        n=5, dims=(256, 256, 384, 384, 384, 512), modules=(2, 2, 2, 2, 2, 4), nstack=1
    ),
    "hourglass104": dict(
        n=5, dims=(256, 256, 384, 384, 384, 512), modules=(2, 2, 2, 2, 2, 4), nstack=2
    ),
}
HEAT_BIAS = -2.19


class CenterNet(nn.Module):
    """CenterNet detector.

    Args:
        num_classes: heatmap channels C.
        backbone: a timm model name, or ``hourglass52`` / ``hourglass104``.
        pretrained / weights: timm ImageNet weights (``pretrained=True`` fetches them; ``weights``
            a local state dict of the whole timm model). Not used by the Hourglass.
        cnv_dim: channels of the stride-4 map the pools take (reference 256).
        head_dim: mid channels of the heads (reference ``curr_dim``, 256).
        pool_dim: mid channels inside the pool modules (reference 128).
        neck_dim: channels of the FPN path (timm backbones).
        hourglass: overrides of the Hourglass options (``n``, ``dims``, ``modules``, ``nstack``).
        tie: corner-pool gradient tie rule (``first`` = the reference extension's).
    """

    def __init__(
        self,
        num_classes: int = 80,
        backbone: str = "ghostnet_100",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        cnv_dim: int = 256,
        head_dim: int = 256,
        pool_dim: int = 128,
        neck_dim: int = 128,
        hourglass: dict | None = None,
        tie: str = "first",
    ):
        super().__init__()
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        if backbone in HOURGLASS:
            opts = {**HOURGLASS[backbone], **dict(hourglass or {})}
            self.backbone = Hourglass(cnv_dim=cnv_dim, **opts)
            self.neck = None
            self.nstack = self.backbone.nstack
        else:
            self.backbone = TimmStages(backbone, pretrained=pretrained, weights=weights)
            self.neck = FPNNeck(self.backbone.channels, neck_dim, cnv_dim)
            self.nstack = 1
        s = range(self.nstack)
        self.tl_cnvs = nn.ModuleList(CascadeCornerPool(cnv_dim, "tl", pool_dim, tie) for _ in s)
        self.br_cnvs = nn.ModuleList(CascadeCornerPool(cnv_dim, "br", pool_dim, tie) for _ in s)
        self.ct_cnvs = nn.ModuleList(CenterPool(cnv_dim, pool_dim, tie) for _ in s)
        c = self.num_classes
        self.tl_heats = nn.ModuleList(kp_layer(cnv_dim, head_dim, c) for _ in s)
        self.br_heats = nn.ModuleList(kp_layer(cnv_dim, head_dim, c) for _ in s)
        self.ct_heats = nn.ModuleList(kp_layer(cnv_dim, head_dim, c) for _ in s)
        self.tl_tags = nn.ModuleList(kp_layer(cnv_dim, head_dim, 1) for _ in s)
        self.br_tags = nn.ModuleList(kp_layer(cnv_dim, head_dim, 1) for _ in s)
        self.tl_regrs = nn.ModuleList(kp_layer(cnv_dim, head_dim, 2) for _ in s)
        self.br_regrs = nn.ModuleList(kp_layer(cnv_dim, head_dim, 2) for _ in s)
        self.ct_regrs = nn.ModuleList(kp_layer(cnv_dim, head_dim, 2) for _ in s)
        for heats in (self.tl_heats, self.br_heats, self.ct_heats):
            for h in heats:
                nn.init.constant_(h[-1].bias, HEAT_BIAS)

    def features(self, x: Tensor) -> list[Tensor]:
        """The stride-4 ``cnv`` map of each stack."""
        if self.neck is None:
            return self.backbone(x)
        return [self.neck(self.backbone(x))]

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        outs = []
        for k, cnv in enumerate(self.features(x)):
            tl, br, ct = self.tl_cnvs[k](cnv), self.br_cnvs[k](cnv), self.ct_cnvs[k](cnv)
            outs.append(
                {
                    "tl_heat": self.tl_heats[k](tl),
                    "br_heat": self.br_heats[k](br),
                    "ct_heat": self.ct_heats[k](ct),
                    "tl_tag": self.tl_tags[k](tl),
                    "br_tag": self.br_tags[k](br),
                    "tl_regr": self.tl_regrs[k](tl),
                    "br_regr": self.br_regrs[k](br),
                    "ct_regr": self.ct_regrs[k](ct),
                }
            )
        return outs
