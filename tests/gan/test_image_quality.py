"""PSNR, SSIM and the Frechet distance against plain float64 formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from src.metrics.image_quality import (
    FrechetDistance,
    ImageQuality,
    RandomFeatures,
    feature_network,
    frechet_distance,
    psnr,
    ssim,
)


def _images(seed, shape=(2, 3, 16, 14)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


def test_psnr_is_10_log10_of_one_over_mse_on_unit_range():
    a, b = _images(0), _images(1)
    x, y = (a.numpy() + 1) / 2, (b.numpy() + 1) / 2
    for i in range(2):
        mse = np.mean((x[i] - y[i]) ** 2)
        assert float(psnr(a, b)[i]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    assert float(psnr(a, a)[0]) == pytest.approx(100.0)


def _ssim_loop(x, y, size=11, sigma=1.5):
    """Wang et al. 2004 written out: a Gaussian window slid over every valid position."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                px, py = x[c, i : i + size, j : j + size], y[c, i : i + size, j : j + size]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                num = (2 * mx * my + c1) * (2 * cov + c2)
                values.append(num / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_windowed_formula():
    a = _images(2)
    b = (a + 0.3 * _images(3)).clamp(-1, 1)
    got = ssim(a, b)
    for i in range(2):
        want = _ssim_loop((a[i].numpy() + 1) / 2, (b[i].numpy() + 1) / 2)
        assert float(got[i]) == pytest.approx(want, rel=1e-10)
    assert float(ssim(a, a)[0]) == pytest.approx(1.0)
    tiny = _images(4, (1, 3, 6, 7))  # smaller than the window: a 5x5 window
    want = _ssim_loop((tiny[0].numpy() + 1) / 2, (tiny[0].numpy() * 0.5 + 1) / 2, size=5)
    assert float(ssim(tiny, tiny * 0.5)[0]) == pytest.approx(want, rel=1e-10)


def test_frechet_distance_matches_the_eigenvalue_form():
    g = np.random.default_rng(0)
    r, f = g.normal(size=(50, 4)), g.normal(0.5, 2.0, size=(40, 4))
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    # Tr((S1 S2)^(1/2)) = sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2)
    root = linalg.sqrtm(s1).real
    trace = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    diff = r.mean(0) - f.mean(0)
    want = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace
    assert frechet_distance(r.mean(0), s1, f.mean(0), s2) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(r.mean(0), s1, r.mean(0), s1) == pytest.approx(0, abs=1e-8)


def test_fd_random_is_named_so_fixed_by_its_seed_and_separates_sets():
    net = feature_network(None)
    assert isinstance(net, RandomFeatures) and net.name == "fd_random"
    torch.manual_seed(123)  # the global RNG plays no part
    other = feature_network(None)
    x = _images(5, (4, 3, 32, 32)).float()
    torch.testing.assert_close(net(x), other(x), rtol=0, atol=0)
    near, far = FrechetDistance(net), FrechetDistance(net)
    real = _images(6, (16, 3, 32, 32)).float()
    near.update(real + 0.01 * _images(7, real.shape).float(), real)
    far.update(torch.zeros_like(real), real)
    assert 0 <= near.compute() < far.compute()
    metric = ImageQuality(net)
    metric.update(real, real)
    out = metric.compute()
    assert out["psnr"] == pytest.approx(100.0) and out["ssim"] == pytest.approx(1.0)
    assert set(out) == {"psnr", "ssim", "l1", "fd_random"} and "fid" not in out
    single = ImageQuality(net)
    single.update(real[:1], real[:1])
    assert "fd_random" not in single.compute()  # undefined with one image: left out


@pytest.mark.slow
def test_fd_inception_from_a_local_file(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    state = inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict()
    torch.save(state, tmp_path / "inception.pth")
    net = feature_network(str(tmp_path / "inception.pth"))
    assert net.name == "fd_inception"
    x = _images(8, (2, 3, 64, 64)).float()
    assert net(x).shape == (2, 2048)
