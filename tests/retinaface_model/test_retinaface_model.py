"""RetinaFace structure: parameter counts, reference key names, activations, output layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from src.models.retinaface import (
    RetinaFace,
    count_parameters,
    feature_map_sizes,
    num_priors,
    prior_boxes,
)
from src.models.retinaface.layers import BboxHead
from tests.retinaface_model.helpers import bgr_images, randomize_

# Key name -> shape, written from reading biubug6/Pytorch_Retinaface (models/net.py,
# models/retinaface.py, data/config.py: in_channel 32 / out_channel 64 for mnet,
# in_channel 256 / out_channel 256 for R50, two anchors per cell).
GOLDEN_MNET = {
    "body.stage1.0.0.weight": (8, 3, 3, 3),
    "body.stage1.0.1.running_mean": (8,),
    "body.stage1.1.0.weight": (8, 1, 3, 3),
    "body.stage1.1.1.weight": (8,),
    "body.stage1.1.3.weight": (16, 8, 1, 1),
    "body.stage1.1.4.running_var": (16,),
    "body.stage1.5.3.weight": (64, 64, 1, 1),
    "body.stage2.0.0.weight": (64, 1, 3, 3),
    "body.stage2.5.4.bias": (128,),
    "body.stage3.0.3.weight": (256, 128, 1, 1),
    "body.stage3.1.4.num_batches_tracked": (),
    "fpn.output1.0.weight": (64, 64, 1, 1),
    "fpn.output2.0.weight": (64, 128, 1, 1),
    "fpn.output3.0.weight": (64, 256, 1, 1),
    "fpn.merge1.0.weight": (64, 64, 3, 3),
    "fpn.merge2.1.bias": (64,),
    "ssh1.conv3X3.0.weight": (32, 64, 3, 3),
    "ssh1.conv5X5_1.0.weight": (16, 64, 3, 3),
    "ssh2.conv5X5_2.1.running_mean": (16,),
    "ssh2.conv7X7_2.0.weight": (16, 16, 3, 3),
    "ssh3.conv7x7_3.1.bias": (16,),
    "ClassHead.0.conv1x1.weight": (4, 64, 1, 1),
    "ClassHead.2.conv1x1.bias": (4,),
    "BboxHead.1.conv1x1.weight": (8, 64, 1, 1),
    "LandmarkHead.2.conv1x1.weight": (20, 64, 1, 1),
    "LandmarkHead.0.conv1x1.bias": (20,),
}
GOLDEN_R50 = {
    "body.conv1.weight": (64, 3, 7, 7),
    "body.bn1.running_var": (64,),
    "body.layer1.0.conv1.weight": (64, 64, 1, 1),
    "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "body.layer1.0.downsample.1.weight": (256,),
    "body.layer2.0.conv2.weight": (128, 128, 3, 3),
    "body.layer3.5.conv3.weight": (1024, 256, 1, 1),
    "body.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "body.layer4.2.bn3.num_batches_tracked": (),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "fpn.output2.0.weight": (256, 1024, 1, 1),
    "fpn.output3.0.weight": (256, 2048, 1, 1),
    "fpn.merge1.0.weight": (256, 256, 3, 3),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
    "ssh2.conv5X5_1.0.weight": (64, 256, 3, 3),
    "ssh3.conv7x7_3.0.weight": (64, 64, 3, 3),
    "ClassHead.1.conv1x1.weight": (4, 256, 1, 1),
    "BboxHead.0.conv1x1.bias": (8,),
    "LandmarkHead.2.conv1x1.weight": (20, 256, 1, 1),
}
# Key counts: mnet body 6 + 5*12 + 6*12 + 2*12 = 162; FPN 5*6 = 30; SSH 3*5*6 = 90;
# heads 9*2 = 18 -> 300. R50 body (torchvision names, no fc): 6 + 16 blocks * 18 + 4
# downsamples * 6 = 318 -> 318 + 30 + 90 + 18 = 456.
EXPECTED = {
    "mobilenet0.25": (426_608, 300, GOLDEN_MNET),
    "resnet50": (27_293_600, 456, GOLDEN_R50),
}


def _model(request, name):
    return request.getfixturevalue("mnet" if name == "mobilenet0.25" else "r50")


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_parameter_count_and_reference_key_names(request, backbone):
    n_params, n_keys, golden = EXPECTED[backbone]
    model = _model(request, backbone)
    sd = model.state_dict()
    assert count_parameters(model) == n_params
    assert len(sd) == n_keys
    for key, shape in golden.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(("body.fc", "body.avg", "body.global_pool")) for k in sd)


def test_activation_slopes_follow_reference_rule(mnet, r50):
    def slopes(module):
        return {
            m.negative_slope if isinstance(m, nn.LeakyReLU) else 0.0
            for m in module.modules()
            if isinstance(m, (nn.LeakyReLU, nn.ReLU))
        }

    # MobileNet: backbone always 0.1; neck width 64 <= 64 -> FPN / SSH 0.1 as well.
    assert slopes(mnet.body) == {0.1}
    assert slopes(mnet.fpn) == {0.1}
    assert slopes(mnet.ssh1) == {0.1}
    assert mnet.fpn.output1[2].negative_slope == 0.1
    assert mnet.ssh2.conv7X7_2[2].negative_slope == 0.1
    # ResNet-50: neck width 256 -> plain ReLU everywhere.
    assert slopes(r50.fpn) == {0.0}
    assert slopes(r50.ssh3) == {0.0}
    # SSH branches ending the module have no activation before the concat (ReLU after it).
    assert len(mnet.ssh1.conv3X3) == 2 and len(mnet.ssh1.conv7x7_3) == 2
    x = torch.randn(1, 64, 5, 5)
    assert mnet.ssh1(x).min() >= 0


@pytest.mark.parametrize(
    "backbone,hw",
    [
        ("mobilenet0.25", (64, 64)),
        ("mobilenet0.25", (37, 53)),
        ("mobilenet0.25", (100, 61)),
        ("resnet50", (64, 64)),
        ("resnet50", (45, 61)),
    ],
)
def test_output_shapes_and_feature_maps_any_size(request, backbone, hw):
    model = _model(request, backbone)
    shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape[-2:])))
        for m in (model.ssh1, model.ssh2, model.ssh3)
    ]
    try:
        with torch.no_grad():
            loc, conf, landm = model(bgr_images(2, *hw))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == feature_map_sizes(hw)
    p = num_priors(hw)
    assert loc.shape == (2, p, 4) and conf.shape == (2, p, 2) and landm.shape == (2, p, 10)
    assert model.priors(hw).shape == (p, 4)
    assert torch.isfinite(loc).all() and torch.isfinite(conf).all() and torch.isfinite(landm).all()


@pytest.mark.parametrize("train", [False, True])
def test_conf_is_raw_head_logits_in_train_and_eval(train):
    model = randomize_(RetinaFace("mobilenet0.25"), seed=6).train(train)
    seen = []
    hooks = [h.register_forward_hook(lambda _m, _i, o: seen.append(o)) for h in model.ClassHead]
    with torch.no_grad():
        conf = model(bgr_images(2, 48, 64, seed=3))[1]
    for h in hooks:
        h.remove()
    assert torch.equal(conf, torch.cat(seen, dim=1))  # no softmax applied
    assert not torch.allclose(conf.sum(-1), torch.ones(()), atol=1e-2)


def test_batch_items_are_independent_in_eval(mnet):
    x = bgr_images(3, 40, 72, seed=4)
    with torch.no_grad():
        full = mnet(x)
        single = mnet(x[1:2])
    for a, b in zip(full, single):
        torch.testing.assert_close(a[1:2], b, rtol=1e-4, atol=1e-4)


def test_head_flattening_order_matches_priors():
    """Channel a*4+c of the 1x1 conv lands at prior (row, col, anchor a), coordinate c."""
    h, w, step = 40, 72, 8
    fh, fw = feature_map_sizes((h, w))[0]
    head = BboxHead(in_channels=2, num_anchors=2)
    with torch.no_grad():
        head.conv1x1.weight.zero_()
        head.conv1x1.bias.zero_()
        for a in range(2):
            head.conv1x1.weight[a * 4 + 0, 1] = 1.0  # column index -> cx slot
            head.conv1x1.weight[a * 4 + 1, 0] = 1.0  # row index -> cy slot
            head.conv1x1.bias[a * 4 + 2] = float(a)  # anchor index -> w slot
    rows = torch.arange(fh, dtype=torch.float32).view(fh, 1).expand(fh, fw)
    cols = torch.arange(fw, dtype=torch.float32).view(1, fw).expand(fh, fw)
    out = head(torch.stack([rows, cols])[None])[0]  # (fh*fw*2, 4)
    pri = prior_boxes((h, w))[: fh * fw * 2]
    torch.testing.assert_close(out[:, 0], pri[:, 0] * w / step - 0.5)
    torch.testing.assert_close(out[:, 1], pri[:, 1] * h / step - 0.5)
    sizes = torch.tensor([16.0, 32.0])
    torch.testing.assert_close(sizes[out[:, 2].long()], pri[:, 2] * w)


def test_levels_are_concatenated_in_prior_order():
    hw = (40, 72)
    counts = [fh * fw * 2 for fh, fw in feature_map_sizes(hw)]
    model = randomize_(RetinaFace("mobilenet0.25"), seed=5).eval()
    with torch.no_grad():
        for k, head in enumerate(model.BboxHead):
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.fill_(float(k))
        loc = model(bgr_images(1, *hw))[0][0]
    expected = torch.cat([torch.full((n, 4), float(k)) for k, n in enumerate(counts)])
    assert torch.equal(loc, expected)


def test_unknown_backbone_and_bad_min_sizes():
    with pytest.raises(ValueError, match="unknown RetinaFace backbone 'vgg'"):
        RetinaFace("vgg")
    with pytest.raises(ValueError, match="min_sizes"):
        RetinaFace(min_sizes=[[16], [64, 128], [256, 512]])


def test_three_anchors_per_cell_option():
    model = RetinaFace(min_sizes=[[8, 16, 32], [64, 96, 128], [256, 384, 512]]).eval()
    with torch.no_grad():
        loc, conf, landm = model(bgr_images(1, 32, 48))
    p = num_priors((32, 48), model.min_sizes)
    assert p == model.priors((32, 48)).shape[0] == loc.shape[1] == conf.shape[1]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(h=st.integers(1, 90), w=st.integers(1, 90))
def test_mnet_prior_count_for_random_sizes(mnet, h, w):
    with torch.no_grad():
        loc, conf, landm = mnet(bgr_images(1, h, w))
    assert loc.shape[1] == conf.shape[1] == landm.shape[1] == prior_boxes((h, w)).shape[0]


def test_r50_body_equals_torchvision_resnet50_layers_2_to_4(r50):
    """The reference's body is torchvision's resnet50 cut by IntermediateLayerGetter; the timm
    body with the same state dict must compute the same features."""
    from torchvision.models import resnet50
    from torchvision.models._utils import IntermediateLayerGetter

    tv = resnet50(weights=None)
    missing, unexpected = tv.load_state_dict(r50.body.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    getter = IntermediateLayerGetter(tv, {"layer2": 1, "layer3": 2, "layer4": 3}).eval()
    x = bgr_images(1, 45, 61, seed=7)
    with torch.no_grad():
        want = list(getter(x).values())
        got = r50.body(x)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_ssh_equals_reference_concat_then_relu_with_dense_branch_gradients(memory_format):
    """Our SSH applies the ReLU per branch before the concat: the same values, bit for bit, and
    gradients as the reference's ReLU over the concat (tests/retinaface/reference.py), but
    each branch's last batch norm receives a dense gradient instead of a channel slice of the
    concat's (the strided one costs that backward several times over on a CPU)."""
    from src.models.retinaface.layers import SSH
    from tests.retinaface.reference import reference_ssh_forward

    torch.manual_seed(0)
    ssh = SSH(16, 32).double().to(memory_format=memory_format).train()
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64).contiguous(memory_format=memory_format)
    grad = torch.randn(2, 32, 9, 11, dtype=torch.float64)
    results = []
    for forward in (ssh.forward, lambda t: reference_ssh_forward(ssh, t)):
        ssh.zero_grad()
        inp = x.clone().requires_grad_()
        seen = []

        def watch(module, inputs, output, seen=seen):  # what its batch-norm backward receives
            output.grad_fn.register_prehook(lambda g: seen.append(g[0]))

        branches = (ssh.conv3X3, ssh.conv5X5_2, ssh.conv7x7_3)
        hooks = [branch[-1].register_forward_hook(watch) for branch in branches]
        out = forward(inp)
        out.backward(grad)
        for h in hooks:
            h.remove()
        grads = [p.grad.clone() for p in ssh.parameters()]
        results.append((out.detach(), inp.grad, grads, seen))
    (out, dx, dw, ours), (ref_out, ref_dx, ref_dw, theirs) = results
    assert torch.equal(out, ref_out)
    # gradients to rounding: batch norm's backward sums a dense and a strided input in
    # different orders (measured: 2e-15 on the input, 6e-14 on the weights)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-12, atol=1e-12)
    for a, b in zip(dw, ref_dw):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert len(ours) == len(theirs) == 3
    assert all(g.is_contiguous(memory_format=memory_format) for g in ours)
    assert not any(g.is_contiguous(memory_format=memory_format) for g in theirs[1:])
