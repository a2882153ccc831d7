"""Loading reference-format detector checkpoints and ImageNet backbone files."""

from __future__ import annotations

import pytest
import torch

from src.models.retinaface import RetinaFace, load_reference_weights
from src.models.retinaface.backbones import MobileNetV1Body, load_backbone_weights
from tests.retinaface_model.helpers import bgr_images, randomize_


def _shift_(model):
    """Cheaply change every floating-point tensor of ``model`` in place."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.5)


def _save_like_reference(model, path, wrap=False):
    """DataParallel-style checkpoint: every key prefixed with ``module.``."""
    sd = {"module." + k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 250} if wrap else sd, path)
    return sd


@pytest.mark.parametrize("wrap", [False, True])
def test_mnet_reference_checkpoint_loads_strict_and_reproduces_outputs(tmp_path, wrap):
    src = randomize_(RetinaFace("mobilenet0.25"), seed=10).eval()
    path = tmp_path / "mobilenet0.25_Final.pth"
    saved = _save_like_reference(src, path, wrap=wrap)
    assert all(k.startswith("module.") for k in saved) and len(saved) == 300
    dst = randomize_(RetinaFace("mobilenet0.25"), seed=11).eval()
    x = bgr_images(2, 56, 72, seed=1)
    with torch.no_grad():
        before = dst(x)
        assert load_reference_weights(dst, path) is dst
        after, want = dst(x), src(x)
    assert not torch.allclose(before[1], want[1])
    for a, b in zip(after, want):
        assert torch.equal(a, b)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, saved["module." + k]), k


def test_weights_argument_and_unprefixed_file(tmp_path):
    src = randomize_(RetinaFace("mobilenet0.25"), seed=12).eval()
    path = tmp_path / "plain.pth"
    torch.save(src.state_dict(), path)
    dst = RetinaFace("mobilenet0.25", weights=path).eval()
    x = bgr_images(1, 33, 47, seed=2)
    with torch.no_grad():
        for a, b in zip(dst(x), src(x)):
            assert torch.equal(a, b)


def test_r50_reference_checkpoint_round_trip(tmp_path, r50):
    path = tmp_path / "Resnet50_Final.pth"
    saved = _save_like_reference(r50, path)
    x = bgr_images(1, 64, 64, seed=3)
    with torch.no_grad():
        want = r50(x)
        _shift_(r50)  # scramble the shared model, then restore it from the file
        assert not torch.allclose(r50(x)[0], want[0])
        assert load_reference_weights(r50, path) is r50
        got = r50(x)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for k, v in r50.state_dict().items():
        assert torch.equal(v, saved["module." + k]), k


def test_missing_file_is_one_clear_line(tmp_path):
    path = tmp_path / "nope" / "mobilenet0.25_Final.pth"
    with pytest.raises(FileNotFoundError) as e:
        load_reference_weights(RetinaFace("mobilenet0.25"), path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg


def test_wrong_backbone_names_file_and_diff(tmp_path):
    path = tmp_path / "mobilenet0.25_Final.pth"
    _save_like_reference(RetinaFace("mobilenet0.25"), path)
    with pytest.raises(ValueError) as e:
        load_reference_weights(RetinaFace("resnet50"), path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 1000
    assert str(path) in msg
    # the necks and heads share names; the bodies do not (318 R50 keys vs 162 mnet keys)
    assert "318 missing keys" in msg and "162 unexpected keys" in msg
    assert "looks like a mobilenet0.25 model" in msg


def test_shape_mismatch_and_partial_keys_are_reported(tmp_path):
    sd = RetinaFace("mobilenet0.25").state_dict()
    sd["ClassHead.0.conv1x1.weight"] = torch.zeros(6, 64, 1, 1)
    del sd["LandmarkHead.2.conv1x1.bias"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    model = RetinaFace("mobilenet0.25")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_reference_weights(model, path)
    msg = str(e.value)
    assert "1 missing keys (LandmarkHead.2.conv1x1.bias)" in msg
    assert "1 unexpected keys (extra.weight)" in msg
    assert "ClassHead.0.conv1x1.weight file (6, 64, 1, 1) vs model (4, 64, 1, 1)" in msg
    # nothing was half-loaded
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="cannot read RetinaFace weights from .*junk.pth"):
        load_reference_weights(RetinaFace("mobilenet0.25"), path)
    path2 = tmp_path / "list.pth"
    torch.save([1, 2, 3], path2)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_reference_weights(RetinaFace("mobilenet0.25"), path2)


def test_mnet_imagenet_pretrain_tar_like_reference(tmp_path):
    """The reference's mobilenetV1X0.25_pretrain.tar: {'state_dict': {'module.stage1...',
    ..., 'module.fc.weight', 'module.fc.bias'}, ...}; the classifier is not used."""
    body = randomize_(MobileNetV1Body(), seed=20)
    sd = {"module." + k: v.clone() for k, v in body.state_dict().items()}
    sd["module.fc.weight"] = torch.randn(1000, 256)
    sd["module.fc.bias"] = torch.randn(1000)
    path = tmp_path / "mobilenetV1X0.25_pretrain.tar"
    torch.save({"epoch": 300, "arch": "mobilenet_0.25", "best_prec1": 60.5, "state_dict": sd}, path)
    model = RetinaFace("mobilenet0.25", pretrained=path)
    for k, v in body.state_dict().items():
        assert torch.equal(model.body.state_dict()[k], v), k
    # the rest of the detector is untouched by the backbone file
    assert len(model.state_dict()) == 300


def test_r50_local_imagenet_state_dict(tmp_path, r50):
    """A torchvision / timm resnet50 ImageNet state dict (with its fc) loads into the body."""
    sd = {k: v.clone() for k, v in r50.body.state_dict().items()}
    sd["fc.weight"] = torch.zeros(1000, 2048)
    sd["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(sd, path)
    _shift_(r50.body)
    assert not torch.equal(r50.body.conv1.weight, sd["conv1.weight"])
    load_backbone_weights(r50.body, path)  # restores the shared model
    for k, v in r50.body.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_missing_pretrained_backbone_file_message(tmp_path, monkeypatch):
    path = tmp_path / "mobilenetV1X0.25_pretrain.tar"
    with pytest.raises(FileNotFoundError, match="backbone ImageNet weights file not found"):
        RetinaFace("mobilenet0.25", pretrained=path)
    monkeypatch.chdir(tmp_path)  # pretrained=True looks for the reference's default location
    with pytest.raises(FileNotFoundError, match="weights/mobilenetV1X0.25_pretrain.tar") as e:
        RetinaFace("mobilenet0.25", pretrained=True)
    assert "pass pretrained=<path" in str(e.value) and "\n" not in str(e.value)
