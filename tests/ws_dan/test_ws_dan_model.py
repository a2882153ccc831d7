"""WSDAN model: bilinear attention pooling against a plain loop, shapes, construction errors."""

import math

import numpy as np
import pytest
import torch

from src.models.ws_dan import WSDAN, bilinear_attention_pooling


def pooling_loop(features: np.ndarray, attentions: np.ndarray) -> np.ndarray:
    """Per sample, per (m, c): mean over pixels of A_m * F_c; signed sqrt; L2 normalisation."""
    b, c, h, w = features.shape
    m = attentions.shape[1]
    out = np.zeros((b, m * c))
    for i in range(b):
        vec = []
        for k in range(m):
            for j in range(c):
                total = 0.0
                for y in range(h):
                    for x in range(w):
                        total += attentions[i, k, y, x] * features[i, j, y, x]
                v = total / (h * w)
                vec.append(math.copysign(math.sqrt(abs(v) + 1e-12), v))
        norm = math.sqrt(sum(v * v for v in vec))
        out[i] = [v / max(norm, 1e-12) for v in vec]
    return out


def test_bilinear_pooling_matches_loop():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    attentions = torch.rand(2, 4, 4, 5, generator=g, dtype=torch.float64)
    got = bilinear_attention_pooling(features, attentions)
    want = pooling_loop(features.numpy(), attentions.numpy())
    assert got.shape == (2, 12)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.norm(dim=1).numpy(), 1.0, rtol=1e-12)


def test_bilinear_pooling_hand_worked():
    # One 1x2 feature map [1, 3], one attention map [1, 0]: pooled (1*1 + 0*3) / 2 = 0.5;
    # sqrt(0.5) normalised alone -> 1. Two maps [1, 0] and [0, 1]: 0.5 and 1.5 ->
    # (sqrt(.5), sqrt(1.5)) / sqrt(2).
    features = torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64)
    one = bilinear_attention_pooling(features, torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64))
    assert one.item() == pytest.approx(1.0)
    maps = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    two = bilinear_attention_pooling(features, maps)
    np.testing.assert_allclose(two[0].numpy(), [math.sqrt(0.5 / 2), math.sqrt(1.5 / 2)], rtol=1e-9)


def test_forward_shapes_and_classifier_scale():
    torch.manual_seed(0)
    model = WSDAN(num_classes=7, backbone="resnet18", feature_index=2, num_attentions=4).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, feature_matrix, attention_maps = model(x)
    assert logits.shape == (2, 7)
    assert feature_matrix.shape == (2, 4 * 128) and model.feature_dim == 4 * 128
    assert attention_maps.shape == (2, 4, 8, 8)  # stride 8 at feature_index 2
    assert (attention_maps >= 0).all()
    torch.testing.assert_close(logits, feature_matrix * 100.0 @ model.fc.weight.T)
    assert model.fc.bias is None


def test_default_backbone_is_inception_mixed_6e():
    model = WSDAN(num_classes=3, num_attentions=2)
    assert model.backbone_name == "inception_v3"
    assert model.num_features == 768  # Mixed_6e
    assert model.backbone.feature_info.module_name()[-1] == "Mixed_6e"


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        WSDAN(num_classes=3, backbone="resnet18", weights=str(missing))


def test_local_weights_file_is_loaded(tmp_path):
    import timm

    torch.manual_seed(1)
    full = timm.create_model("resnet18", num_classes=5)
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    model = WSDAN(num_classes=3, backbone="resnet18", feature_index=2, weights=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, full.conv1.weight)
    torch.testing.assert_close(model.backbone.layer2[0].conv1.weight, full.layer2[0].conv1.weight)


def test_unknown_backbone_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'not_a_net'"):
        WSDAN(num_classes=3, backbone="not_a_net")
