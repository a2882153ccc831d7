"""Loss ops vs independent oracles (torchvision focal loss, F.smooth_l1_loss, numpy formulas),
on the torch reference and on the g++-emulated CUDA kernels, in float64."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.autograd import gradcheck, gradgradcheck

from src.ops import sigmoid_focal_loss, smooth_l1_loss, use_backend, wing_loss
from src.ops.check import numeric_vs_analytic, upstream_scaling_error

D = torch.float64


@pytest.fixture(params=["reference", "emulate"])
def backend(request):
    with use_backend(request.param):
        yield request.param


def _focal_oracle(x, targets, alpha, gamma, normalization):
    """torchvision's focal loss on the one-hot encoding of our integer targets."""
    c = x.shape[1]
    valid = targets != -1
    onehot = torch.zeros_like(x)
    pos_rows = valid & (targets > 0)
    onehot[pos_rows, targets[pos_rows] - 1] = 1.0
    total = torchvision.ops.sigmoid_focal_loss(
        x[valid], onehot[valid], alpha=alpha, gamma=gamma, reduction="sum"
    )
    norm = pos_rows.sum() if normalization == "positive" else valid.sum()
    assert c > 0
    return total / max(int(norm), 1)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
@pytest.mark.parametrize("normalization", ["positive", "valid"])
def test_focal_matches_torchvision(backend, alpha, gamma, normalization):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(9, 4, generator=gen, dtype=D) * 3).requires_grad_()
    targets = torch.tensor([0, 1, 4, -1, 2, 0, 3, -1, 1])
    ours = sigmoid_focal_loss(x, targets, alpha, gamma, normalization)
    (g_ours,) = torch.autograd.grad(ours, x)
    x2 = x.detach().clone().requires_grad_()
    oracle = _focal_oracle(x2, targets, alpha, gamma, normalization)
    (g_oracle,) = torch.autograd.grad(oracle, x2)
    assert ours.shape == ()
    torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_oracle, rtol=1e-10, atol=1e-12)
    assert g_ours[targets == -1].abs().max() == 0  # ignored rows get no gradient


def test_focal_hand_example(backend):
    # one positive and one background row, logits 0 (p = 0.5), alpha 0.25, gamma 2:
    # positive column: 0.25 * 0.5^2 * ln 2, each negative column: 0.75 * 0.5^2 * ln 2
    x = torch.zeros(2, 2, dtype=D)
    targets = torch.tensor([1, 0])
    per_pos, per_neg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    expected = per_pos + 3 * per_neg  # one positive, three negative entries; 1 positive row
    assert sigmoid_focal_loss(x, targets).item() == pytest.approx(expected, rel=1e-13)
    assert sigmoid_focal_loss(x, targets, normalization="valid").item() == pytest.approx(
        expected / 2, rel=1e-13
    )


def test_focal_no_positive_and_all_ignored(backend):
    x = torch.randn(3, 2, dtype=D)
    bg = sigmoid_focal_loss(x, torch.tensor([0, 0, 0]))  # divisor clamps to 1
    oracle = torchvision.ops.sigmoid_focal_loss(x, torch.zeros_like(x), reduction="sum")
    torch.testing.assert_close(bg, oracle)
    assert sigmoid_focal_loss(x, torch.tensor([-1, -1, -1])).item() == 0.0


def test_focal_grad_scale_is_an_autograd_input(backend):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=gen, dtype=D, requires_grad=True)
    targets = torch.tensor([1, 0, 2, 3, -1])
    scale = torch.tensor(2.5, dtype=D, requires_grad=True)
    loss = sigmoid_focal_loss(x, targets, grad_scale=scale)
    gx, gs = torch.autograd.grad(loss * 1.5, (x, scale))  # upstream gradient 1.5
    x1 = x.detach().clone().requires_grad_()
    plain = sigmoid_focal_loss(x1, targets)
    (gx1,) = torch.autograd.grad(plain, x1)
    torch.testing.assert_close(loss, 2.5 * plain)
    torch.testing.assert_close(gs, 1.5 * plain.detach())
    torch.testing.assert_close(gx, 1.5 * 2.5 * gx1)


def test_focal_gradcheck(backend):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, generator=gen, dtype=D, requires_grad=True)
    s = torch.tensor(0.7, dtype=D, requires_grad=True)
    targets = torch.tensor([0, 1, 3, -1, 2, 2])
    fn = lambda a, b: sigmoid_focal_loss(a, targets, gamma=1.5, grad_scale=b)
    assert gradcheck(fn, (x, s))
    assert gradgradcheck(fn, (x, s))
    report = numeric_vs_analytic(fn, (x, s))
    assert report.ok, str(report)
    assert upstream_scaling_error(fn, (x, s)) < 1e-12


def test_focal_float32_close_to_float64(backend):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 5, generator=gen, dtype=D) * 4
    targets = torch.randint(-1, 6, (64,), generator=gen)
    ref = sigmoid_focal_loss(x, targets)
    got = sigmoid_focal_loss(x.float(), targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=1e-6)


def test_focal_rejects_bad_inputs():
    with pytest.raises(ValueError, match="logits must be"):
        sigmoid_focal_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        sigmoid_focal_loss(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="normalization"):
        sigmoid_focal_loss(
            torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), normalization="mean"
        )


# ------------------------------------------------------------------------------ smooth L1


@pytest.mark.parametrize("sigma", [1.0, 3.0, 0.5])
def test_smooth_l1_matches_torch_with_beta(backend, sigma):
    # F.smooth_l1_loss(beta): 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta; beta = 1/sigma^2
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 4, generator=gen, dtype=D) * 2).requires_grad_()
    t = torch.randn(6, 4, generator=gen, dtype=D)
    ours = smooth_l1_loss(x, t, sigma=sigma)
    oracle = F.smooth_l1_loss(x, t, reduction="none", beta=1.0 / sigma**2)
    torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours.sum(), x)[0]
    g2 = torch.autograd.grad(oracle.sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    for red in ("sum", "mean"):
        torch.testing.assert_close(
            smooth_l1_loss(x, t, sigma, reduction=red),
            F.smooth_l1_loss(x, t, reduction=red, beta=1 / sigma**2),
        )


def test_smooth_l1_tensor_sigma_grads(backend):
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(5, 3, generator=gen, dtype=D) * 2).requires_grad_()
    t = torch.randn(5, 3, generator=gen, dtype=D).requires_grad_()
    sigma = (torch.rand(3, generator=gen, dtype=D) + 0.5).requires_grad_()
    loss = smooth_l1_loss(x, t, sigma)
    # numpy oracle of value and d/dsigma
    d = (x - t).detach().numpy()
    s = sigma.detach().numpy()
    quad = np.abs(d) < 1 / s**2
    val = np.where(quad, 0.5 * (s * d) ** 2, np.abs(d) - 0.5 / s**2)
    dsig = np.where(quad, s * d**2, 1 / s**3)
    np.testing.assert_allclose(loss.detach().numpy(), val, rtol=1e-12)
    up = torch.randn(5, 3, generator=gen, dtype=D)
    gx, gt, gs = torch.autograd.grad(loss, (x, t, sigma), up)
    np.testing.assert_allclose(gs.numpy(), (up.numpy() * dsig).sum(0), rtol=1e-11)
    torch.testing.assert_close(gt, -gx)
    fn = lambda a, b, c: smooth_l1_loss(a, b, c)
    assert gradcheck(fn, (x, t, sigma))
    assert gradgradcheck(fn, (x, t, sigma))


def test_smooth_l1_scalar_tensor_sigma_and_errors(backend):
    x = torch.tensor([0.1, -0.5, 2.0], dtype=D, requires_grad=True)
    sigma = torch.tensor(2.0, dtype=D, requires_grad=True)  # 1/s = 0.25
    loss = smooth_l1_loss(x, torch.zeros(3, dtype=D), sigma)
    expected = [0.5 * 4 * 0.01, 0.5 - 0.125, 2.0 - 0.125]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=D))
    (gs,) = torch.autograd.grad(loss.sum(), sigma)
    assert gs.item() == pytest.approx(2.0 * 0.01 + 2 / 8, rel=1e-12)  # sigma d^2 + 2 / sigma^3
    with pytest.raises(ValueError, match="sigma"):
        smooth_l1_loss(x, x, torch.ones(2, 3, dtype=D))
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(x, x, reduction="max")


# ------------------------------------------------------------------------------ wing loss


def _wing_numpy(d, w, eps):
    a = np.abs(d)
    c = w - w * np.log(1 + w / eps)
    return np.where(a < w, w * np.log(1 + a / eps), a - c)


@pytest.mark.parametrize("w,eps", [(10.0, 2.0), (2.0, 0.5)])
def test_wing_matches_formula(backend, w, eps):
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(7, 2, generator=gen, dtype=D) * 8).requires_grad_()
    t = torch.randn(7, 2, generator=gen, dtype=D)
    ours = wing_loss(x, t, w, eps)
    d = (x - t).detach().numpy()
    np.testing.assert_allclose(ours.detach().numpy(), _wing_numpy(d, w, eps), rtol=1e-12)
    (g,) = torch.autograd.grad(ours.sum(), x)
    slope = np.where(np.abs(d) < w, w / (eps + np.abs(d)), 1.0) * np.sign(d)
    np.testing.assert_allclose(g.numpy(), slope, rtol=1e-12)
    assert ours.sum().item() == pytest.approx(wing_loss(x, t, w, eps, "sum").item())


def test_wing_continuous_at_w_and_gradcheck(backend):
    w, eps = 10.0, 2.0
    at = torch.tensor([w - 1e-9, w + 1e-9], dtype=D)
    v = wing_loss(at, torch.zeros(2, dtype=D), w, eps)
    assert abs(v[0].item() - v[1].item()) < 1e-8
    assert v[0].item() == pytest.approx(w * math.log(1 + w / eps))
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(4, 3, generator=gen, dtype=D) * 3).requires_grad_()
    t = torch.randn(4, 3, generator=gen, dtype=D).requires_grad_()
    fn = lambda a, b: wing_loss(a, b, 2.0, 0.5)
    assert gradcheck(fn, (x, t))
    assert gradgradcheck(fn, (x, t))
    with pytest.raises(ValueError, match="w and eps"):
        wing_loss(x, t, w=0.0)


def test_elementwise_losses_float32(backend):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(100, generator=gen) * 5
    t = torch.randn(100, generator=gen)
    for fn in (lambda a, b: smooth_l1_loss(a, b, 1.5), lambda a, b: wing_loss(a, b)):
        torch.testing.assert_close(
            fn(x, t).double(), fn(x.double(), t.double()), rtol=1e-6, atol=1e-6
        )


def test_mixed_dtypes_promote(backend):
    x = torch.tensor([0.5, -3.0], dtype=torch.float32)
    t = torch.tensor([0.0, 0.0], dtype=D)
    for fn in (smooth_l1_loss, wing_loss):
        got = fn(x, t)
        assert got.dtype == D
        torch.testing.assert_close(got, fn(x.double(), t))


def test_focal_half_sum_does_not_overflow():
    # 4000 x 80 background logits of 3: each term ~0.75 * 0.95^2 * 3.05, total ~ 6.6e5 > 65504
    x = torch.full((4000, 80), 3.0, dtype=torch.float16)
    t = torch.zeros(4000, dtype=torch.long)
    got = sigmoid_focal_loss(x, t)  # no positives: divisor 1, so the result itself is large
    want = sigmoid_focal_loss(x.double(), t)
    assert got.dtype == torch.float16
    assert torch.isinf(got) == (want > 65504)  # the sum itself stayed finite in float32
    valid = sigmoid_focal_loss(x, t, normalization="valid")  # divided by 4000: representable
    torch.testing.assert_close(valid.double(), want / 4000, rtol=2e-3, atol=0)


def test_double_backward_reaches_non_contiguous_inputs(backend):
    """Second derivatives flow back to the caller's tensor, also through a transpose."""
    gen = torch.Generator().manual_seed(10)
    base = torch.randn(3, 6, generator=gen, dtype=D, requires_grad=True)
    targets = torch.tensor([0, 1, 3, -1, 2, 2])
    fn = lambda b: sigmoid_focal_loss(b.t(), targets)  # (6, 3) non-contiguous view
    assert gradgradcheck(fn, (base,))
    (g,) = torch.autograd.grad(fn(base), base, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), base)  # a gradient-penalty-like term
    assert gg.abs().sum() > 0
