"""Center loss and the combined WS-DAN loss against plain per-sample formulations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.losses.ws_dan import CenterLoss, WSDANLoss


def normalized(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / max(n, 1e-12) for x in v]


def center_loop(centers, features, labels, beta):
    """loss with pre-update normalised centers; then one step per class toward its mean."""
    centers = [list(c) for c in centers]
    loss = 0.0
    for f, y in zip(features, labels):
        c = normalized(centers[y])
        loss += sum((a - b) ** 2 for a, b in zip(f, c))
    loss /= len(features)
    new = [list(c) for c in centers]
    for k in range(len(centers)):
        members = [f for f, y in zip(features, labels) if y == k]
        if not members:
            continue
        mean = [sum(col) / len(members) for col in zip(*members)]
        c = normalized(centers[k])
        new[k] = [ck + beta * (m - cn) for ck, m, cn in zip(centers[k], mean, c)]
    return loss, new


def test_center_loss_matches_loop_with_repeated_classes():
    rng = np.random.default_rng(0)
    crit = CenterLoss(num_classes=4, feature_dim=6, beta=0.05).double()
    crit.centers.copy_(torch.from_numpy(rng.normal(size=(4, 6))))
    for _step in range(3):
        features = F.normalize(torch.from_numpy(rng.normal(size=(7, 6))), dim=1)
        labels = torch.tensor([0, 2, 0, 0, 3, 2, 0])  # class 1 absent, 0 four times
        before = crit.centers.clone()
        want_loss, want_centers = center_loop(
            before.tolist(), features.tolist(), labels.tolist(), 0.05
        )
        loss = crit(features, labels)
        assert loss.item() == pytest.approx(want_loss, rel=1e-12)
        np.testing.assert_allclose(crit.centers.numpy(), want_centers, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(crit.centers[1], before[1])  # absent class untouched


def test_center_update_hand_worked():
    # Center (0, 2) -> normalised (0, 1). Two samples of class 0: (1, 0) and (0, 1); mean
    # (0.5, 0.5). New center = (0, 2) + 0.5 * ((0.5, 0.5) - (0, 1)) = (0.25, 1.75).
    # Loss = (|(1,0)-(0,1)|^2 + 0) / 2 = 1.
    crit = CenterLoss(1, 2, beta=0.5).double()
    crit.centers.copy_(torch.tensor([[0.0, 2.0]]))
    loss = crit(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(1.0)
    assert crit.centers.tolist() == [[0.25, 1.75]]


def test_first_update_from_zero_centers_and_no_update_in_eval():
    crit = CenterLoss(2, 3)
    f = F.normalize(torch.tensor([[1.0, 2.0, 2.0]]), dim=1)
    crit.eval()
    crit(f, torch.tensor([1]))
    assert crit.centers.abs().sum() == 0
    crit.train()
    loss = crit(f, torch.tensor([1]))
    assert loss.item() == pytest.approx(1.0)  # |f - 0|^2, normalize(0) = 0
    torch.testing.assert_close(crit.centers[1], 0.05 * f[0])


def test_non_finite_features_do_not_touch_centers():
    crit = CenterLoss(2, 2)
    crit.centers.fill_(1.0)
    f = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])
    crit(f, torch.tensor([0, 1]))
    assert torch.isfinite(crit.centers).all()
    torch.testing.assert_close(crit.centers[0], torch.ones(2))


def test_centers_are_a_buffer_with_final_shape_after_build():
    loss = WSDANLoss(center_weight=1.0)
    loss.build(5, 12)
    assert loss.state_dict()["center.centers"].shape == (5, 12)
    assert not list(loss.parameters())


def test_combined_loss_and_ce_ablation():
    g = torch.Generator().manual_seed(0)
    raw, crop, drop = (torch.randn(4, 3, generator=g) for _ in range(3))
    fm = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    y = torch.tensor([0, 1, 2, 1])
    full = WSDANLoss(center_weight=1.0)
    full.build(3, 8)
    out = full(raw, crop, drop, fm, y)
    ce = [F.cross_entropy(t, y) for t in (raw, crop, drop)]
    center = (fm**2).sum() / 4  # centers start at zero
    torch.testing.assert_close(out["loss"], sum(ce) / 3 + center)
    torch.testing.assert_close(out["center"], center)
    torch.testing.assert_close(out["ce_crop"], ce[1])
    ablation = WSDANLoss(center_weight=0.0)
    ablation.build(3, 8)
    out = ablation(raw, crop, drop, fm, y)
    torch.testing.assert_close(out["loss"], sum(ce) / 3)
    assert out["center"].item() == 0.0 and ablation.state_dict() == {}
