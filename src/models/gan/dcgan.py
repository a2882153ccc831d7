"""DCGAN generator and critic in the layout of martinarjovsky/WassersteinGAN ``models/dcgan.py``
(``DCGAN_G`` / ``DCGAN_D``, ``DCGAN_G_nobn`` / ``DCGAN_D_nobn``), for WGAN and WGAN-GP.

Generator (z: (B, nz) or (B, nz, 1, 1) -> (B, nc, S, S) in [-1, 1]): a 4x4 transposed conv from
1x1 to 4x4 with ``ngf * S / 8`` channels, then stride-2 4x4 transposed convs halving the
channels up to S/2 px, ``n_extra_layers`` 3x3 convs at S/2 px, a final stride-2 transposed conv to
``nc`` channels and tanh. BatchNorm + ReLU after every layer but the last (``norm=none``:
``DCGAN_G_nobn``). No conv has a bias.

Critic ((B, nc, S, S) -> (B,) scores): a stride-2 4x4 conv to ``ndf`` channels + LeakyReLU(0.2),
``n_extra_layers`` 3x3 convs + norm + LeakyReLU, stride-2 4x4 convs doubling the channels down
to 4x4 px, each + norm + LeakyReLU, a final 4x4 valid conv to one score. ``norm``:

* ``batch``: ``BatchNorm2d`` (the WGAN reference);
* ``layer``: Gulrajani et al.'s ``lib.ops.layernorm.Layernorm`` over (C, H, W) of each sample
  with a per-channel scale and offset, eps 1e-5: ``GroupNorm(1, C)``. Each sample's score
  depends on that sample alone, as the per-sample gradient penalty of WGAN-GP assumes;
* ``none``: no normalisation (``DCGAN_D_nobn``).

Differences from the reference, all shape-preserving: the critic returns one score per sample
(the reference returns the batch mean, ``output.mean(0).view(1)``; the losses take the mean),
and sizes other than 4 * 2^k work: any ``S = s0 * 2^k`` with ``s0`` in 4..7 and ``S >= 16``
(``s0 = 4`` is the reference's layout; e.g. 96 = 6 * 16 starts / ends at 6x6 with 6x6 first /
last kernels). The reference's size loop never ends for a size that is not 4 * 2^k.

Module names are the reference's (``main.initial:3-64:conv.weight``, ``main.pyramid:128:
batchnorm.running_mean``, ...), so its ``netG_epoch_*.pth`` / ``netD_epoch_*.pth`` state dicts
load as they are. Initialisation as its ``weights_init``: conv weights N(0, 0.02), BatchNorm
weights N(1, 0.02) and biases 0 (LayerNorm: scale 1, offset 0, as Gulrajani's).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from src.models.gan.layers import init_weights
from src.utils.errors import UserError
from src.utils.onnx_export import export_onnx_graph

GENERATOR_NORMS = ("batch", "none")
CRITIC_NORMS = ("batch", "layer", "none")


class DCGANSizeError(UserError):
    pass


def base_size(image_size: int, what: str = "image_size") -> tuple[int, int]:
    """``(s0, k)`` with ``image_size = s0 * 2^k``, ``4 <= s0 <= 7`` and ``k >= 2``."""
    size = int(image_size)
    s0, k = size, 0
    while s0 >= 8:
        if s0 % 2:
            break
        s0, k = s0 // 2, k + 1
    if size < 16 or not 4 <= s0 <= 7 or size != s0 * 2**k:
        raise DCGANSizeError(
            f"{what}={size}: a DCGAN takes sizes s * 2^k with s in 4..7 and at least 16 px "
            "(16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, ...); the reference's are "
            "the powers of two"
        )
    return s0, k


def _check(norm: str, allowed: tuple[str, ...], what: str) -> str:
    if norm not in allowed:
        raise UserError(f"{what}.norm={norm!r} is unknown; use one of {', '.join(allowed)}")
    return norm


class DCGANGenerator(nn.Module):
    def __init__(
        self,
        image_size: int = 64,
        nz: int = 100,
        nc: int = 3,
        ngf: int = 64,
        n_extra_layers: int = 0,
        norm: str = "batch",
        init_std: float = 0.02,
    ):
        super().__init__()
        _check(norm, GENERATOR_NORMS, "model.generator")
        s0, k = base_size(image_size, "model.generator.image_size")
        self.image_size, self.nz, self.nc = int(image_size), int(nz), int(nc)
        cngf = ngf // 2 * 2**k  # the reference: ngf // 2, doubled until 4x4 grows to S
        bn = norm == "batch"
        main = nn.Sequential()
        main.add_module(
            f"initial:{nz}-{cngf}:convt", nn.ConvTranspose2d(nz, cngf, s0, 1, 0, bias=False)
        )
        if bn:
            main.add_module(f"initial:{cngf}:batchnorm", nn.BatchNorm2d(cngf))
        main.add_module(f"initial:{cngf}:relu", nn.ReLU(True))
        csize = s0
        while csize < self.image_size // 2:
            main.add_module(
                f"pyramid:{cngf}-{cngf // 2}:convt",
                nn.ConvTranspose2d(cngf, cngf // 2, 4, 2, 1, bias=False),
            )
            if bn:
                main.add_module(f"pyramid:{cngf // 2}:batchnorm", nn.BatchNorm2d(cngf // 2))
            main.add_module(f"pyramid:{cngf // 2}:relu", nn.ReLU(True))
            cngf, csize = cngf // 2, csize * 2
        for t in range(int(n_extra_layers)):
            main.add_module(
                f"extra-layers-{t}:{cngf}:conv", nn.Conv2d(cngf, cngf, 3, 1, 1, bias=False)
            )
            if bn:
                main.add_module(f"extra-layers-{t}:{cngf}:batchnorm", nn.BatchNorm2d(cngf))
            main.add_module(f"extra-layers-{t}:{cngf}:relu", nn.ReLU(True))
        main.add_module(
            f"final:{cngf}-{nc}:convt", nn.ConvTranspose2d(cngf, nc, 4, 2, 1, bias=False)
        )
        main.add_module(f"final:{nc}:tanh", nn.Tanh())
        self.main = main
        init_weights(self, init_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


def _critic_norm(norm: str, channels: int) -> tuple[str, nn.Module] | None:
    if norm == "batch":
        return "batchnorm", nn.BatchNorm2d(channels)
    if norm == "layer":
        return "layernorm", nn.GroupNorm(1, channels, eps=1e-5)
    return None


class DCGANCritic(nn.Module):
    def __init__(
        self,
        image_size: int = 64,
        nc: int = 3,
        ndf: int = 64,
        n_extra_layers: int = 0,
        norm: str = "batch",
        init_std: float = 0.02,
    ):
        super().__init__()
        self.norm = _check(norm, CRITIC_NORMS, "model.critic")
        base_size(image_size, "model.critic.image_size")
        self.image_size, self.nc = int(image_size), int(nc)
        main = nn.Sequential()
        main.add_module(f"initial:{nc}-{ndf}:conv", nn.Conv2d(nc, ndf, 4, 2, 1, bias=False))
        main.add_module(f"initial:{ndf}:relu", nn.LeakyReLU(0.2, inplace=True))
        csize, cndf = self.image_size // 2, ndf
        for t in range(int(n_extra_layers)):
            main.add_module(
                f"extra-layers-{t}:{cndf}:conv", nn.Conv2d(cndf, cndf, 3, 1, 1, bias=False)
            )
            named = _critic_norm(norm, cndf)
            if named:
                main.add_module(f"extra-layers-{t}:{cndf}:{named[0]}", named[1])
            main.add_module(f"extra-layers-{t}:{cndf}:relu", nn.LeakyReLU(0.2, inplace=True))
        while csize >= 8:  # the reference's `csize > 4` for powers of two
            main.add_module(
                f"pyramid:{cndf}-{cndf * 2}:conv", nn.Conv2d(cndf, cndf * 2, 4, 2, 1, bias=False)
            )
            named = _critic_norm(norm, cndf * 2)
            if named:
                main.add_module(f"pyramid:{cndf * 2}:{named[0]}", named[1])
            main.add_module(f"pyramid:{cndf * 2}:relu", nn.LeakyReLU(0.2, inplace=True))
            cndf, csize = cndf * 2, csize // 2
        main.add_module(f"final:{cndf}-1:conv", nn.Conv2d(cndf, 1, csize, 1, 0, bias=False))
        self.main = main
        init_weights(self, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten(1).mean(1)


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def export_dcgan_generator_onnx(
    generator: DCGANGenerator, path: str | os.PathLike, opset_version: int = 17
) -> Path:
    """ONNX of the generator in eval mode: input ``z`` (B, nz), output ``images`` (B, nc, S, S)
    in [-1, 1]; the batch is dynamic. TorchScript-based exporter (needs only ``onnx``)."""
    axes = {"z": {0: "batch"}, "images": {0: "batch"}}
    shape = (1, generator.nz)
    return export_onnx_graph(generator, path, shape, ["images"], axes, "z", opset_version)
