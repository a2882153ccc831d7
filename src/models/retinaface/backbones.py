"""RetinaFace backbones: the reference's MobileNetV1-0.25 and a timm ResNet-50.

Both return the three feature maps of strides 8, 16 and 32 as a list. With 3x3 / stride 2 /
padding 1 convolutions (and ResNet's 7x7 / padding 3 stem and 3x3 / padding 1 max-pool) every
stride-2 step maps a size n to floor((n - 1) / 2) + 1 = ceil(n / 2), so the maps are exactly
ceil(H / s) x ceil(W / s) for any H, W, as the priors assume.

State-dict names match the reference's ``IntermediateLayerGetter`` bodies:
``stage1.*``, ``stage2.*``, ``stage3.*`` for MobileNet, and torchvision's
``conv1`` / ``bn1`` / ``layer1`` ... ``layer4`` for ResNet-50 (timm uses the same names);
the ImageNet classifiers (``fc``) are not part of the body.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from src.models.retinaface.layers import conv_bn, conv_dw
from src.models.retinaface.weights import strict_load
from src.utils.weights_file import read_state_dict

BACKBONE_ALIASES = {
    "mobilenet0.25": "mobilenet0.25",
    "mnet": "mobilenet0.25",
    "mobilenet": "mobilenet0.25",
    "resnet50": "resnet50",
    "r50": "resnet50",
}

# The reference's default location of its ImageNet-pretrained MobileNetV1-0.25.
DEFAULT_MNET_PRETRAIN = Path("weights/mobilenetV1X0.25_pretrain.tar")


def canonical_backbone(name: str) -> str:
    key = str(name).lower()
    if key not in BACKBONE_ALIASES:
        raise ValueError(
            f"unknown RetinaFace backbone {name!r}; choose 'mobilenet0.25' or 'resnet50'"
        )
    return BACKBONE_ALIASES[key]


class MobileNetV1Body(nn.Module):
    """MobileNetV1 at width 0.25 (8 -> 256 channels), leaky ReLU 0.1 throughout.

    Returns the outputs of ``stage1`` (64 ch, stride 8), ``stage2`` (128 ch, stride 16) and
    ``stage3`` (256 ch, stride 32).
    """

    out_channels = (64, 128, 256)

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, slope=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        c5 = self.stage3(c4)
        return [c3, c4, c5]


class ResNet50Body(nn.Module):
    """timm ``resnet50`` truncated after ``layer4``; returns layer2, layer3, layer4.

    Holds the timm modules directly (``conv1``, ``bn1``, ``layer1`` ...), so its state-dict keys
    are torchvision's, as in the reference's ``IntermediateLayerGetter(resnet50)``.
    """

    out_channels = (512, 1024, 2048)

    def __init__(self, timm_pretrained: bool = False):
        super().__init__()
        import timm

        try:
            # tv_in1k: torchvision's ImageNet weights, the ones the reference starts from
            net = timm.create_model("resnet50.tv_in1k", pretrained=timm_pretrained)
        except Exception as e:  # network / hub errors: make the way out obvious
            raise RuntimeError(
                f"could not fetch timm's ImageNet resnet50 weights ({type(e).__name__}: {e}); "
                "pass pretrained=<path to a local resnet50 state dict> instead"
            ) from None
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.act1 = net.act1
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def build_backbone(name: str, pretrained: bool | str | os.PathLike = False) -> nn.Module:
    """Build a backbone body, optionally with ImageNet weights.

    ``pretrained`` is False, True or a path to a local weights file. True means: for
    ``resnet50`` timm's ``resnet50.tv_in1k`` (torchvision's ImageNet weights, as the
    reference uses; downloaded, so it needs internet); for ``mobilenet0.25`` the reference's
    ``weights/mobilenetV1X0.25_pretrain.tar`` relative to the working directory.
    """
    name = canonical_backbone(name)
    if name == "mobilenet0.25":
        body = MobileNetV1Body()
        if pretrained is True:
            if not DEFAULT_MNET_PRETRAIN.is_file():
                raise FileNotFoundError(
                    f"MobileNetV1-0.25 ImageNet weights not found at {DEFAULT_MNET_PRETRAIN} "
                    "(the reference's default place): pass pretrained=<path to "
                    "mobilenetV1X0.25_pretrain.tar> or pretrained=False"
                )
            pretrained = DEFAULT_MNET_PRETRAIN
    else:
        body = ResNet50Body(timm_pretrained=pretrained is True)
        if pretrained is True:
            return body
    if pretrained:
        load_backbone_weights(body, pretrained)
    return body


def load_backbone_weights(body: nn.Module, path: str | os.PathLike) -> None:
    """Load an ImageNet classification checkpoint into a backbone body (strict).

    Accepts a plain state dict or a dict with ``state_dict`` (the reference's
    ``mobilenetV1X0.25_pretrain.tar``), strips ``module.`` and drops the classifier
    (``fc.*``), which the detector does not use.
    """
    sd = read_state_dict(path, what="backbone ImageNet weights file")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    strict_load(body, sd, path, what=f"{type(body).__name__} backbone")
