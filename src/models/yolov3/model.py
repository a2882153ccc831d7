"""YOLOv3 (Redmon & Farhadi 2018) as the ultralytics/yolov3 archive branch builds it from
``yolov3.cfg``: Darknet-53 (residual blocks 1, 2, 8, 8, 4 at 64..1024 channels, BN + LeakyReLU
0.1) and the three-scale head (routes, 2x nearest upsampling, strides 32, 16, 8).

The network is a flat ``module_list`` in cfg order, like the archive's ``Darknet``: every
convolution is an ``nn.Sequential`` with children ``Conv2d`` / ``BatchNorm2d`` / ``activation``,
so the archive's ``.pt`` state dicts load by name, and darknet ``.weights`` files (blobs in cfg
order) load by walking the convolutions (``weights.py``). Routes, shortcuts, upsampling and the
YOLO layers hold no parameters.

``forward(x)`` returns the raw head outputs, one per YOLO layer in cfg order (stride 32, 16, 8),
each ``(B, 3, ny, nx, 5 + C)``: tx, ty, tw, th, objectness logit, class logits. ``decode``
turns them into pixel boxes and probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# the cfg's anchors (pixels of the network input) and which three each YOLO layer uses
ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 13), (16, 30), (33, 23),
    (30, 61), (62, 45), (59, 119),
    (116, 90), (156, 198), (373, 326),
)  # fmt: skip
MASKS: tuple[tuple[int, ...], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
DARKNET53_BLOCKS = (1, 2, 8, 8, 4)
ACTIVATIONS = ("leaky", "mish", "relu", "silu")


@dataclass(frozen=True)
class Layer:
    """One cfg section: ``kind`` in conv | shortcut | route | upsample | yolo."""

    kind: str
    filters: int = 0
    size: int = 1
    stride: int = 1
    bn: bool = True
    linear: bool = False
    sources: tuple[int, ...] = ()  # route / shortcut: absolute layer indices
    mask: tuple[int, ...] = ()


def yolov3_layers(
    num_classes: int = 80, width: float = 1.0, blocks: Sequence[int] = DARKNET53_BLOCKS
) -> list[Layer]:
    """The cfg layer list of YOLOv3 (``width`` scales every channel count, ``blocks`` the
    residual blocks of the five Darknet stages; (1.0, (1, 2, 8, 8, 4)) is ``yolov3.cfg``)."""
    if len(blocks) != 5 or any(int(b) < 1 for b in blocks):
        raise ValueError(f"blocks must be five positive counts, got {list(blocks)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")

    def ch(c: int) -> int:
        return max(8, int(round(c * width)))

    layers: list[Layer] = []

    def conv(filters, size=1, stride=1, bn=True, linear=False):
        layers.append(Layer("conv", filters, size, stride, bn, linear))
        return len(layers) - 1

    conv(ch(32), 3)
    stage_out = []
    for s, n in enumerate(blocks):
        c = ch(64 * 2**s)
        conv(c, 3, 2)
        for _ in range(int(n)):
            start = len(layers) - 1
            conv(c // 2, 1)
            conv(c, 3)
            layers.append(Layer("shortcut", sources=(len(layers) - 1, start)))
        stage_out.append(len(layers) - 1)
    out_ch = 3 * (5 + int(num_classes))
    skips = [stage_out[3], stage_out[2]]  # the stride-16 and stride-8 features
    for i, mask in enumerate(MASKS):
        c = ch(512 // 2**i)
        if i:
            conv(c, 1)
            layers.append(Layer("upsample", stride=2))
            layers.append(Layer("route", sources=(len(layers) - 1, skips[i - 1])))
        for _ in range(2):
            conv(c, 1)
            conv(2 * c, 3)
        branch = conv(c, 1)
        conv(2 * c, 3)
        conv(out_ch, 1, bn=False, linear=True)
        layers.append(Layer("yolo", mask=mask))
        if i < 2:
            layers.append(Layer("route", sources=(branch,)))
    return layers


def make_activation(name: str) -> nn.Module:
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "mish":
        return nn.Mish(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"activation={name!r}: choose one of {', '.join(ACTIVATIONS)}")


class Shortcut(nn.Module):
    def __init__(self, source: int):
        super().__init__()
        self.source = source


class Route(nn.Module):
    def __init__(self, sources: tuple[int, ...]):
        super().__init__()
        self.sources = sources


class YOLOLayer(nn.Module):
    """A detection layer: which anchors it uses and at which stride (no parameters)."""

    def __init__(self, mask: tuple[int, ...], index: int):
        super().__init__()
        self.mask, self.index = mask, index


class YOLOv3(nn.Module):
    def __init__(
        self,
        num_classes: int = 80,
        activation: str = "leaky",
        width: float = 1.0,
        blocks: Sequence[int] = DARKNET53_BLOCKS,
        anchors: Sequence[Sequence[float]] = ANCHORS,
        weights: str | None = None,
        pretrained: bool = False,
    ):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pretrained:
            raise ValueError(
                "pretrained=true: nothing is downloaded here; pass a local darknet .weights "
                "or archive .pt file as weights=..."
            )
        self.num_classes = int(num_classes)
        self.layers = yolov3_layers(self.num_classes, float(width), blocks)
        self.register_buffer(
            "anchors", torch.tensor(anchors, dtype=torch.float32).reshape(-1, 2), persistent=False
        )
        if self.anchors.shape[0] != 9:
            raise ValueError(f"anchors: YOLOv3 takes nine (w, h) pairs, got {len(anchors)}")
        self.masks = MASKS
        self.strides = (32, 16, 8)
        channels: list[int] = []
        modules: list[nn.Module] = []
        cin = 3
        n_yolo = 0
        for layer in self.layers:
            if layer.kind == "conv":
                seq = nn.Sequential()
                seq.add_module(
                    "Conv2d",
                    nn.Conv2d(
                        cin,
                        layer.filters,
                        layer.size,
                        layer.stride,
                        padding=layer.size // 2,
                        bias=not layer.bn,
                    ),
                )
                if layer.bn:
                    seq.add_module(
                        "BatchNorm2d", nn.BatchNorm2d(layer.filters, momentum=0.03, eps=1e-4)
                    )
                if not layer.linear:
                    seq.add_module("activation", make_activation(activation))
                modules.append(seq)
                cin = layer.filters
            elif layer.kind == "shortcut":
                modules.append(Shortcut(layer.sources[1]))
            elif layer.kind == "route":
                modules.append(Route(layer.sources))
                cin = sum(channels[s] for s in layer.sources)
            elif layer.kind == "upsample":
                modules.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                modules.append(YOLOLayer(layer.mask, n_yolo))
                n_yolo += 1
            channels.append(cin)
        self.module_list = nn.ModuleList(modules)
        # outputs later layers read (routes, shortcuts)
        self._keep = {s for layer in self.layers for s in layer.sources}
        self._init_weights()
        if weights:
            from .weights import load_weights

            load_weights(self, weights)

    def _init_weights(self) -> None:
        # the archive's initial output biases (create_modules, after RetinaNet sec. 3.3):
        # objectness logit -4.5, class logits log(0.6 / (C - 0.99))
        for m in self.module_list:
            if isinstance(m, nn.Sequential) and m.Conv2d.bias is not None:
                b = m.Conv2d.bias.detach().view(3, -1)
                b[:, 4] += -4.5
                b[:, 5:] += math.log(0.6 / (self.num_classes - 0.99))

    @property
    def convs(self) -> list[nn.Sequential]:
        """The convolutions in cfg order (what a darknet ``.weights`` file stores)."""
        return [m for m in self.module_list if isinstance(m, nn.Sequential)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"YOLOv3 input sides must be multiples of 32, got {tuple(x.shape)}")
        saved: dict[int, torch.Tensor] = {}
        outputs = []
        for i, m in enumerate(self.module_list):
            if isinstance(m, Shortcut):
                x = x + saved[m.source]
            elif isinstance(m, Route):
                x = (
                    saved[m.sources[0]]
                    if len(m.sources) == 1
                    else torch.cat([saved[s] for s in m.sources], 1)
                )
            elif isinstance(m, YOLOLayer):
                b, _, ny, nx = x.shape
                outputs.append(
                    x.view(b, len(m.mask), -1, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
                )
            else:
                x = m(x)
            if i in self._keep:
                saved[i] = x
        return outputs

    def layer_anchors(self) -> list[torch.Tensor]:
        """The (3, 2) pixel anchors of each YOLO layer, in output order."""
        return [self.anchors[list(m)] for m in self.masks]


def decode(
    outputs: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], strides
) -> torch.Tensor:
    """Raw head outputs -> ``(B, N, 5 + C)``: box centre x, y and width, height in input pixels
    (``(sigmoid(t_xy) + cell) * stride``, ``exp(t_wh).clamp(max=1e3) * anchor``), then
    objectness and class probabilities (sigmoid). N runs over layers, anchors, rows, columns."""
    out = []
    for p, anchor, stride in zip(outputs, anchors, strides):
        b, na, ny, nx, no = p.shape
        ys = torch.arange(ny, device=p.device, dtype=p.dtype)
        xs = torch.arange(nx, device=p.device, dtype=p.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((gx, gy), -1).view(1, 1, ny, nx, 2)
        xy = (p[..., :2].sigmoid() + grid) * stride
        wh = p[..., 2:4].exp().clamp(max=1e3) * anchor.to(p.dtype).view(1, na, 1, 1, 2)
        out.append(torch.cat((xy, wh, p[..., 4:].sigmoid()), -1).reshape(b, -1, no))
    return torch.cat(out, 1)
