"""DeblurGAN-v2's FPN generator (Kupyn et al. 2019; VITA-Group/DeblurGANv2
``models/fpn_mobilenet.py`` / ``fpn_inception.py``) on any timm ``features_only`` backbone.

The backbone (``src.nn.feature.timm_features``, the repo's one builder: ``mobilenetv2_100`` by
default, which needs no download; ``inception_resnet_v2`` as the paper) gives five maps
``enc0 .. enc4`` at strides 2, 4, 8, 16, 32. Lateral 1x1 convs (no bias) take ``enc1 .. enc4``
to ``num_filters_fpn`` channels and ``enc0`` to ``num_filters``; the top-down path is
``map4 = lat4``, ``map_i = td_i(lat_i + up(map_{i+1}))`` with ``td`` = 3x3 conv, norm, ReLU.
Four heads (two 3x3 convs without bias, each with a ReLU) take ``map1 .. map4`` to
``num_filters``; upsampled to ``map1``'s size and concatenated they go through ``smooth`` (3x3
conv, norm, ReLU), up to ``enc0``'s size, ``+ lat0``, ``smooth2`` (3x3 conv to
``num_filters / 2``, norm, ReLU), up to the input size, ``final`` (3x3 conv to 3 channels), and
the output is ``clamp(tanh(final) + x, -1, 1)``. Upsampling is nearest-neighbour *to the finer
map's size*: that is the reference's ``scale_factor=2`` whenever the sizes halve exactly
(MobileNet-v2 at multiples of 32); Inception-ResNet-v2's valid convolutions give odd sizes,
which the reference fixes with hand-placed reflection pads and this fits by resizing.

Differences from the reference, by construction: the backbone taps are timm's stage outputs
(MobileNet-v2: 16, 24, 32, 96, 320 channels; the reference cuts ``features[0:2], [2:4], [4:7],
[7:11], [11:16]``: 16, 24, 32, 64, 160), and Inception-ResNet-v2's are timm's (64, 192, 320,
1088, 1536; the reference: 32, 64, 192, 1088, 2080). Reference widths: MobileNet
``num_filters=64, num_filters_fpn=128``; Inception ``128, 256``. The backbone is built with
``pretrained=False`` unless a local ``weights`` file is given (nothing is downloaded);
``freeze_backbone`` sets its ``requires_grad`` (the reference's first ``warmup_num`` epochs).
Takes sides that are multiples of 32 (``size_multiple``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.models.gan.layers import init_weights, norm_layer
from src.nn.feature import timm_features


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def _conv_norm_relu(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), norm_layer(norm, cout), nn.ReLU(inplace=True)
    )


class FPNHead(nn.Module):
    def __init__(self, num_in: int, num_mid: int, num_out: int):
        super().__init__()
        self.block0 = nn.Conv2d(num_in, num_mid, 3, padding=1, bias=False)
        self.block1 = nn.Conv2d(num_mid, num_out, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block1(F.relu(self.block0(x))))


class FPNGenerator(nn.Module):
    size_multiple = 32

    def __init__(
        self,
        backbone: str = "mobilenetv2_100",
        num_filters: int = 64,
        num_filters_fpn: int = 128,
        norm: str = "instance",
        output_nc: int = 3,
        pretrained: bool = False,
        weights: str | None = None,
    ):
        super().__init__()
        self.name = f"fpn_{backbone}"
        self.encoder = timm_features(backbone, (0, 1, 2, 3, 4), pretrained, weights)
        channels = list(self.encoder.feature_info.channels())
        reductions = list(self.encoder.feature_info.reduction())
        if reductions != [2, 4, 8, 16, 32]:
            raise ValueError(
                f"FPN backbone {backbone}: its stages have strides {reductions}; the FPN needs "
                "five stages at strides 2, 4, 8, 16, 32"
            )
        f, nf = int(num_filters_fpn), int(num_filters)
        self.lateral0 = nn.Conv2d(channels[0], nf, 1, bias=False)
        self.lateral1, self.lateral2, self.lateral3, self.lateral4 = (
            nn.Conv2d(c, f, 1, bias=False) for c in channels[1:]
        )
        self.td1, self.td2, self.td3 = (_conv_norm_relu(f, f, norm) for _ in range(3))
        self.head1, self.head2, self.head3, self.head4 = (FPNHead(f, nf, nf) for _ in range(4))
        self.smooth = _conv_norm_relu(4 * nf, nf, norm)
        self.smooth2 = _conv_norm_relu(nf, nf // 2, norm)
        self.final = nn.Conv2d(nf // 2, output_nc, 3, padding=1)

    def freeze_backbone(self, frozen: bool = True) -> None:
        self.encoder.requires_grad_(not frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc0, enc1, enc2, enc3, enc4 = self.encoder(x)
        lat0 = self.lateral0(enc0)
        map4 = self.lateral4(enc4)
        map3 = self.td1(self.lateral3(enc3) + _up(map4, enc3))
        map2 = self.td2(self.lateral2(enc2) + _up(map3, enc2))
        map1 = self.td3(self.lateral1(enc1) + _up(map2, enc1))
        heads = [
            _up(self.head4(map4), map1),
            _up(self.head3(map3), map1),
            _up(self.head2(map2), map1),
            self.head1(map1),
        ]
        smoothed = _up(self.smooth(torch.cat(heads, 1)), lat0)
        smoothed = _up(self.smooth2(smoothed + lat0), x)
        return torch.clamp(torch.tanh(self.final(smoothed)) + x, -1.0, 1.0)


def build_fpn_generator(
    backbone: str = "mobilenetv2_100",
    num_filters: int = 64,
    num_filters_fpn: int = 128,
    norm: str = "instance",
    output_nc: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    init_std: float | None = None,
    zero_init_last: bool = False,
) -> FPNGenerator:
    """The FPN generator; ``init_std`` re-initialises the FPN part (not the backbone) N(0, std)
    (``null``: PyTorch's default init, as the reference). ``zero_init_last``: ``final`` starts
    at zero, so the generator starts as the identity (not the reference; the quick demos)."""
    net = FPNGenerator(backbone, num_filters, num_filters_fpn, norm, output_nc, pretrained, weights)
    if init_std:
        for name, module in net.named_children():
            if name != "encoder":
                init_weights(module, init_std)
    if zero_init_last:
        nn.init.zeros_(net.final.weight)
        nn.init.zeros_(net.final.bias)
    return net
