"""Deep Photo Enhancer networks (Chen et al. 2018, "Deep Photo Enhancer: Unpaired Learning for
Image Enhancement from Photographs with GANs"; the authors' TensorFlow code, ported layer by
layer, not copied).

Generator ``DPEGenerator`` (the paper's Fig. 3a, the authors' ``netG``): a U-Net of 5 x 5
convolutions with a global-feature branch. Every "act" is the authors' ``[SELU, BN]`` (SELU
first, then batch normalisation), widths ``ngf x (1, 2, 4, 8, 8)`` (16 ... 128 as the authors):

* encoder: 3 x 3 conv (ngf) act, then four 5 x 5 stride-2 convs (2, 4, 8, 8 ngf) act; the
  skips are the convolution outputs *before* their act (the authors' ``concat_layer`` indices
  point at the conv layers);
* global branch (from the last encoder output, 1/16 size): two 5 x 5 stride-2 convs (8 ngf) act,
  a ``global_kernel`` x ``global_kernel`` valid conv (8 for 512 px inputs: the map is then
  exactly 8 x 8, reduced to 1 x 1) SELU, a 1 x 1 conv: one 8ngf-d vector per image. At other
  sizes the map is first average-pooled to ``global_kernel`` x ``global_kernel``
  (``adaptive_avg_pool2d``; the identity at the training size), so a trained generator takes
  any size that is a multiple of 16 (``size_multiple``). In ONNX the pooling is a dynamic
  mean for ``global_kernel=1``; for larger kernels the exporter fixes the pooling window, so
  such a graph is exact at its export size only;
* decoder: 3 x 3 conv (8 ngf), concatenated with the global vector tiled over the map, 1 x 1
  conv (8 ngf) act; then four times 3 x 3 conv, nearest x2 upsampling, concatenation with the
  skip, act (the act runs on the concatenation); 3 x 3 conv (ngf) act; 3 x 3 conv to 3
  channels; **residual output** ``x + G(x)``, not clamped (as the authors: the images are
  clamped only where the other generator reads them, in the cycle, and when they are shown).

"Individual batch normalisation" (the paper's Sec. 6): in the two-way GAN, ``G_X`` maps real
inputs ``x`` and ``G'_X`` maps the other generator's outputs ``y' = G_Y(y)``; the two share
every weight but keep their own batch normalisation (statistics *and* affine), because ``x``
and ``y'`` come from different distributions. ``DomainBatchNorm`` holds one ``BatchNorm2d``
per input domain and ``forward(x, domain)`` picks it: ``domain=0`` real images of the
generator's source domain (what enhancement and export use), ``domain=1`` images translated by
the other generator (the cycle pass; the authors' ``retouched=True``). BN uses PyTorch's
momentum / eps (the TF port's are not recoverable from the released code).

Critic ``DPECritic`` (the authors' ``netD``): 3 x 3 conv (ndf) act, five 5 x 5 stride-2 convs
(2, 4, 8, 8, 8 ndf) act, a ``head_kernel`` x ``head_kernel`` valid conv to 1 channel (16 for
512 px: one value), averaged over everything: one score per image, (B,). The authors' critic
act is LeakyReLU(0.2) then instance normalisation (affine) -- per sample, so the per-sample
gradient penalty stays per sample; ``activation=selu`` and ``norm=none`` are options. Batch
normalisation is refused: it mixes the samples of a batch, which breaks the per-sample penalty
(WGAN-GP's rule).

Padding: ``symmetric`` (TF ``SYMMETRIC``: mirror including the edge pixel; the authors'),
``reflect`` or ``zeros``. Initialisation: the authors' ``VarianceScaling(1e-3)`` (truncated
normal, std ``sqrt(init_scale / fan_in) / 0.8796``, cut at 2 std), biases 0, norm weights 1:
every layer starts tiny, so a new generator is nearly the identity (its residual ~ 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.utils.errors import UserError

PADDINGS = ("symmetric", "reflect", "zeros")


def _check(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{name}={value!r}: use one of {', '.join(choices)}")
    return value


class SymmetricPad2d(nn.Module):
    """TF ``SYMMETRIC`` padding by ``pad`` on each side (mirror including the edge pixel:
    ``[a b c]`` padded by 2 is ``[b a a b c c b]``). Built from slices and a constant-index
    gather, so it differentiates twice and exports to ONNX with dynamic sizes. A map smaller
    than the pad (only in tiny test networks) is padded with edge copies instead."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = int(pad)
        self.register_buffer("rev", torch.arange(self.pad - 1, -1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p == 0:
            return x
        if min(x.shape[-2:]) < p:  # a map smaller than the pad (tiny inputs): edge copies
            return F.pad(x, (p, p, p, p), mode="replicate")
        x = torch.cat(
            [x[..., :p].index_select(-1, self.rev), x, x[..., -p:].index_select(-1, self.rev)], -1
        )
        return torch.cat(
            [
                x[..., :p, :].index_select(-2, self.rev),
                x,
                x[..., -p:, :].index_select(-2, self.rev),
            ],
            -2,
        )


def conv(
    cin: int, cout: int, k: int, stride: int = 1, padding: str | None = "symmetric"
) -> nn.Module:
    """A k x k convolution with the authors' "same" padding (``padding=None``: valid)."""
    if padding is None or k == 1:
        return nn.Conv2d(cin, cout, k, stride)
    pad = (k - 1) // 2
    if padding == "zeros":
        return nn.Conv2d(cin, cout, k, stride, padding=pad)
    if padding == "reflect":
        return nn.Sequential(nn.ReflectionPad2d(pad), nn.Conv2d(cin, cout, k, stride))
    return nn.Sequential(SymmetricPad2d(pad), nn.Conv2d(cin, cout, k, stride))


class DomainBatchNorm(nn.Module):
    """One ``BatchNorm2d`` per input domain (individual batch normalisation); ``forward(x,
    domain)`` normalises with domain ``domain``'s statistics and affine parameters only."""

    def __init__(self, channels: int, num_domains: int = 2):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(int(num_domains)))

    def forward(self, x: torch.Tensor, domain: int = 0) -> torch.Tensor:
        if not 0 <= int(domain) < len(self.norms):
            raise ValueError(f"domain={domain}: this batch norm has {len(self.norms)} domains")
        return self.norms[int(domain)](x)


class SeluBN(nn.Module):
    """The authors' generator act: SELU, then (per-domain) batch normalisation."""

    def __init__(self, channels: int, num_domains: int):
        super().__init__()
        self.bn = DomainBatchNorm(channels, num_domains)

    def forward(self, x: torch.Tensor, domain: int = 0) -> torch.Tensor:
        return self.bn(F.selu(x), domain)


def variance_scaling_(module: nn.Module, scale: float = 1e-3) -> nn.Module:
    """TF ``VarianceScaling(scale)`` (fan-in, truncated normal) on every convolution; biases 0,
    normalisation weights 1 and biases 0 (in place)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            std = math.sqrt(scale / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class DPEGenerator(nn.Module):
    """The global U-Net (see the module docstring). ``forward(x, domain=0)`` -> ``x + G(x)``;
    sides must be multiples of 16."""

    size_multiple = 16
    name = "dpe_unet"

    def __init__(
        self,
        input_nc: int = 3,
        ngf: int = 16,
        global_kernel: int = 8,
        num_domains: int = 2,
        padding: str = "symmetric",
        init_scale: float = 1e-3,
    ):
        super().__init__()
        _check("model.generator.padding", padding, PADDINGS)
        if global_kernel < 1:
            raise UserError(f"model.generator.global_kernel={global_kernel}: must be >= 1")
        c = [ngf, 2 * ngf, 4 * ngf, 8 * ngf, 8 * ngf]
        g = 8 * ngf
        self.input_nc, self.global_kernel, self.num_domains = (
            input_nc,
            int(global_kernel),
            num_domains,
        )

        def act(ch: int) -> SeluBN:
            return SeluBN(ch, num_domains)

        # encoder: conv outputs are the skips, their acts feed the next level
        self.enc = nn.ModuleList([conv(input_nc, c[0], 3, 1, padding)])
        self.enc.extend(conv(c[i - 1], c[i], 5, 2, padding) for i in range(1, 5))
        self.enc_act = nn.ModuleList(act(ch) for ch in c)
        # global features
        self.glob = nn.ModuleList([conv(c[4], g, 5, 2, padding), conv(g, g, 5, 2, padding)])
        self.glob_act = nn.ModuleList([act(g), act(g)])
        self.glob_reduce = nn.Conv2d(g, g, self.global_kernel)
        self.glob_out = nn.Conv2d(g, g, 1)
        # decoder
        self.bottleneck = conv(c[4], g, 3, 1, padding)
        self.fuse = nn.Conv2d(2 * g, g, 1)
        self.fuse_act = act(g)
        ups = [(g, 8 * ngf, c[3]), (16 * ngf, 8 * ngf, c[2]), (12 * ngf, 4 * ngf, c[1])]
        ups.append((6 * ngf, 2 * ngf, c[0]))
        # (input channels, conv output, skip channels): the act runs on conv output + skip
        self.up = nn.ModuleList(conv(cin, cout, 3, 1, padding) for cin, cout, _ in ups)
        self.up_act = nn.ModuleList(act(cout + skip) for _, cout, skip in ups)
        self.last = conv(3 * ngf, ngf, 3, 1, padding)
        self.last_act = act(ngf)
        self.out = conv(ngf, input_nc, 3, 1, padding)
        variance_scaling_(self, init_scale)

    def global_features(self, h: torch.Tensor, domain: int = 0) -> torch.Tensor:
        """(B, 8 ngf, 1, 1) global features of the last encoder output ``h``."""
        for layer, a in zip(self.glob, self.glob_act):
            h = a(layer(h), domain)
        k = self.global_kernel
        # the identity at the training size; in the graph always, so ONNX keeps it
        h = h.mean((2, 3), keepdim=True) if k == 1 else F.adaptive_avg_pool2d(h, (k, k))
        return self.glob_out(F.selu(self.glob_reduce(h)))

    def forward(self, x: torch.Tensor, domain: int = 0) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise UserError(
                f"the DPE generator takes sides that are multiples of 16, got "
                f"{tuple(x.shape[-2:])}; pad or resize the image"
            )
        skips, h = [], x
        for layer, a in zip(self.enc, self.enc_act):
            s = layer(h)
            skips.append(s)
            h = a(s, domain)
        z = self.global_features(h, domain)
        b = self.bottleneck(h)
        h = self.fuse_act(self.fuse(torch.cat([b, z.expand(-1, -1, *b.shape[-2:])], 1)), domain)
        for layer, a, skip in zip(self.up, self.up_act, reversed(skips[:4])):
            h = F.interpolate(layer(h), scale_factor=2.0, mode="nearest")
            h = a(torch.cat([h, skip], 1), domain)
        h = self.last_act(self.last(h), domain)
        return x + self.out(h)


class DPECritic(nn.Module):
    """The authors' critic (see the module docstring): (B, C, H, W) -> (B,) scores. Its input
    must leave at least ``head_kernel`` px after five halvings."""

    name = "dpe_critic"

    def __init__(
        self,
        input_nc: int = 3,
        ndf: int = 16,
        head_kernel: int = 16,
        activation: str = "lrelu",
        norm: str = "instance",
        padding: str = "symmetric",
        init_scale: float = 1e-3,
    ):
        super().__init__()
        _check("model.critic.activation", activation, ("lrelu", "selu"))
        _check("model.critic.padding", padding, PADDINGS)
        if norm == "batch":
            raise UserError(
                "model.critic.norm=batch: batch normalisation mixes the samples of a batch, so "
                "the per-sample gradient penalty no longer constrains the critic; use instance "
                "(the authors') or none"
            )
        _check("model.critic.norm", norm, ("instance", "none"))
        c = [ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf, 8 * ndf]
        layers: list[nn.Module] = []
        for i, ch in enumerate(c):
            layers.append(
                conv(
                    input_nc if i == 0 else c[i - 1],
                    ch,
                    3 if i == 0 else 5,
                    1 if i == 0 else 2,
                    padding,
                )
            )
            layers.append(nn.LeakyReLU(0.2) if activation == "lrelu" else nn.SELU())
            if norm == "instance":
                layers.append(nn.InstanceNorm2d(ch, affine=True))
        self.features = nn.Sequential(*layers)
        self.head_kernel = int(head_kernel)
        self.head = nn.Conv2d(c[-1], 1, self.head_kernel)
        variance_scaling_(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if min(h.shape[-2:]) < self.head_kernel:
            raise UserError(
                f"the DPE critic's head is {self.head_kernel}x{self.head_kernel} but "
                f"{tuple(x.shape[-2:])} inputs leave {tuple(h.shape[-2:])} maps; set "
                f"model.critic.head_kernel <= image_size / 32 (16 for 512 px)"
            )
        return self.head(h).flatten(1).mean(1)
