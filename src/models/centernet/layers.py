"""CenterNet building blocks with the reference's (Duankaiwen/CenterNet) state-dict names.

* ``Convolution`` (the reference's ``convolution``): k x k conv (no bias with BN) -> BN -> ReLU;
  ``with_bn=False`` gives a biased conv, an empty ``bn`` and ReLU (the heads' first layer).
* ``CascadeCornerPool`` (the reference's ``pool``, ``tl_pool`` / ``br_pool``): for top-left
  (``pool1`` = top, ``pool2`` = left)::

      a = top(P1_look_conv(p1_conv1(x) + left(look_conv1(x))))
      b = left(P2_look_conv(p2_conv1(x) + top(look_conv2(x))))
      y = conv2(relu(p_bn1(p_conv1(a + b)) + bn1(conv1(x))))

  bottom-right is the same with bottom / right.
* ``CenterPool`` (the reference's ``pool_cross``, ``center_pool``)::

      a = bottom(top(p1_conv1(x)))     # the max over the whole column
      b = right(left(p2_conv1(x)))     # the max over the whole row
      y = conv2(relu(p_bn1(p_conv1(a + b)) + bn1(conv1(x))))

* ``kp_layer`` (the reference's ``make_kp_layer``): ``Convolution(3, with_bn=False)`` -> 1x1 conv.

The directional maxima are ``src.ops.corner_pool`` (CuPy kernels on CUDA tensors). ``tie``
picks which of equal maxima receives the gradient (``"first"`` = the reference C++ extension's
rule, ``"nearest"`` = the op's default); the forward values do not depend on it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.ops import corner_pool

__all__ = ["CascadeCornerPool", "CenterPool", "Convolution", "Residual", "kp_layer", "scan_max"]


def scan_max(x: Tensor, direction: str) -> Tensor:
    """Corner pooling's values by a log-step scan of shifted maxima (ONNX has no cummax; the
    exported graph uses this, for the traced size). Equal to ``corner_pool`` forward."""
    dim = 2 if direction in ("top", "bottom") else 3
    y = x.flip(dim) if direction in ("top", "left") else x
    n, step = y.shape[dim], 1
    while step < n:
        shifted = torch.cat((y.narrow(dim, 0, step), y.narrow(dim, 0, n - step)), dim)
        y = torch.maximum(y, shifted)
        step *= 2
    return y.flip(dim) if direction in ("top", "left") else y


class Convolution(nn.Module):
    """``convolution(k, inp_dim, out_dim, stride, with_bn)`` of the reference."""

    def __init__(self, k: int, inp_dim: int, out_dim: int, stride: int = 1, with_bn: bool = True):
        super().__init__()
        pad = (k - 1) // 2
        self.conv = nn.Conv2d(inp_dim, out_dim, k, stride=stride, padding=pad, bias=not with_bn)
        self.bn = nn.BatchNorm2d(out_dim) if with_bn else nn.Sequential()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    """``residual(k, inp_dim, out_dim, stride)`` of the reference (Hourglass)."""

    def __init__(self, k: int, inp_dim: int, out_dim: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp_dim, out_dim, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.skip = (
            nn.Sequential(
                nn.Conv2d(inp_dim, out_dim, 1, stride=stride, bias=False), nn.BatchNorm2d(out_dim)
            )
            if stride != 1 or inp_dim != out_dim
            else nn.Sequential()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(y + self.skip(x))


def kp_layer(cnv_dim: int, curr_dim: int, out_dim: int) -> nn.Sequential:
    """``make_kp_layer``: 3x3 conv (biased, no BN) + ReLU, then a 1x1 conv to ``out_dim``."""
    return nn.Sequential(
        Convolution(3, cnv_dim, curr_dim, with_bn=False), nn.Conv2d(curr_dim, out_dim, 1)
    )


class _PoolBase(nn.Module):
    def __init__(self, dim: int, mid: int, tie: str):
        super().__init__()
        self.tie = tie
        self.p1_conv1 = Convolution(3, dim, mid)
        self.p2_conv1 = Convolution(3, dim, mid)
        self.p_conv1 = nn.Conv2d(mid, dim, 3, padding=1, bias=False)
        self.p_bn1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = Convolution(3, dim, dim)

    def _pool(self, x: Tensor, direction: str) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            return scan_max(x, direction)
        return corner_pool(x, direction, tie=self.tie)

    def _merge(self, x: Tensor, pooled: Tensor) -> Tensor:
        return self.conv2(self.relu1(self.p_bn1(self.p_conv1(pooled)) + self.bn1(self.conv1(x))))


class CascadeCornerPool(_PoolBase):
    """Cascade corner pooling (``corner="tl"``: top + left; ``"br"``: bottom + right)."""

    def __init__(self, dim: int, corner: str = "tl", mid: int = 128, tie: str = "first"):
        super().__init__(dim, mid, tie)
        if corner not in ("tl", "br"):
            raise ValueError(f"CascadeCornerPool: corner={corner!r}; choose 'tl' or 'br'")
        self.corner = corner
        self.directions = ("top", "left") if corner == "tl" else ("bottom", "right")
        self.look_conv1 = Convolution(3, dim, mid)
        self.look_conv2 = Convolution(3, dim, mid)
        self.P1_look_conv = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.P2_look_conv = nn.Conv2d(mid, mid, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        d1, d2 = self.directions
        a = self._pool(self.P1_look_conv(self.p1_conv1(x) + self._pool(self.look_conv1(x), d2)), d1)
        b = self._pool(self.P2_look_conv(self.p2_conv1(x) + self._pool(self.look_conv2(x), d1)), d2)
        return self._merge(x, a + b)


class CenterPool(_PoolBase):
    """Center pooling: the column maximum plus the row maximum of two branches."""

    def forward(self, x: Tensor) -> Tensor:
        a = self._pool(self._pool(self.p1_conv1(x), "top"), "bottom")
        b = self._pool(self._pool(self.p2_conv1(x), "left"), "right")
        return self._merge(x, a + b)

    def __init__(self, dim: int, mid: int = 128, tie: str = "first"):
        super().__init__(dim, mid, tie)
