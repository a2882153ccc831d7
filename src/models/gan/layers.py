"""Normalisation choice and weight initialisation shared by the GAN networks.

As junyanz/pytorch-CycleGAN-and-pix2pix (``networks.get_norm_layer`` / ``init_weights``):

* ``batch``: ``BatchNorm2d(affine=True, track_running_stats=True)``;
* ``instance``: ``InstanceNorm2d(affine=False, track_running_stats=False)``;
* ``none``: ``nn.Identity()`` (it keeps its place in the layer lists, so state-dict indices are
  the same for every norm, as in the reference).

Convolutions followed by a normalisation have a bias only with ``instance`` (batch norm has its
own shift). The reference decides this by ``norm_layer == InstanceNorm2d``, so with ``none``
those convolutions have *no* bias either; we keep that, so parameter counts and state-dict keys
match the reference for every norm.

Initialisation (``init_type=normal``, gain 0.02): every Conv / ConvTranspose / Linear weight
~ N(0, 0.02) and bias 0; every BatchNorm weight ~ N(1, 0.02) and bias 0. Drawn from torch's
global RNG (seeded by the engine before the networks are built).
"""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "instance", "none")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation layer for ``channels`` (``nn.Identity`` for ``none``)."""
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def conv_bias(norm: str) -> bool:
    """Whether a convolution followed by ``norm`` has a bias (the reference's rule)."""
    return check_norm(norm) == "instance"


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """N(0, std) convolution / linear weights, BN weights N(1, std), biases 0 (in place)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
