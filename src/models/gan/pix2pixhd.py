"""pix2pixHD generators (Wang et al. 2018; NVIDIA/pix2pixHD ``models/networks.py``).

``GlobalGenerator`` (G1): reflection-padded 7x7 conv, ``n_downsampling`` stride-2 3x3 convs
(widths ngf, 2ngf, ... doubling), ``n_blocks`` residual blocks at ``ngf * 2**n_downsampling``
channels (the shared ``ResnetBlock``: reflection padding, two 3x3 convs), as many stride-2
transposed convs back up, reflection-padded 7x7 conv to ``output_nc``, Tanh. Every convolution
has a bias whatever the norm (pix2pixHD's own rule, unlike junyanz's), norm ``instance``
(``InstanceNorm2d(affine=False)``, the default) or ``batch``. With ngf 64, 4 downsamplings, 9
blocks and the Cityscapes input (35 label channels + 1 instance-edge channel) it has
182,546,755 parameters. Keys ``model.<i>...`` as the reference, so its state dicts load
strictly.

``LocalEnhancer`` (G1 + G2): a global generator of width ``ngf * 2**n_local_enhancers`` with its
last three layers (pad, 7x7 conv, Tanh) dropped (``model``), run on the input average-pooled
``n_local_enhancers`` times (3x3, stride 2, padding 1, ``count_include_pad=False``); each
enhancer ``n`` (``model<n>_1``: 7x7 conv + stride-2 conv on the input at its scale;
``model<n>_2``: ``n_blocks_local`` residual blocks, a transposed conv, and for the last one the
7x7 output conv + Tanh) adds its front end's features to the coarser output and upsamples.
``local_parameters`` names the outermost enhancer's parameters: what the reference trains
alone for ``niter_fix_global`` epochs (its keys start with ``model<n_local_enhancers>``).

Initialisation as the reference's ``weights_init``: conv weights N(0, 0.02), BN weights
N(1, 0.02) and biases 0; conv biases are zeroed here (the reference leaves them at PyTorch's
default uniform draw, which only changes the random start).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from src.models.gan.generators import ResnetBlock
from src.models.gan.layers import init_weights, norm_layer
from src.utils.errors import UserError
from src.utils.weights_file import load_file, strip_prefix

HD_NORMS = ("instance", "batch")
HD_GENERATORS = ("global", "local")


def _check_norm(norm: str) -> str:
    if norm not in HD_NORMS:
        raise UserError(f"pix2pixHD generator norm={norm!r}: use instance or batch")
    return norm


def hd_resnet_block(dim: int, norm: str) -> ResnetBlock:
    """The shared residual block with pix2pixHD's biases: every conv has one (the shared
    block follows junyanz's rule, a bias only with instance norm)."""
    block = ResnetBlock(dim, norm)
    for i, m in enumerate(block.conv_block):
        if isinstance(m, nn.Conv2d) and m.bias is None:
            block.conv_block[i] = nn.Conv2d(dim, dim, 3, padding=0, bias=True)
    return block


def _global_layers(
    input_nc: int, output_nc: int, ngf: int, n_downsampling: int, n_blocks: int, norm: str
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(input_nc, ngf, 7, padding=0),
        norm_layer(norm, ngf),
        nn.ReLU(True),
    ]
    for i in range(n_downsampling):
        mult = 2**i
        layers += [
            nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
            norm_layer(norm, ngf * mult * 2),
            nn.ReLU(True),
        ]
    mult = 2**n_downsampling
    layers += [hd_resnet_block(ngf * mult, norm) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        mult = 2 ** (n_downsampling - i)
        layers += [
            nn.ConvTranspose2d(
                ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1
            ),
            norm_layer(norm, ngf * mult // 2),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    def __init__(
        self,
        input_nc: int = 36,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 9,
        norm: str = "instance",
    ):
        super().__init__()
        if n_blocks < 0 or n_downsampling < 0:
            raise UserError("pix2pixHD global generator: n_blocks and n_downsampling must be >= 0")
        self.n_downsampling = int(n_downsampling)
        self.name = "global"
        layers = _global_layers(
            input_nc, output_nc, ngf, n_downsampling, n_blocks, _check_norm(norm)
        )
        self.model = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        return 2**self.n_downsampling

    def local_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    def __init__(
        self,
        input_nc: int = 36,
        output_nc: int = 3,
        ngf: int = 32,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        norm: str = "instance",
    ):
        super().__init__()
        _check_norm(norm)
        if n_local_enhancers < 1:
            raise UserError("pix2pixHD local enhancer: n_local_enhancers must be >= 1")
        self.n_local_enhancers = int(n_local_enhancers)
        self.n_downsample_global = int(n_downsample_global)
        self.name = "local"
        width = ngf * 2**n_local_enhancers
        layers = _global_layers(
            input_nc, output_nc, width, n_downsample_global, n_blocks_global, norm
        )
        self.model = nn.Sequential(*layers[:-3])  # without the output conv layers
        for n in range(1, n_local_enhancers + 1):
            w = ngf * 2 ** (n_local_enhancers - n)
            front = [
                nn.ReflectionPad2d(3),
                nn.Conv2d(input_nc, w, 7, padding=0),
                norm_layer(norm, w),
                nn.ReLU(True),
                nn.Conv2d(w, w * 2, 3, stride=2, padding=1),
                norm_layer(norm, w * 2),
                nn.ReLU(True),
            ]
            back: list[nn.Module] = [hd_resnet_block(w * 2, norm) for _ in range(n_blocks_local)]
            back += [
                nn.ConvTranspose2d(w * 2, w, 3, stride=2, padding=1, output_padding=1),
                norm_layer(norm, w),
                nn.ReLU(True),
            ]
            if n == n_local_enhancers:
                back += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.n_downsample_global + self.n_local_enhancers)

    def local_parameters(self) -> list[nn.Parameter]:
        """The outermost enhancer's parameters (the reference's ``model<n>*`` keys)."""
        prefix = f"model{self.n_local_enhancers}"
        return [p for k, p in self.named_parameters() if k.startswith(prefix)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front, back = getattr(self, f"model{n}_1"), getattr(self, f"model{n}_2")
            out = back(front(pyramid[self.n_local_enhancers - n]) + out)
        return out


def load_global_weights(net: LocalEnhancer, path: str | os.PathLike) -> LocalEnhancer:
    """Start a local enhancer from a trained global generator (the reference's
    ``--load_pretrain`` of a ``netG global`` run): its ``model.<i>`` layers, all but the output
    convolution, go into ``net.model``. The file is a global generator's state dict (the
    reference's ``latest_net_G.pth``) or one of our checkpoints (``generator.model.<i>``)."""
    what, hint = "pix2pixHD global generator weights", "model.generator.global_weights=<file>"
    # our checkpoints also hold numpy RNG states: allow exactly those in the safe load
    allow = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct]
    obj = load_file(path, what, hint, allow=allow)
    if isinstance(obj, dict) and isinstance(obj.get("task"), dict):
        obj = obj["task"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors ({what})")
    state = strip_prefix(obj, "module.")
    if any(k.startswith("generator.") for k in state):
        state = {k[10:]: v for k, v in state.items() if k.startswith("generator.")}
    own = net.model.state_dict()
    picked = {k[len("model.") :]: v for k, v in state.items() if k[len("model.") :] in own}
    missing = sorted(set(own) - set(picked))
    if missing or not all(picked[k].shape == own[k].shape for k in own):
        bad = missing[0] if missing else next(k for k in own if picked[k].shape != own[k].shape)
        raise UserError(
            f"{path}: not the weights of a global generator this local enhancer holds (model.{bad} "
            "missing or of another shape); train it with model.generator.name=global and the same "
            "n_downsample_global / n_blocks_global, with ngf = this ngf x 2"
        )
    net.model.load_state_dict(picked)
    return net


def build_hd_generator(
    name: str = "global",
    input_nc: int = 36,
    output_nc: int = 3,
    ngf: int = 64,
    n_downsample_global: int = 4,
    n_blocks_global: int = 9,
    n_local_enhancers: int = 1,
    n_blocks_local: int = 3,
    norm: str = "instance",
    init_std: float = 0.02,
    global_weights: str | None = None,
) -> nn.Module:
    """pix2pixHD's ``define_G``: ``global`` (G1) or ``local`` (G1 + ``n_local_enhancers``
    enhancers; its ``ngf`` is the outermost enhancer's width, the reference's 32), initialised
    N(0, init_std); ``global_weights`` (local only) starts G1 from a trained global generator."""
    if name == "global":
        net: nn.Module = GlobalGenerator(
            input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, norm
        )
    elif name == "local":
        net = LocalEnhancer(
            input_nc,
            output_nc,
            ngf,
            n_downsample_global,
            n_blocks_global,
            n_local_enhancers,
            n_blocks_local,
            norm,
        )
    else:
        raise UserError(f"pix2pixHD generator {name!r} is unknown; use global or local")
    init_weights(net, init_std)
    if global_weights:
        if name != "local":
            raise UserError(
                "model.generator.global_weights starts a local enhancer from a global "
                "generator; set model.generator.name=local (or drop global_weights)"
            )
        load_global_weights(net, global_weights)
    return net
