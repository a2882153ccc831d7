"""Feature extraction blocks (port of ``gluoncv.nn.feature``) over timm backbones.

``timm_features(name, out_indices, pretrained, weights)`` is the one builder of timm
``features_only`` backbones in the repo (WS-DAN uses it too). ``FeatureExtractor`` returns a
list of feature maps from a backbone; ``FeatureExpander`` appends SSD-style extra stride-2
stages (optional 1x1 transition, BN, ReLU) after the last one.

``network`` is a timm model name (built with ``features_only=True``) or an ``nn.Module``.
``outputs`` selects features either by stage index (ints, timm ``out_indices``) or by module /
graph-node name (strings, via ``torchvision.models.feature_extraction``). Pretrained weights
never come from the network by default: ``pretrained=False``; a local ``weights`` file (a
``state_dict`` of the whole timm model, ``.pth``/``.safetensors``) can be given instead; a missing
file raises ``FileNotFoundError`` (``src.utils.weights_file``) naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from src.utils.weights_file import check_file, read_state_dict

__all__ = ["FeatureExtractor", "FeatureExpander", "timm_features"]

_WEIGHTS = "backbone weights file"
_WEIGHTS_HINT = (
    "give the path of a local state_dict (.pth or .safetensors) of the timm model, "
    "or weights=None for random init"
)


def _as_list(outputs) -> list:
    if isinstance(outputs, (str, int)):
        return [outputs]
    outputs = list(outputs)
    if not outputs:
        raise ValueError("At least one output must be specified.")
    if not (all(isinstance(o, int) for o in outputs) or all(isinstance(o, str) for o in outputs)):
        raise TypeError(f"outputs must be all ints (stage indices) or all str (names): {outputs}")
    return outputs


def timm_features(
    name: str,
    out_indices: Sequence[int] | None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    what: str = _WEIGHTS,
    hint: str = _WEIGHTS_HINT,
    **kwargs,
) -> nn.Module:
    """``timm.create_model(name, features_only=True, out_indices=out_indices, **kwargs)``
    (``out_indices=None``: the whole model, not features_only).

    ``weights``: a local state dict of the whole timm model; timm loads it, drops what the
    feature model lacks (the classifier) and adapts it. A missing file raises
    ``WeightsFileNotFoundError`` (a ``FileNotFoundError``) ``"<what> not found: <path>
    (<hint>)"``; an unknown model name a ``ValueError``. ``pretrained=True`` lets timm fetch
    its own weights (needs the network).
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"unknown backbone {name!r}; use a timm model name such as "
            "inception_v3, resnet18 or resnet50 (timm.list_models())"
        )
    extra: dict = {}
    if out_indices is not None:
        extra.update(features_only=True, out_indices=tuple(out_indices))
    if weights is not None:
        path = check_file(weights, what, hint)
        extra.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    else:
        extra.update(pretrained=pretrained)
    return timm.create_model(name, **extra, **kwargs)


def _build(network, outputs, pretrained, weights, **kwargs):
    """Return ``(module, names_or_None)``; module maps an image batch to a list of features."""
    outputs = _as_list(outputs)
    by_index = isinstance(outputs[0], int)
    if isinstance(network, str):
        model = timm_features(
            network, tuple(outputs) if by_index else None, pretrained, weights, **kwargs
        )
        if by_index:
            return model
        network = model
    elif isinstance(network, nn.Module):
        if weights is not None:
            network.load_state_dict(read_state_dict(weights, _WEIGHTS, _WEIGHTS_HINT))
        if by_index:
            if not hasattr(network, "feature_info"):
                raise TypeError(
                    "selecting outputs by index needs a timm model (with "
                    "feature_info); give module names as outputs instead"
                )
            from timm.models import FeatureListNet

            return FeatureListNet(network, out_indices=tuple(outputs))
    else:
        raise TypeError(
            f"network must be a timm model name or an nn.Module, got {type(network).__name__}"
        )
    return _NamedFeatures(network, outputs)


class _NamedFeatures(nn.Module):
    """Features by node name through torch.fx (torchvision's feature extraction)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.names = list(names)
        self.body = create_feature_extractor(model, return_nodes={n: n for n in self.names})

    def forward(self, x):
        feats = self.body(x)
        return [feats[n] for n in self.names]


def _feature_channels(body: nn.Module) -> list[int]:
    info = getattr(body, "feature_info", None)
    if info is not None and hasattr(info, "channels"):
        return list(info.channels())
    was_training = body.training
    body.eval()
    with torch.no_grad():
        p = next(body.parameters(), None)
        x = torch.zeros(1, 3, 224, 224, device=p.device if p is not None else "cpu")
        chans = [f.shape[1] for f in body(x)]
    body.train(was_training)
    return chans


class FeatureExtractor(nn.Module):
    """Feature extractor: ``forward(x)`` returns a list of feature maps.

    Args:
        network: timm model name or ``nn.Module``.
        outputs: stage indices (ints) or node names (strings), see the module docstring.
        inputs: accepted for GluonCV compatibility (MXNet symbol inputs); unused.
        pretrained: let timm fetch its pretrained weights (needs the network; default False).
        ctx: optional device to move the extractor to (GluonCV's context).
        weights: optional local state_dict file of the full model; a clear
            ``FileNotFoundError`` naming it is raised when it is missing.
        **kwargs: passed to ``timm.create_model``.
    """

    def __init__(
        self, network, outputs, inputs=("data",), pretrained=False, ctx=None, weights=None, **kwargs
    ):
        super().__init__()
        self.body = _build(network, outputs, pretrained, weights, **kwargs)
        if ctx is not None:
            self.to(ctx)

    @property
    def channels(self) -> list[int]:
        """Channels of each output feature map."""
        return _feature_channels(self.body)

    def forward(self, x):
        return list(self.body(x))


class FeatureExpander(nn.Module):
    """Feature extractor plus extra stride-2 stages appended after its last output (SSD).

    Each extra stage ``i`` is: optional 1x1 transition conv to ``max(min_depth, round(f *
    reduce_ratio))`` channels (+BN) + ReLU, then a 3x3 stride-2 conv to ``num_filters[i]``
    (+BN) + ReLU. Convs have no bias when ``use_bn``. ``global_pool`` appends a global average
    pool of the last map. ``forward(x)`` returns the backbone features followed by the new ones.

    Argument order as GluonCV: ``(network, outputs, num_filters, use_1x1_transition, use_bn,
    reduce_ratio, min_depth, global_pool, pretrained, ctx, inputs)``, then ``weights``.
    """

    def __init__(
        self,
        network,
        outputs,
        num_filters,
        use_1x1_transition=True,
        use_bn=True,
        reduce_ratio=1.0,
        min_depth=128,
        global_pool=False,
        pretrained=False,
        ctx=None,
        inputs=("data",),
        weights=None,
        **kwargs,
    ):
        super().__init__()
        self.body = _build(network, outputs, pretrained, weights, **kwargs)
        in_ch = _feature_channels(self.body)[-1]
        self.extras = nn.ModuleList()
        for f in num_filters:
            layers: list[nn.Module] = []
            if use_1x1_transition:
                num_trans = max(min_depth, int(round(f * reduce_ratio)))
                layers.append(nn.Conv2d(in_ch, num_trans, 1, bias=not use_bn))
                if use_bn:
                    layers.append(nn.BatchNorm2d(num_trans))
                layers.append(nn.ReLU(inplace=True))
                in_ch = num_trans
            layers.append(nn.Conv2d(in_ch, f, 3, stride=2, padding=1, bias=not use_bn))
            if use_bn:
                layers.append(nn.BatchNorm2d(f))
            layers.append(nn.ReLU(inplace=True))
            in_ch = f
            self.extras.append(nn.Sequential(*layers))
        for m in self.extras.modules():
            if isinstance(m, nn.Conv2d):
                # MXNet Xavier(gaussian, factor_type='out', magnitude=2) == He normal, fan_out
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool else None
        if ctx is not None:
            self.to(ctx)

    def forward(self, x):
        feats = list(self.body(x))
        y = feats[-1]
        for stage in self.extras:
            y = stage(y)
            feats.append(y)
        if self.global_pool is not None:
            feats.append(self.global_pool(y))
        return feats
