"""Image-to-image generators: U-Net (pix2pix) and ResNet (CycleGAN), as
junyanz/pytorch-CycleGAN-and-pix2pix builds them (Isola et al. 2017; Zhu et al. 2017;
Johnson et al. 2016). Outputs are in [-1, 1] (Tanh).

U-Net ``unet_<S>`` (the reference has ``unet_128`` and ``unet_256``; any power of two >= 32
works here): ``log2(S)`` stride-2 4x4 convolutions down, the same number of transposed
convolutions up, each level's input concatenated to its output (skip by concatenation). Widths
ngf, 2ngf, 4ngf, then 8ngf for the rest; the innermost block has no normalisation on its way
down; the ``log2(S) - 5`` 8ngf blocks around it have Dropout(0.5) after their up path (the
three innermost 512-channel blocks of ``unet_256`` with ngf 64). It takes sides that are
multiples of S. The module nesting is the reference's (``model`` = the outermost
``UnetSkipConnectionBlock``, each block's layers in ``model``), so a reference state dict
(``model.model.0.weight``, ``model.model.1.model.1.weight``, ...) loads strictly.

ResNet ``resnet_<n>blocks``: reflection-padded 7x7 conv, two stride-2 3x3 convs, n residual
blocks (reflection padding, two 3x3 convs, optional Dropout(0.5) between), two stride-2
transposed convs, reflection-padded 7x7 conv, Tanh. Takes sides that are multiples of 4.
Keys as the reference (``model.10.conv_block.1.weight``, ...).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from src.models.gan.layers import check_norm, conv_bias, init_weights, norm_layer
from src.utils.errors import UserError


class GeneratorSizeError(UserError):
    """An image size the generator cannot take."""


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: ``x -> cat(x, up(sub(down(x))))`` (the outermost level returns
    ``up(sub(down(x)))`` with a Tanh)."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        dropout: bool = False,
    ):
        super().__init__()
        self.outermost = outermost
        bias = conv_bias(norm)
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=bias)
        if outermost:
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [down_conv, submodule, nn.ReLU(True), up_conv, nn.Tanh()]
        elif innermost:
            up_conv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                nn.ReLU(True),
                up_conv,
                norm_layer(norm, outer_nc),
            ]
        else:
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=bias)
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                norm_layer(norm, inner_nc),
                submodule,
                nn.ReLU(True),
                up_conv,
                norm_layer(norm, outer_nc),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: bool = True,
    ):
        super().__init__()
        check_norm(norm)
        if num_downs < 5:
            raise ValueError(f"U-Net needs num_downs >= 5, got {num_downs}")
        self.num_downs = num_downs
        self.name = f"unet_{2**num_downs}"
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(
                ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout
            )
        for mult in (4, 2, 1):
            block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm
        )

    @property
    def size_multiple(self) -> int:
        return 2**self.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm: str = "batch", dropout: bool = False):
        super().__init__()
        bias = conv_bias(norm)
        layers = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=bias),
            norm_layer(norm, dim),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=bias),
            norm_layer(norm, dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    size_multiple = 4

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: bool = False,
    ):
        super().__init__()
        bias = conv_bias(norm)
        self.name = f"resnet_{n_blocks}blocks"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, padding=0, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                norm_layer(norm, ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult,
                    ngf * mult // 2,
                    3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=bias,
                ),
                norm_layer(norm, ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


GENERATOR_NAMES = (
    "unet_<S> (S = 32, 64, 128, 256, ...; the reference has unet_128 and unet_256) or "
    "resnet_<n>blocks (resnet_6blocks, resnet_9blocks)"
)


def build_generator(
    name: str = "unet_256",
    input_nc: int = 3,
    output_nc: int = 3,
    ngf: int = 64,
    norm: str = "batch",
    dropout: bool = True,
    init_std: float = 0.02,
) -> nn.Module:
    """A generator by the reference's name (``netG``), initialised N(0, init_std)."""
    unet = re.fullmatch(r"unet_(\d+)", name)
    resnet = re.fullmatch(r"resnet_(\d+)blocks", name)
    if unet:
        size = int(unet.group(1))
        if size < 32 or size & (size - 1):
            raise UserError(f"generator {name}: the size must be a power of two >= 32")
        net = UnetGenerator(input_nc, output_nc, size.bit_length() - 1, ngf, norm, dropout)
    elif resnet:
        net = ResnetGenerator(input_nc, output_nc, ngf, int(resnet.group(1)), norm, dropout)
    else:
        raise UserError(f"generator {name!r} is unknown; use {GENERATOR_NAMES}")
    return init_weights(net, init_std)


def check_input_size(generator: nn.Module, height: int, width: int | None = None, where: str = ""):
    """One line naming the size, the generator and sizes that work when ``generator`` cannot
    take ``height x width`` images (the reference crashes deep inside the network instead)."""
    width = height if width is None else width
    m = int(getattr(generator, "size_multiple", 1))
    if height % m == 0 and width % m == 0 and min(height, width) >= m:
        return
    name = getattr(generator, "name", type(generator).__name__)
    up = max(m, -(-max(height, width) // m) * m)
    down = max(height, width) // m * m
    works = ", ".join(str(s) for s in sorted({down, up, up + m} - {0}))
    hint = ""
    if isinstance(generator, UnetGenerator):
        fits = [p for p in (32, 64, 128, 256, 512) if height % p == 0 and width % p == 0]
        if fits:
            hint = f", or use a U-Net that fits it (model.generator.name=unet_{fits[-1]})"
    raise GeneratorSizeError(
        f"generator {name} cannot take {height}x{width} images{where}: its sides must be "
        f"multiples of {m} (e.g. {works}); change the image size{hint}"
    )
