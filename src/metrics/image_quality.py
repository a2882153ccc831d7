"""Image quality metrics for image-to-image translation, without downloads.

Images are (B, C, H, W) tensors in [-1, 1] (the generators' range); PSNR and SSIM are taken
on [0, 1] (data range 1), per image, and averaged over images. torchmetrics is not installed
here, so both are written out; tests check them against plain float64 formulas.

* ``psnr``: ``10 log10(1 / MSE)`` per image (MSE over all pixels and channels; an exact match
  is capped at 100 dB).
* ``ssim``: Wang et al. 2004: 11x11 Gaussian window (sigma 1.5; smaller odd windows for
  images under 11 px), K1 0.01, K2 0.03, weighted (population) moments, "valid" windows only
  (no padding), the SSIM map averaged over positions and channels.
* ``FrechetDistance``: ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` between the
  feature statistics of real and generated images (Heusel et al. 2017). The features come
  from ``feature_network(weights)``: with a local torchvision Inception-v3 weights file, its
  2048-d pool features at 299 px (``fd_inception``; that is the FID recipe on torchvision's
  Inception, not numerically the published TF-Inception FID); without a file, a fixed-seed
  random conv net (``fd_random``) — a consistent distance for comparing runs of this code,
  never called FID.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from src.utils.errors import UserError
from src.utils.weights_file import read_state_dict

__all__ = [
    "FrechetDistance",
    "ImageQuality",
    "RandomFeatures",
    "feature_network",
    "frechet_distance",
    "gaussian_window",
    "psnr",
    "ssim",
]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x.double() + 1.0) / 2.0


def psnr(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of images in [-1, 1] (data range 1 after mapping to [0, 1])."""
    mse = ((_unit(fake) - _unit(real)) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) float64 Gaussian summing to 1."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    fake: torch.Tensor, real: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """(B,) SSIM of images in [-1, 1] (see the module docstring)."""
    x, y = _unit(fake), _unit(real)
    c = x.shape[1]
    size = min(window, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    w = gaussian_window(size, sigma).to(x.device).expand(c, 1, size, size)
    blur = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance of two Gaussians (float64; a singular product gets a small ridge)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2)
    with warnings.catch_warnings():  # few samples, many features: singular is expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            ridge = np.eye(sigma1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class RandomFeatures(nn.Module):
    """A fixed random feature extractor (its own seeded generator; never trained): images
    resized to 64 px, three stride-2 4x4 convs (32, 64, 128 channels, He-normal weights,
    LeakyReLU 0.2), then the mean and the max over positions: 256 features."""

    name = "fd_random"

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        for cin, cout in ((3, 32), (32, 64), (64, 128)):
            conv = nn.Conv2d(cin, cout, 4, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
                conv.weight.mul_(math.sqrt(2.0 / (cin * 16)))
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(64, 64), mode="bilinear", align_corners=False)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


class InceptionFeatures(nn.Module):
    """torchvision Inception-v3 pool features (2048-d) from a local weights file."""

    name = "fd_inception"

    def __init__(self, weights: str):
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        state = read_state_dict(weights, "Inception-v3 weights", "model.fd_weights=<file>")
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(
                f"{weights}: not torchvision Inception-v3 weights ({str(e).splitlines()[0][:200]})"
            ) from None
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):  # always in eval mode (BN statistics)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(((x + 1) / 2 - self.mean) / self.std)


def feature_network(weights: str | None = None, seed: int = 0) -> nn.Module:
    """``InceptionFeatures(weights)`` with a file, else ``RandomFeatures(seed)``."""
    return InceptionFeatures(weights) if weights else RandomFeatures(seed)


class FrechetDistance:
    """Accumulates features of real and generated images; ``compute()`` -> float (nan with
    fewer than 2 images)."""

    def __init__(self, network: nn.Module):
        self.network = network
        self.name = network.name
        self.real: list[np.ndarray] = []
        self.fake: list[np.ndarray] = []

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        device = next(self.network.parameters()).device
        if device != fake.device:
            self.network.to(fake.device)
        self.fake.append(self.network(fake).double().cpu().numpy())
        self.real.append(self.network(real).double().cpu().numpy())

    def compute(self) -> float:
        if not self.real or sum(len(r) for r in self.real) < 2:
            return float("nan")
        r, f = np.concatenate(self.real), np.concatenate(self.fake)
        return frechet_distance(
            r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False)
        )


class ImageQuality:
    """PSNR, SSIM (means over images), L1 and the Frechet distance of a paired evaluation."""

    def __init__(self, features: nn.Module | None = None):
        self.psnr, self.ssim, self.l1, self.count = 0.0, 0.0, 0.0, 0
        self.fd = FrechetDistance(features) if features is not None else None

    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        fake, real = fake.float(), real.float()
        self.psnr += float(psnr(fake, real).sum())
        self.ssim += float(ssim(fake, real).sum())
        self.l1 += float((fake - real).abs().flatten(1).mean(1).sum())
        self.count += int(fake.shape[0])
        if self.fd is not None:
            self.fd.update(fake, real)

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        out = {"psnr": self.psnr / n, "ssim": self.ssim / n, "l1": self.l1 / n}
        if self.fd is not None:
            value = self.fd.compute()
            if math.isfinite(value):
                out[self.fd.name] = value
        return out
