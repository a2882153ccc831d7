import math

import pytest
import timm
import torch
from torch import nn

from src.nn import ConvPredictor, FCPredictor, FeatureExpander, FeatureExtractor


def test_conv_predictor_shapes_init_and_lazy():
    torch.manual_seed(0)
    p = ConvPredictor(24, in_channels=64)
    x = torch.randn(2, 64, 10, 12)
    assert p(x).shape == (2, 24, 10, 12)
    w = p.predictor.weight
    # MXNet Xavier(magnitude=2): U(-s, s), s = sqrt(2 / ((fan_in + fan_out) / 2))
    s = math.sqrt(2.0 / ((64 * 9 + 24 * 9) / 2))
    assert w.abs().max() <= s and w.abs().max() > 0.9 * s
    assert w.std().item() == pytest.approx(s / math.sqrt(3), rel=0.05)
    assert (p.predictor.bias == 0).all()
    lazy = ConvPredictor(
        8, kernel=(1, 1), pad=(0, 0), stride=(2, 2), activation="relu", use_bias=False
    )
    y = lazy(torch.randn(1, 16, 9, 9))
    assert y.shape == (1, 8, 5, 5) and (y >= 0).all() and lazy.predictor.bias is None
    s2 = math.sqrt(2.0 / ((16 + 8) / 2))
    assert lazy.predictor.weight.abs().max() <= s2
    torch.testing.assert_close(lazy(torch.ones(1, 16, 9, 9)), lazy(torch.ones(1, 16, 9, 9)))


def test_fc_predictor():
    torch.manual_seed(0)
    p = FCPredictor(10)
    x = torch.randn(3, 4, 5, 6)
    y = p(x)
    assert y.shape == (3, 10)
    torch.testing.assert_close(y, x.flatten(1) @ p.predictor.weight.T + p.predictor.bias)
    assert FCPredictor(5, activation="sigmoid", in_units=7)(torch.randn(2, 7)).min() >= 0
    with pytest.raises(ValueError):
        FCPredictor(5, activation="swishy")


def test_feature_extractor_by_index_and_weights_file(tmp_path):
    fe = FeatureExtractor("resnet18", [2, 3, 4])
    x = torch.randn(1, 3, 64, 64)
    fe.eval()
    feats = fe(x)
    assert [f.shape[1] for f in feats] == [128, 256, 512] == fe.channels
    assert [f.shape[-1] for f in feats] == [8, 4, 2]
    # a local weights file of the full timm model is loaded (classifier filtered)
    torch.manual_seed(1)
    src = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    fe2 = FeatureExtractor("resnet18", [4], weights=path).eval()
    with torch.no_grad():
        ref = src.forward_features(x)
        torch.testing.assert_close(fe2(x)[0], ref)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        FeatureExtractor("resnet18", [4], weights=tmp_path / "missing.pth")


def test_feature_extractor_by_name_on_module():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
    )
    fe = FeatureExtractor(net, ["1", "3"])
    x = torch.randn(2, 3, 32, 32)
    a, b = fe(x)
    torch.testing.assert_close(a, net[1](net[0](x)))
    torch.testing.assert_close(b, net(x))
    assert fe.channels == [8, 16]
    with pytest.raises(TypeError):
        FeatureExtractor(net, [1])


def test_feature_expander_ssd_layers():
    fx = FeatureExpander(
        "resnet18", [3, 4], num_filters=[256, 128], reduce_ratio=0.5, min_depth=64, global_pool=True
    ).eval()
    feats = fx(torch.randn(1, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (256, 8, 8),
        (512, 4, 4),
        (256, 2, 2),
        (128, 1, 1),
        (128, 1, 1),
    ]
    stage0 = fx.extras[0]
    kinds = [type(m).__name__ for m in stage0]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    assert stage0[0].out_channels == 128 and stage0[0].bias is None  # max(64, 256 * 0.5)
    assert stage0[3].stride == (2, 2) and stage0[3].kernel_size == (3, 3)
    assert fx.extras[1][0].out_channels == 64  # max(min_depth, 128 * 0.5)
    plain = FeatureExpander("resnet18", [4], [32], use_1x1_transition=False, use_bn=False)
    assert [type(m).__name__ for m in plain.extras[0]] == ["Conv2d", "ReLU"]
    assert plain.extras[0][0].bias is not None


def test_feature_extractor_timm_module_by_index_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = timm.create_model("resnet18", pretrained=False)
    fe = FeatureExtractor(model, (3, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c3, c4 = fe(x)
        torch.testing.assert_close(c4, model.eval().forward_features(x))
    assert c3.shape[1] == 256 and fe.channels == [256, 512]
    # a .safetensors state_dict loads into a module network
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(3)
    other = timm.create_model("resnet18", pretrained=False)
    fe2 = FeatureExtractor(other, ["layer4"], weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(fe2(x)[0], c4)
