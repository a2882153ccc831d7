"""Predictors: the last conv / dense layer of detection heads (port of ``gluoncv.nn.predictor``).

Weights start as MXNet's ``Xavier(magnitude=2)`` (uniform, averaged fans), biases at zero, as
GluonCV initialises them. With ``in_channels=0`` / ``in_units=0`` the input size is inferred on
the first forward (GluonCV's deferred initialisation).
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["ConvPredictor", "FCPredictor"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softrelu": nn.Softplus,
    "softsign": nn.Softsign,
}


def _activation(name):
    if name is None:
        return nn.Identity()
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; use one of {sorted(_ACTIVATIONS)}"
        ) from None


def _xavier_magnitude2(layer: nn.Module) -> None:
    # MXNet Xavier(rnd_type='uniform', factor_type='avg', magnitude=2):
    # U(-s, s) with s = sqrt(2 / ((fan_in + fan_out) / 2)) == xavier_uniform gain sqrt(2/3)
    nn.init.xavier_uniform_(layer.weight, gain=math.sqrt(2.0 / 3.0))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _init_when_ready(layer: nn.Module) -> None:
    if not isinstance(layer, nn.modules.lazy.LazyModuleMixin):
        _xavier_magnitude2(layer)
        return

    def hook(module, args):  # runs after the lazy module has materialised its parameters
        _xavier_magnitude2(module)
        handle.remove()

    handle = layer.register_forward_pre_hook(hook)


class ConvPredictor(nn.Module):
    """Convolutional predictor: output ``(B, num_channel, H', W')``.

    Args:
        num_channel: output channels (e.g. ``num_anchors * num_classes``).
        kernel, pad, stride: as ``(H, W)`` tuples.
        activation: optional name, e.g. ``'relu'``.
        use_bias: add a bias.
        in_channels: input channels; 0 infers them on the first call.
    """

    def __init__(
        self,
        num_channel,
        kernel=(3, 3),
        pad=(1, 1),
        stride=(1, 1),
        activation=None,
        use_bias=True,
        in_channels=0,
    ):
        super().__init__()
        if in_channels:
            conv = nn.Conv2d(
                in_channels, num_channel, kernel, stride=stride, padding=pad, bias=use_bias
            )
        else:
            conv = nn.LazyConv2d(num_channel, kernel, stride=stride, padding=pad, bias=use_bias)
        _init_when_ready(conv)
        self.predictor = conv
        self.activation = _activation(activation)

    def forward(self, x):
        return self.activation(self.predictor(x))


class FCPredictor(nn.Module):
    """Fully connected predictor: flattens all but the batch dim, output ``(B, num_output)``.

    Args:
        num_output: outputs.
        activation: optional name, e.g. ``'relu'``.
        use_bias: add a bias.
        in_units: input features; 0 infers them on the first call.
    """

    def __init__(self, num_output, activation=None, use_bias=True, in_units=0):
        super().__init__()
        if in_units:
            dense = nn.Linear(in_units, num_output, bias=use_bias)
        else:
            dense = nn.LazyLinear(num_output, bias=use_bias)
        _init_when_ready(dense)
        self.predictor = dense
        self.activation = _activation(activation)

    def forward(self, x):
        return self.activation(self.predictor(x.flatten(1)))
