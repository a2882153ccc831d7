"""Corner pooling (CornerNet / CenterNet) on NCHW tensors.

- top:    y[..., h, w] = max over x[..., h:, w]   (it and everything below it; scans up)
- bottom: y[..., h, w] = max over x[..., :h+1, w] (everything above; scans down)
- left:   y[..., h, w] = max over x[..., h, w:]   (everything to the right; scans left)
- right:  y[..., h, w] = max over x[..., h, :w+1] (everything to the left; scans right)

Backward sends each output's gradient to the arg-max of its scanned range. Tie rule (``tie``):
- ``"nearest"`` (default): among equal maxima, the one nearest the output position, i.e. the
  last met in scan order. This is torch.cummax's rule; a position holding the running maximum
  gets its own gradient (ties are common after ReLU, where zeros are equal).
- ``"first"``: the first met in scan order (farthest from the output), the rule of the
  CenterNet C++ extension, for reproducing its training exactly.
Center pooling and cascade corner pooling are composed from these (CenterNet issue).
NaN inputs are not supported.
"""

from __future__ import annotations

import numpy as np
import torch

from ._backend import kernel_device, reference_backward

DIRECTIONS = {"top": 0, "bottom": 1, "left": 2, "right": 3}
TIES = {"nearest": 0, "first": 1}


def _argmax_index(x: torch.Tensor, dim: int, tie: str) -> torch.Tensor:
    """Index (along ``dim``) of the tie-ruled arg-max of x[..., :i+1] for every i, scanning
    towards increasing index. Independent of torch.cummax's own tie-breaking."""
    vals = torch.cummax(x, dim).values
    shape = [1] * x.dim()
    shape[dim] = x.shape[dim]
    pos = torch.arange(x.shape[dim], device=x.device).reshape(shape).expand_as(x)
    if tie == "nearest":
        mark = x == vals  # positions holding the running maximum
    else:  # first: positions where the running maximum strictly increases
        mark = torch.ones_like(x, dtype=torch.bool)
        n = x.shape[dim]
        mark.narrow(dim, 1, n - 1).copy_(vals.narrow(dim, 1, n - 1) > vals.narrow(dim, 0, n - 1))
    return torch.cummax(torch.where(mark, pos, torch.zeros_like(pos)), dim).values


def corner_pool_reference(x: torch.Tensor, direction: str, tie: str = "nearest") -> torch.Tensor:
    """Torch corner pooling: a gather at the tie-ruled cumulative arg-max (autograd scatters
    the gradient to it; double backward works since gather is linear)."""
    dim = 2 if direction in ("top", "bottom") else 3
    flip = direction in ("top", "left")
    xs = x.flip(dim) if flip else x
    if xs.shape[dim] == 0:
        return x.clone()
    with torch.no_grad():
        idx = _argmax_index(xs.detach(), dim, tie)
    y = xs.gather(dim, idx)
    return y.flip(dim) if flip else y


class CornerPool(torch.autograd.Function):
    """Kernel path of corner pooling (NCHW)."""

    @staticmethod
    def forward(ctx, x, direction, tie):
        from ops_cuda.launch import launch
        from ops_cuda.registry import CTYPE

        xc = x.contiguous()
        n, c, h, w = xc.shape
        y = torch.empty_like(xc)
        lines = n * c * (w if DIRECTIONS[direction] < 2 else h)
        launch(
            "corner_pool.cu",
            "corner_pool_fwd",
            CTYPE[xc.dtype],
            xc.device,
            lines,
            (xc, np.int64(n * c), np.int64(h), np.int64(w), np.int32(DIRECTIONS[direction]), y),
        )
        ctx.save_for_backward(x)
        ctx.params = (direction, tie)
        return y

    @staticmethod
    def backward(ctx, grad):
        from ops_cuda.launch import launch
        from ops_cuda.registry import CTYPE

        (x,) = ctx.saved_tensors
        direction, tie = ctx.params
        if torch.is_grad_enabled():
            (g,) = reference_backward(
                lambda a: corner_pool_reference(a, direction, tie), (x,), (True,), grad
            )
            return g, None, None
        xc = x.contiguous()
        n, c, h, w = xc.shape
        gin = torch.zeros_like(xc)
        lines = n * c * (w if DIRECTIONS[direction] < 2 else h)
        launch(
            "corner_pool.cu",
            "corner_pool_bwd",
            CTYPE[xc.dtype],
            xc.device,
            lines,
            (
                xc,
                grad.contiguous(),
                np.int64(n * c),
                np.int64(h),
                np.int64(w),
                np.int32(DIRECTIONS[direction]),
                np.int32(TIES[tie]),
                gin,
            ),
        )
        return gin, None, None


def corner_pool(x: torch.Tensor, direction: str, tie: str = "nearest") -> torch.Tensor:
    """Corner pooling of x (N, C, H, W) towards ``direction`` ("top" | "bottom" | "left" |
    "right"); same shape out. ``tie`` picks which equal maximum receives the gradient
    ("nearest" or "first", see the module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"corner_pool: direction={direction!r}; choose one of {tuple(DIRECTIONS)}")
    if tie not in TIES:
        raise ValueError(f"corner_pool: tie={tie!r}; choose one of {tuple(TIES)}")
    if x.dim() != 4:
        raise ValueError(f"corner_pool: x must be NCHW (4 dims); got shape {tuple(x.shape)}")
    if x.numel() > 0 and kernel_device(x) is not None:
        return CornerPool.apply(x, direction, tie)
    return corner_pool_reference(x, direction, tie)
