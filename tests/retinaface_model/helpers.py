"""Shared helpers for the RetinaFace model tests."""

from __future__ import annotations

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and BN statistic seeded random values (outputs become seed-specific)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight")) or (
                t.dim() == 1 and name.endswith("weight")
            ):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.dim() == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def bgr_images(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random BGR-mean-subtracted images, values like real inputs (about -123..151)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (batch, 3, h, w), generator=g).float()
    return img - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)


def calibrate_bn_(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``images`` (then eval mode), so a
    randomly initialised network has unit-scale activations like a trained one."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over this one pass
    model.train()
    with torch.no_grad():
        model(images)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()
