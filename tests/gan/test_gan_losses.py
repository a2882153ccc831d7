"""GAN losses against plain float64 formulas; the gradient penalty's value, options and its
differentiability twice (gradcheck / gradgradcheck on a tiny critic); feature matching; the
VGG loss's file handling; the pix2pix loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from src.losses.gan import (
    AdversarialLoss,
    Pix2PixLoss,
    VGGPerceptualLoss,
    feature_matching_loss,
    gradient_penalty,
)
from src.utils.errors import UserError


def _np(t):
    return t.detach().double().numpy()


def _bce(x, y):
    s = 1 / (1 + np.exp(-x))
    return float(np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s))))


@pytest.fixture
def preds():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 1, 5, 5, generator=g, dtype=torch.float64) - 0.5,
    )


def test_adversarial_losses_match_their_formulas(preds):
    real, fake = preds
    r, f = _np(real), _np(fake)
    expect = {
        "vanilla": (_bce(r, 1) + _bce(f, 0), _bce(f, 1)),
        "lsgan": (np.mean((r - 1) ** 2) + np.mean(f**2), np.mean((f - 1) ** 2)),
        "wgan": (-r.mean() + f.mean(), -f.mean()),
        "hinge": (np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f)), -f.mean()),
        "ragan_ls": (
            (np.mean((r - f.mean() - 1) ** 2) + np.mean((f - r.mean() + 1) ** 2)) / 2,
            (np.mean((r - f.mean() + 1) ** 2) + np.mean((f - r.mean() - 1) ** 2)) / 2,
        ),
    }
    for mode, (d_want, g_want) in expect.items():
        loss = AdversarialLoss(mode)
        assert float(loss.discriminator(real, fake)) == pytest.approx(d_want, rel=1e-12), mode
        assert float(loss.generator(fake, real)) == pytest.approx(g_want, rel=1e-12), mode
    # the reference's __call__
    assert float(AdversarialLoss("vanilla")(fake, True)) == pytest.approx(_bce(f, 1))
    assert float(AdversarialLoss("lsgan")(real, False)) == pytest.approx(np.mean(r**2))
    with pytest.raises(UserError, match="gan_mode='bce' is unknown"):
        AdversarialLoss("bce")


def test_multiscale_predictions_are_summed_over_scales(preds):
    real, fake = preds
    small_r, small_f = real[..., :3, :3] * 2, fake[..., :3, :3] + 1
    feats_r = [[real * 0, real], [small_r * 0, small_r]]  # last entry = the prediction
    feats_f = [[fake * 0, fake], [small_f * 0, small_f]]
    for mode in ("vanilla", "lsgan", "hinge", "ragan_ls"):
        loss = AdversarialLoss(mode)
        want = loss.discriminator(real, fake) + loss.discriminator(small_r, small_f)
        torch.testing.assert_close(loss.discriminator(feats_r, feats_f), want)
        want = loss.generator(fake, real) + loss.generator(small_f, small_r)
        torch.testing.assert_close(loss.generator(feats_f, feats_r), want)


def test_pix2pix_loss_halves_d_and_weights_l1_by_100(preds):
    real_pred, fake_pred = preds
    g = torch.Generator().manual_seed(1)
    fake, real = (torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    loss = Pix2PixLoss()
    r, f = _np(real_pred), _np(fake_pred)
    assert float(loss.discriminator(real_pred, fake_pred)) == pytest.approx(
        0.5 * (_bce(f, 0) + _bce(r, 1)), rel=1e-12
    )
    out = loss.generator(fake_pred, fake, real)
    l1 = float(np.mean(np.abs(_np(fake) - _np(real))))
    assert float(out["loss"]) == pytest.approx(_bce(f, 1) + 100 * l1, rel=1e-12)
    assert float(out["g_l1"]) == pytest.approx(l1) and loss.kind == "pix2pix"
    with pytest.raises(UserError, match="ragan_ls is not wired into pix2pix"):
        Pix2PixLoss("ragan_ls")


# ---- gradient penalty ---------------------------------------------------------------------------
def test_gradient_penalty_values_and_options():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    alpha = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64).view(3, 1, 1, 1)
    # critic(x) = sum(x^2) / 2 per sample -> its gradient at x is x itself
    critic = lambda x: (x**2).flatten(1).sum(1) / 2  # noqa: E731
    x = (alpha * real + (1 - alpha) * fake).numpy()
    per_sample = np.sqrt((x.reshape(3, -1) ** 2).sum(1))
    want = np.mean((per_sample - 1) ** 2) * 10
    got = gradient_penalty(critic, real, fake, alpha=alpha, eps=0)
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    # over channels only (DeblurGAN): the norm at each pixel, then the mean
    per_pixel = np.sqrt((x**2).sum(1))
    got = gradient_penalty(critic, real, fake, alpha=alpha, eps=0, norm_over="channels")
    assert float(got.detach()) == pytest.approx(np.mean((per_pixel - 1) ** 2) * 10, rel=1e-12)
    # one-sided (DPE), another target and lambda
    got = gradient_penalty(
        critic, real, fake, alpha=alpha, eps=0, one_sided=True, target=4.0, lambda_gp=2
    )
    assert float(got.detach()) == pytest.approx(
        np.mean(np.maximum(per_sample - 4, 0) ** 2) * 2, rel=1e-12
    )
    # alpha drawn per sample / once per batch from torch's RNG
    torch.manual_seed(3)
    drawn = torch.rand(3, 1, 1, 1, dtype=torch.float64)
    torch.manual_seed(3)
    torch.testing.assert_close(
        gradient_penalty(critic, real, fake), gradient_penalty(critic, real, fake, alpha=drawn)
    )
    torch.manual_seed(3)
    one = torch.rand(1, 1, 1, 1, dtype=torch.float64)
    torch.manual_seed(3)
    torch.testing.assert_close(
        gradient_penalty(critic, real, fake, alpha_per="batch"),
        gradient_penalty(critic, real, fake, alpha=one),
    )
    # at the real samples only (junyanz type 'real')
    at_real = np.sqrt((real.numpy().reshape(3, -1) ** 2).sum(1))
    got = gradient_penalty(critic, real, fake, interpolate="real", eps=0)
    assert float(got.detach()) == pytest.approx(np.mean((at_real - 1) ** 2) * 10, rel=1e-12)


class TinyCritic(nn.Module):
    """conv - LeakyReLU - InstanceNorm(affine) - conv - softplus - mean: every op of a PatchGAN
    critic in a few parameters."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.InstanceNorm2d(3, affine=True)
        self.c2 = nn.Conv2d(3, 1, 2)

    def forward(self, x):
        h = self.norm(nn.functional.leaky_relu(self.c1(x), 0.2))
        return nn.functional.softplus(self.c2(h)).mean((1, 2, 3))


def test_gradient_penalty_is_differentiable_twice_wrt_the_critic():
    torch.manual_seed(0)
    critic = TinyCritic().double()
    names = [n for n, _ in critic.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in critic.parameters())
    real = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    fake = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    alpha = torch.tensor([0.3, 0.8], dtype=torch.float64).view(2, 1, 1, 1)

    def penalty(*ps):
        f = lambda x: torch.func.functional_call(critic, dict(zip(names, ps)), (x,))  # noqa: E731
        return gradient_penalty(f, real, fake, alpha=alpha)

    # the penalty's gradient w.r.t. the critic (a second derivative of the critic) is exact
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-6)
    # the penalty twice differentiable w.r.t. the critic's parameters (a third derivative of
    # the critic: torch's batch/instance norm kernels stop at the second, so without the norm)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(3, 1, 2))
    plain = plain.double()
    plain_names = [n for n, _ in plain.named_parameters()]
    plain_params = tuple(p.detach().clone().requires_grad_(True) for p in plain.parameters())

    def plain_penalty(*ps):
        def f(x):
            out = torch.func.functional_call(plain, dict(zip(plain_names, ps)), (x,))
            return nn.functional.softplus(out).mean((1, 2, 3))

        return gradient_penalty(f, real, fake, alpha=alpha)

    assert torch.autograd.gradcheck(plain_penalty, plain_params, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(plain_penalty, plain_params, eps=1e-6, atol=1e-5)
    # and the critic's parameters get a gradient through the usual .backward()
    gradient_penalty(critic, real, fake, alpha=alpha).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


# ---- feature matching, VGG --------------------------------------------------------------------
def test_feature_matching_matches_pix2pixhd_weights():
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 4, 8, 8), (1, 8, 4, 4), (1, 1, 3, 3)]  # two feature maps + the prediction
    fake = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(2)]
    real = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(2)]
    n_layers = 1  # n_layers + 2 = 3 groups per scale
    want = sum(
        (1 / 2) * (4 / (n_layers + 1)) * 10 * np.mean(np.abs(_np(f) - _np(r)))
        for fs, rs in zip(fake, real)
        for f, r in list(zip(fs, rs))[:-1]
    )
    assert float(feature_matching_loss(fake, real)) == pytest.approx(want, rel=1e-12)
    real[0][0].requires_grad_(True)
    fake[0][0].requires_grad_(True)
    feature_matching_loss(fake, real).backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None  # real features detached


def test_vgg_loss_without_a_file_is_one_clear_line(tmp_path):
    with pytest.raises(UserError) as e:
        VGGPerceptualLoss(None)
    assert "\n" not in str(e.value) and "vgg_weights" in str(e.value)
    with pytest.raises(UserError, match="lambda_vgg"):
        Pix2PixLoss(lambda_vgg=10.0)
    bogus = tmp_path / "bogus.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bogus)
    with pytest.raises(UserError, match=r"not VGG19 weights \(no features.0.weight"):
        VGGPerceptualLoss(str(bogus))
    with pytest.raises(UserError, match="not found"):
        VGGPerceptualLoss(str(tmp_path / "missing.pth"))


@pytest.mark.slow
def test_vgg_loss_from_a_file_matches_a_plain_computation(tmp_path):
    from torchvision.models import vgg19

    torch.manual_seed(0)
    net = vgg19(weights=None)
    torch.save(
        {k: v for k, v in net.state_dict().items() if k.startswith("features.")}, tmp_path / "v.pth"
    )
    loss = VGGPerceptualLoss(str(tmp_path / "v.pth"))
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    want, hx, hy = 0.0, x, y
    cuts = [2, 7, 12, 21, 30]
    start = 0
    for w, cut in zip([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1], cuts):
        hx, hy = net.features[start:cut](hx), net.features[start:cut](hy)
        want += w * float((hx - hy).abs().mean())
        start = cut
    assert float(loss(x, y)) == pytest.approx(want, rel=1e-5)
    assert math.isfinite(want) and not list(
        Pix2PixLoss(lambda_vgg=1.0, vgg_weights=str(tmp_path / "v.pth")).state_dict()
    )
