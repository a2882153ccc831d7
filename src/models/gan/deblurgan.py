"""DeblurGAN v1 networks (Kupyn et al. 2018; KupynOrest/DeblurGAN ``models/networks.py``).

* ``DeblurResnetGenerator``: the ResNet generator of ``src.models.gan.generators`` (ResNet-9:
  reflection-padded 7x7 conv, two stride-2 convs, 9 residual blocks at 4ngf, two transposed
  convs, 7x7 conv, Tanh) with DeblurGAN's global residual ``clamp(input + G(input), -1, 1)``
  (``learn_residual``). ``block="two_conv"`` (default) is the 2018 release's ResnetBlock, two
  3x3 convs: 11,378,179 parameters at ngf 64. ``block="reference_slip"`` reproduces the
  reference's current ResnetBlock, whose ``A + B + [Dropout] if use_dropout else [] + C``
  parses as ``(A + B + [Dropout]) if use_dropout else ([] + C)``: one conv per block
  (pad, conv, norm, ReLU, Dropout with dropout on, its default; pad, conv, norm without),
  6,067,459 parameters. Keys are the reference's (``model.10.conv_block.1.weight``, ...).
* ``PatchCritic``: DeblurGAN's unconditional ``NLayerDiscriminator`` (on the sharp / restored
  image alone): 4x4 convs with padding 2 (``ceil((4 - 1) / 2)``), widths ``ndf * min(2^n, 8)``,
  stride 2 for the first ``n_layers`` convs, then stride 1 twice, LeakyReLU 0.2, no norm on the
  first conv, a bias on a conv before a norm only with instance norm (the reference's rule),
  one score per patch, no sigmoid (the losses take logits / raw scores). Keys
  ``model.<i>.weight`` as the reference. (The shared ``NLayerDiscriminator`` pads by 1, and
  pix2pixHD's layer groups cap widths at 512 rather than 8ndf, so neither is this one.)

Instance norm here keeps no running statistics (``src.models.gan.layers``); the reference's
``InstanceNorm2d(track_running_stats=True)`` has them, so a reference checkpoint loads with
``strict=False`` (its ``running_mean`` / ``running_var`` are not used here).
"""

from __future__ import annotations

import torch
from torch import nn

from src.models.gan.discriminators import NLayerDiscriminator
from src.models.gan.generators import ResnetBlock, ResnetGenerator
from src.models.gan.layers import conv_bias, init_weights, norm_layer
from src.utils.errors import UserError

BLOCKS = ("two_conv", "reference_slip")


class SlipResnetBlock(ResnetBlock):
    """The reference's current one-conv block (see the module docstring)."""

    def __init__(self, dim: int, norm: str = "instance", dropout: bool = True):
        nn.Module.__init__(self)
        layers = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=conv_bias(norm)),
            norm_layer(norm, dim),
        ]
        if dropout:
            layers += [nn.ReLU(True), nn.Dropout(0.5)]
        self.conv_block = nn.Sequential(*layers)


class DeblurResnetGenerator(ResnetGenerator):
    """ResNet generator with the global residual ``clamp(x + G(x), -1, 1)``."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: bool = True,
        block: str = "two_conv",
        learn_residual: bool = True,
    ):
        if block not in BLOCKS:
            raise UserError(f"model.generator.block={block!r}: use {' or '.join(BLOCKS)}")
        if learn_residual and input_nc != output_nc:
            raise UserError("the global residual needs input_nc == output_nc")
        super().__init__(input_nc, output_nc, ngf, n_blocks, norm, dropout)
        self.block, self.learn_residual = block, bool(learn_residual)
        self.name = f"deblurgan_resnet_{n_blocks}blocks"
        if block == "reference_slip":
            for i, m in enumerate(self.model):
                if isinstance(m, ResnetBlock):
                    self.model[i] = SlipResnetBlock(ngf * 4, norm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.clamp(x + out, -1.0, 1.0) if self.learn_residual else out


class PatchCritic(NLayerDiscriminator):
    """The PatchGAN of ``NLayerDiscriminator`` with DeblurGAN's padding 2 (unconditional: it
    sees one image, so ``input_nc`` is 3)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__(input_nc, ndf, n_layers, norm, padding=2)


def build_deblurgan_generator(
    input_nc: int = 3,
    output_nc: int = 3,
    ngf: int = 64,
    n_blocks: int = 9,
    norm: str = "instance",
    dropout: bool = True,
    block: str = "two_conv",
    learn_residual: bool = True,
    init_std: float = 0.02,
    zero_init_last: bool = False,
) -> DeblurResnetGenerator:
    """DeblurGAN v1's generator, initialised N(0, init_std) (the reference's ``weights_init``).
    ``zero_init_last``: the last conv starts at zero, so the residual generator starts as the
    identity (not the reference; the quick CPU demos use it to gain within minutes)."""
    net = DeblurResnetGenerator(
        input_nc, output_nc, ngf, n_blocks, norm, dropout, block, learn_residual
    )
    init_weights(net, init_std)
    if zero_init_last:
        nn.init.zeros_(net.model[-2].weight)
    return net


def build_patch_critic(
    input_nc: int = 3,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "instance",
    init_std: float = 0.02,
) -> PatchCritic:
    """DeblurGAN's PatchGAN critic (``n_layers=3``: v1 and v2's patch D; 5: v2's full D)."""
    return init_weights(PatchCritic(input_nc, ndf, n_layers, norm), init_std)
