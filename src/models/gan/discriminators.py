"""Discriminators: PatchGAN, pixel, and pix2pixHD's multi-scale PatchGAN with features.

* ``NLayerDiscriminator`` (junyanz ``netD=basic`` is ``n_layers=3``: a 70x70 PatchGAN):
  4x4 convs, stride 2 for the first ``n_layers``, then stride 1 twice, padding 1, widths ndf,
  2ndf, ... capped at 8ndf, LeakyReLU(0.2), no norm on the first conv, one logit per patch.
  Keys ``model.<i>.weight`` as the reference. ``padding=2`` is DeblurGAN's variant of it (its
  ``PatchCritic``), same layers and keys.
* ``PixelDiscriminator`` (``netD=pixel``, a 1x1 PatchGAN): keys ``net.<i>``.
* ``MultiscaleDiscriminator`` (NVIDIA/pix2pixHD): ``num_d`` PatchGANs of pix2pixHD's variant
  (kernel 4, padding 2, every conv with a bias), the first on the input, each next one on the
  input average-pooled once more (3x3, stride 2, padding 1, ``count_include_pad=False``).
  Returns, per scale (finest first), the list of every layer group's output when
  ``intermediate_features`` (the last one is the prediction; feature matching uses the others)
  else a one-element list. Keys as the reference: ``scale<k>_layer<j>.<i>.weight`` with
  features, ``layer<k>.<i>.weight`` without, where scale ``num_d - 1`` sees the full size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from src.models.gan.layers import conv_bias, init_weights, norm_layer
from src.utils.errors import UserError


class NLayerDiscriminator(nn.Module):
    def __init__(
        self,
        input_nc: int = 6,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        padding: int = 1,
    ):
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, 4, stride=2, padding=padding),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=padding, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=padding))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    def __init__(self, input_nc: int = 6, ndf: int = 64, norm: str = "batch"):
        super().__init__()
        bias = conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, bias=bias),
            norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hd_layer_groups(
    input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance"
) -> list[list[nn.Module]]:
    """pix2pixHD's ``NLayerDiscriminator`` as its ``n_layers + 2`` layer groups."""
    pad = math.ceil((4 - 1) / 2)
    groups = [[nn.Conv2d(input_nc, ndf, 4, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]]
    nf = ndf
    for n in range(1, n_layers + 1):
        prev, nf = nf, min(nf * 2, 512)
        stride = 2 if n < n_layers else 1
        groups.append(
            [
                nn.Conv2d(prev, nf, 4, stride=stride, padding=pad),
                norm_layer(norm, nf),
                nn.LeakyReLU(0.2, True),
            ]
        )
    groups.append([nn.Conv2d(nf, 1, 4, stride=1, padding=pad)])
    return groups


class MultiscaleDiscriminator(nn.Module):
    def __init__(
        self,
        input_nc: int = 6,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        num_d: int = 2,
        intermediate_features: bool = True,
    ):
        super().__init__()
        self.num_d, self.n_layers = int(num_d), int(n_layers)
        self.intermediate_features = bool(intermediate_features)
        for k in range(self.num_d):
            groups = hd_layer_groups(input_nc, ndf, n_layers, norm)
            if self.intermediate_features:
                for j, group in enumerate(groups):
                    setattr(self, f"scale{k}_layer{j}", nn.Sequential(*group))
            else:
                setattr(self, f"layer{k}", nn.Sequential(*[m for g in groups for m in g]))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def _scale(self, k: int) -> list[nn.Module]:
        if self.intermediate_features:
            return [getattr(self, f"scale{k}_layer{j}") for j in range(self.n_layers + 2)]
        return [getattr(self, f"layer{k}")]

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i in range(self.num_d):
            feats, h = [], x
            for group in self._scale(self.num_d - 1 - i):
                h = group(h)
                feats.append(h)
            out.append(feats)
            if i != self.num_d - 1:
                x = self.downsample(x)
        return out


def build_discriminator(
    name: str = "basic",
    input_nc: int = 6,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "batch",
    num_d: int = 2,
    intermediate_features: bool = True,
    init_std: float = 0.02,
) -> nn.Module:
    """``basic`` (70x70 PatchGAN), ``n_layers`` (PatchGAN of ``n_layers``), ``pixel``, or
    ``multiscale`` (pix2pixHD), initialised N(0, init_std)."""
    if name == "basic":
        net = NLayerDiscriminator(input_nc, ndf, 3, norm)
    elif name == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf, n_layers, norm)
    elif name == "pixel":
        net = PixelDiscriminator(input_nc, ndf, norm)
    elif name == "multiscale":
        net = MultiscaleDiscriminator(input_nc, ndf, n_layers, norm, num_d, intermediate_features)
    else:
        raise UserError(
            f"discriminator {name!r} is unknown; use basic, n_layers, pixel or multiscale"
        )
    return init_weights(net, init_std)
