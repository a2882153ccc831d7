"""Building blocks of RetinaFace: conv/BN/activation stacks, FPN, SSH and the 1x1 heads.

Module attribute names and ``nn.Sequential`` indices follow biubug6/Pytorch_Retinaface so
that its released state dicts load unchanged (``conv`` at index 0, ``BatchNorm2d`` at 1,
activation at 2; depthwise blocks put the pointwise conv at 3 and its BN at 4).

Activation slope rule of the reference: FPN and SSH use leaky ReLU with slope 0.1 when their
output width is <= 64 channels (the MobileNet model, 64) and plain ReLU otherwise (the
ResNet-50 model, 256). The MobileNetV1 backbone always uses slope 0.1. The SSH output is
always a plain ReLU after concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def leaky_slope_for(out_channels: int) -> float:
    """The reference's FPN/SSH rule: 0.1 for narrow (<= 64 channel) necks, else 0 (ReLU)."""
    return 0.1 if out_channels <= 64 else 0.0


def _act(slope: float) -> nn.Module:
    # LeakyReLU(0) == ReLU; both have no parameters, so the state dict is unaffected.
    return nn.LeakyReLU(negative_slope=slope, inplace=True) if slope else nn.ReLU(inplace=True)


def conv_bn(cin: int, cout: int, stride: int = 1, slope: float = 0.0) -> nn.Sequential:
    """3x3 conv (padding 1, no bias) -> BN -> (leaky) ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), _act(slope)
    )


def conv_bn_no_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (padding 1, no bias) -> BN."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


def conv_bn_1x1(cin: int, cout: int, slope: float = 0.0) -> nn.Sequential:
    """1x1 conv (no bias) -> BN -> (leaky) ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), _act(slope)
    )


def conv_dw(cin: int, cout: int, stride: int, slope: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 -> BN -> act -> pointwise 1x1 -> BN -> act (MobileNetV1 block)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        _act(slope),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        _act(slope),
    )


class FPN(nn.Module):
    """Top-down feature pyramid over three levels (strides 8, 16, 32).

    Lateral 1x1 conv-BN-act per level; the coarser level is upsampled (nearest) to the exact
    size of the finer one (so odd sizes work), added, then smoothed by a 3x3 conv-BN-act.
    """

    def __init__(self, in_channels: tuple[int, int, int] | list[int], out_channels: int):
        super().__init__()
        slope = leaky_slope_for(out_channels)
        self.output1 = conv_bn_1x1(in_channels[0], out_channels, slope)
        self.output2 = conv_bn_1x1(in_channels[1], out_channels, slope)
        self.output3 = conv_bn_1x1(in_channels[2], out_channels, slope)
        self.merge1 = conv_bn(out_channels, out_channels, slope=slope)
        self.merge2 = conv_bn(out_channels, out_channels, slope=slope)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        p3 = self.output1(c3)
        p4 = self.output2(c4)
        p5 = self.output3(c5)
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """SSH context module: parallel 3x3 / 5x5 (two 3x3) / 7x7 (three 3x3) branches.

    Output channels split 1/2, 1/4, 1/4; the 5x5 and 7x7 branches share their first conv.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"SSH out_channels must be a multiple of 4, got {out_channels}")
        slope = leaky_slope_for(out_channels)
        q = out_channels // 4
        self.conv3X3 = conv_bn_no_act(in_channels, out_channels // 2)
        self.conv5X5_1 = conv_bn(in_channels, q, slope=slope)
        self.conv5X5_2 = conv_bn_no_act(q, q)
        self.conv7X7_2 = conv_bn(q, q, slope=slope)
        self.conv7x7_3 = conv_bn_no_act(q, q)  # lower-case x: the reference's key name

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.conv3X3(x)
        t = self.conv5X5_1(x)
        b5 = self.conv5X5_2(t)
        b7 = self.conv7x7_3(self.conv7X7_2(t))
        # relu(cat(...)) == cat(relu(...)) bit for bit; per branch, each batch norm's backward
        # gets the dense gradient relu's backward writes instead of a channel slice of the cat's
        # (a strided gradient costs that backward 4x in NCHW, up to 10x in channels_last)
        return torch.cat([F.relu(b, inplace=True) for b in (b3, b5, b7)], dim=1)


class _Head(nn.Module):
    """1x1 conv predicting ``num_anchors * dim`` values per cell, flattened to (B, H*W*A, dim).

    The flattening order is row -> column -> anchor, the order of the priors.
    """

    dim: int = 0

    def __init__(self, in_channels: int, num_anchors: int = 2):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * self.dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.dim)


class ClassHead(_Head):
    """Face / background logits, 2 per anchor."""

    dim = 2


class BboxHead(_Head):
    """Box offsets (encoded cx, cy, w, h), 4 per anchor."""

    dim = 4


class LandmarkHead(_Head):
    """Five landmark offsets (x, y) pairs, 10 per anchor."""

    dim = 10
