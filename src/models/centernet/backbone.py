"""Backbones for CenterNet: timm features at full stage depth + an FPN-style neck to stride 4,
or the reference's Hourglass (``hourglass.py``).

Full-depth taps (``TimmStages``). timm's ``features_only`` GhostNet taps the FIRST block of each
stride level (``feature_info``: stride 4 at ``blocks.1``, 8 at ``blocks.3``, 16 at ``blocks.5``
(80 ch, before the 112-ch ``blocks.6``), 32 at ``blocks.7`` (before ``blocks.8`` / ``blocks.9``)).
We build the whole timm model (``features_only=False``, through ``src.nn.feature.timm_features``,
the one builder), run its ``forward_features`` and take, with forward hooks, the output of the
LAST top-level block of each stride level, found once from a dummy forward: for ``ghostnet_100``
``blocks.2`` (24 ch, stride 4), ``blocks.4`` (40, 8), ``blocks.6`` (112, 16) and ``blocks.9``
(960, 32: the 1x1 ConvBnAct that ends timm's feature trunk). Its classifier and ``conv_head``
are removed (no unused parameters). A timm model without a ``blocks`` sequence (ResNets, whose
stages already end a stride level) uses ``features_only`` with ``out_indices=(1, 2, 3, 4)``.

Neck (ours; there is no public Ghost + triplet model): FPN-style top-down path. A 1x1 conv + BN
lateral brings each of the four taps to ``neck_dim``; from stride 32 down, the coarser map is
upsampled (nearest, to the finer map's size) and added to the lateral, then a 3x3 conv-BN-ReLU
smooths the sum; the stride-4 result goes through a final 3x3 conv-BN-ReLU to ``out_dim``. At 511
input this is one 128 x 128 map, as the Hourglass gives.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.models.centernet.layers import Convolution
from src.nn.feature import timm_features

__all__ = ["FPNNeck", "TimmStages"]

STRIDES = (4, 8, 16, 32)


class TimmStages(nn.Module):
    """The last block output of each stride level 4, 8, 16, 32 of a timm model (a list)."""

    def __init__(
        self, name: str, pretrained: bool = False, weights: str | os.PathLike | None = None
    ):
        super().__init__()
        self.name = name
        model = timm_features(name, None, pretrained=pretrained, weights=weights)
        blocks = getattr(model, "blocks", None)
        if isinstance(blocks, nn.Sequential) and hasattr(model, "forward_features"):
            self.mode = "hooks"
            model.reset_classifier(0)
            for attr in ("conv_head", "act2", "norm_head", "head_hidden_size"):
                if isinstance(getattr(model, attr, None), nn.Module):
                    setattr(model, attr, nn.Identity())
            self.body = model
            self.taps = self._find_taps(model, blocks)
            self._hooks = [
                blocks[i].register_forward_hook(self._save(k)) for k, i in enumerate(self.taps)
            ]
        else:
            self.mode = "features_only"
            self.body = timm_features(name, (1, 2, 3, 4), pretrained=pretrained, weights=weights)
            self.taps = list(self.body.feature_info.module_name())
        self._store: dict[int, Tensor] = {}

    def _save(self, k: int):
        def hook(module, inputs, output):
            self._store[k] = output

        return hook

    @staticmethod
    def _find_taps(model: nn.Module, blocks: nn.Sequential) -> list[int]:
        sizes: list[tuple[int, int]] = []
        hooks = [
            b.register_forward_hook(lambda m, i, o, k=k: sizes.append((k, o.shape[-1])))
            for k, b in enumerate(blocks)
        ]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                model.forward_features(torch.zeros(1, 3, 64, 64))
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        taps = []
        for s in STRIDES:
            level = [k for k, w in sizes if w == 64 // s]
            if not level:
                raise ValueError(f"backbone: no block of {type(model).__name__} has stride {s}")
            taps.append(level[-1])
        return taps

    @property
    def channels(self) -> list[int]:
        if self.mode == "features_only":
            return list(self.body.feature_info.channels())
        was = self.training
        self.eval()
        with torch.no_grad():
            chans = [f.shape[1] for f in self(torch.zeros(1, 3, 64, 64))]
        self.train(was)
        return chans

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.mode == "features_only":
            return list(self.body(x))
        self._store.clear()
        self.body.forward_features(x)
        feats = [self._store[k] for k in range(len(self.taps))]
        self._store.clear()
        return feats


class FPNNeck(nn.Module):
    """Top-down FPN path from (stride 4, 8, 16, 32) features to one stride-4 map."""

    def __init__(self, in_channels: list[int], neck_dim: int = 128, out_dim: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, neck_dim, 1, bias=False), nn.BatchNorm2d(neck_dim))
            for c in in_channels
        )
        self.smooth = nn.ModuleList(Convolution(3, neck_dim, neck_dim) for _ in in_channels[:-1])
        self.out = Convolution(3, neck_dim, out_dim)

    def forward(self, feats: list[Tensor]) -> Tensor:
        y = self.lateral[-1](feats[-1])
        for k in range(len(feats) - 2, -1, -1):
            lat = self.lateral[k](feats[k])
            y = self.smooth[k](lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest"))
        return self.out(y)
