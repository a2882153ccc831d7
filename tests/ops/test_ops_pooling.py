"""Corner pooling vs cummax formulations, torch.cummax's autograd (tie "nearest"), a plain Python
scan (both tie rules) and a hand-worked tie example, on the reference and emulated kernels."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from src.ops import corner_pool, use_backend
from src.ops.check import numeric_vs_analytic, upstream_scaling_error

D = torch.float64
DIRS = ("top", "bottom", "left", "right")


@pytest.fixture(params=["reference", "emulate"])
def backend(request):
    with use_backend(request.param):
        yield request.param


def _cummax_oracle(x, direction):
    """Forward via torch.cummax with autograd (torch's tie rule: the last index met)."""
    if direction == "top":
        return torch.cummax(x.flip(2), 2).values.flip(2)
    if direction == "bottom":
        return torch.cummax(x, 2).values
    if direction == "left":
        return torch.cummax(x.flip(3), 3).values.flip(3)
    return torch.cummax(x, 3).values


def _loop_oracle(x, grad, direction, tie):
    """Plain scan per line: (output, input gradient)."""
    x2 = x.permute(0, 1, 3, 2) if direction in ("top", "bottom") else x  # scan along last dim
    g2 = grad.permute(0, 1, 3, 2) if direction in ("top", "bottom") else grad
    rev = direction in ("top", "left")
    y = torch.empty_like(x2)
    gin = torch.zeros_like(x2)
    n, c, a, b = x2.shape
    for i in range(n):
        for j in range(c):
            for k in range(a):
                order = list(range(b))[::-1] if rev else list(range(b))
                best, arg = None, None
                for pos in order:
                    v = x2[i, j, k, pos].item()
                    if best is None or v > best or (tie == "nearest" and v == best):
                        best, arg = v, pos
                    y[i, j, k, pos] = best
                    gin[i, j, k, arg] += g2[i, j, k, pos]
    if direction in ("top", "bottom"):
        return y.permute(0, 1, 3, 2), gin.permute(0, 1, 3, 2)
    return y, gin


@pytest.mark.parametrize("direction", DIRS)
def test_forward_and_nearest_grad_match_cummax(backend, direction):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=D)
    x[0, 0] = 0.0  # a plane of ties (as after ReLU)
    x[1, 2, 1:4, 2:5] = 1.5
    x = x.requires_grad_()
    up = torch.randn(2, 3, 5, 6, generator=gen, dtype=D)
    y = corner_pool(x, direction)
    (g,) = torch.autograd.grad(y, x, up)
    x2 = x.detach().clone().requires_grad_()
    y2 = _cummax_oracle(x2, direction)
    (g2,) = torch.autograd.grad(y2, x2, up)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    torch.testing.assert_close(g, g2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("tie", ["nearest", "first"])
def test_tie_rules_match_plain_scan(backend, direction, tie):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (1, 2, 4, 5), generator=gen).to(D).requires_grad_()  # many ties
    up = torch.randn(1, 2, 4, 5, generator=gen, dtype=D)
    y = corner_pool(x, direction, tie=tie)
    (g,) = torch.autograd.grad(y, x, up)
    y_ref, g_ref = _loop_oracle(x.detach(), up, direction, tie)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_tie_rule_hand_example(backend):
    # one column, H = 4, values top to bottom [2, 3, 1, 3]; TopPool y[h] = max(x[h:]) = 3
    x = torch.tensor([2.0, 3.0, 1.0, 3.0], dtype=D).reshape(1, 1, 4, 1).requires_grad_()
    up = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=D).reshape(1, 1, 4, 1)
    y = corner_pool(x, "top")
    assert y.flatten().tolist() == [3.0, 3.0, 3.0, 3.0]
    # nearest: y[0], y[1] take x[1] (the 3 nearest to them); y[2], y[3] take x[3]
    (g,) = torch.autograd.grad(y, x, up)
    assert g.flatten().tolist() == [0.0, 11.0, 0.0, 1100.0]
    # first (CenterNet): the scan starts at the bottom and meets x[3] first; it keeps every one
    (g,) = torch.autograd.grad(corner_pool(x, "top", tie="first"), x, up)
    assert g.flatten().tolist() == [0.0, 0.0, 0.0, 1111.0]


@pytest.mark.parametrize("direction", DIRS)
def test_gradcheck(backend, direction):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 3, 4, generator=gen, dtype=D, requires_grad=True)
    fn = lambda a: corner_pool(a, direction)
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))
    assert numeric_vs_analytic(fn, (x,)).ok
    assert upstream_scaling_error(fn, (x,)) < 1e-12


def test_float32_non_contiguous_and_errors(backend):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, 4, generator=gen).transpose(1, 3)  # non-contiguous (2, 4, 3, 5)
    for d in DIRS:
        torch.testing.assert_close(corner_pool(x, d), _cummax_oracle(x, d), rtol=0, atol=0)
    assert corner_pool(torch.zeros(1, 2, 0, 3), "top").shape == (1, 2, 0, 3)
    with pytest.raises(ValueError, match="direction"):
        corner_pool(x, "up")
    with pytest.raises(ValueError, match="tie"):
        corner_pool(x, "top", tie="last")
    with pytest.raises(ValueError, match="NCHW"):
        corner_pool(torch.zeros(3, 4), "top")
