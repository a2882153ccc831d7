"""CenterNet network: the pool modules against an independent float64 port of the reference's
``pool`` / ``pool_cross`` fed a state dict written in the reference's layout (loaded strictly),
the ONNX scan, the tie rule, full-depth backbone taps, heads and shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.models.centernet import CenterNet
from src.models.centernet.layers import CascadeCornerPool, CenterPool, scan_max
from src.ops import corner_pool

DIM, MID = 6, 4


def _conv_bn(prefix: str, cin: int, cout: int, k: int, g: torch.Generator) -> dict:
    """A reference ``convolution`` (conv without bias + BN) in its state-dict layout."""
    return {
        f"{prefix}.conv.weight": torch.randn(cout, cin, k, k, generator=g, dtype=torch.float64),
        **_bn(f"{prefix}.bn", cout, g),
    }


def _bn(prefix: str, c: int, g: torch.Generator) -> dict:
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=g, dtype=torch.float64),
        f"{prefix}.bias": 0.1 * torch.randn(c, generator=g, dtype=torch.float64),
        f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=g, dtype=torch.float64),
        f"{prefix}.running_var": 1 + torch.rand(c, generator=g, dtype=torch.float64),
        f"{prefix}.num_batches_tracked": torch.tensor(3),
    }


def reference_state(cascade: bool, seed: int = 0) -> dict:
    """The reference's ``pool(dim, ...)`` / ``pool_cross`` names, written from its source."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    sd |= _conv_bn("p1_conv1", DIM, MID, 3, g)
    sd |= _conv_bn("p2_conv1", DIM, MID, 3, g)
    sd["p_conv1.weight"] = torch.randn(DIM, MID, 3, 3, generator=g, dtype=torch.float64)
    sd |= _bn("p_bn1", DIM, g)
    sd["conv1.weight"] = torch.randn(DIM, DIM, 1, 1, generator=g, dtype=torch.float64)
    sd |= _bn("bn1", DIM, g)
    sd |= _conv_bn("conv2", DIM, DIM, 3, g)
    if cascade:
        sd |= _conv_bn("look_conv1", DIM, MID, 3, g)
        sd |= _conv_bn("look_conv2", DIM, MID, 3, g)
        sd["P1_look_conv.weight"] = torch.randn(MID, MID, 3, 3, generator=g, dtype=torch.float64)
        sd["P2_look_conv.weight"] = torch.randn(MID, MID, 3, 3, generator=g, dtype=torch.float64)
    return sd


# ---- an independent port (eval-mode BN, torch.cummax directional maxima) -------------------
def _dir_max(x, d):
    if d == "top":
        return x.flip(2).cummax(2).values.flip(2)
    if d == "bottom":
        return x.cummax(2).values
    if d == "left":
        return x.flip(3).cummax(3).values.flip(3)
    return x.cummax(3).values


def _bn_f(x, sd, p):
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        False,
        0.0,
        1e-5,
    )


def _cbr(x, sd, p):
    w = sd[f"{p}.conv.weight"]
    return torch.relu(_bn_f(F.conv2d(x, w, padding=w.shape[-1] // 2), sd, f"{p}.bn"))


def port_pool(x, sd, pool1, pool2):
    look1 = _dir_max(_cbr(x, sd, "look_conv1"), pool2)
    a = _dir_max(
        F.conv2d(_cbr(x, sd, "p1_conv1") + look1, sd["P1_look_conv.weight"], padding=1), pool1
    )
    look2 = _dir_max(_cbr(x, sd, "look_conv2"), pool1)
    b = _dir_max(
        F.conv2d(_cbr(x, sd, "p2_conv1") + look2, sd["P2_look_conv.weight"], padding=1), pool2
    )
    return _tail(x, sd, a + b)


def port_pool_cross(x, sd):
    a = _dir_max(_dir_max(_cbr(x, sd, "p1_conv1"), "top"), "bottom")
    b = _dir_max(_dir_max(_cbr(x, sd, "p2_conv1"), "left"), "right")
    return _tail(x, sd, a + b)


def _tail(x, sd, pooled):
    p = _bn_f(F.conv2d(pooled, sd["p_conv1.weight"], padding=1), sd, "p_bn1")
    return _cbr(torch.relu(p + _bn_f(F.conv2d(x, sd["conv1.weight"]), sd, "bn1")), sd, "conv2")


@pytest.mark.parametrize("corner,dirs", [("tl", ("top", "left")), ("br", ("bottom", "right"))])
def test_cascade_corner_pool_equals_reference_port(corner, dirs):
    sd = reference_state(True)
    m = CascadeCornerPool(DIM, corner, MID).double().eval()
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, DIM, 9, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(m(x), port_pool(x, sd, *dirs), rtol=1e-12, atol=1e-12)


def test_center_pool_equals_reference_port():
    sd = reference_state(False)
    m = CenterPool(DIM, MID).double().eval()
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, DIM, 8, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(m(x), port_pool_cross(x, sd), rtol=1e-12, atol=1e-12)
    # center pooling = column max + row max of its two branches
    y = _cbr(x, sd, "p1_conv1")
    torch.testing.assert_close(
        _dir_max(_dir_max(y, "top"), "bottom"), y.amax(2, keepdim=True).expand_as(y)
    )


@pytest.mark.parametrize("direction", ["top", "bottom", "left", "right"])
def test_onnx_scan_equals_corner_pool(direction):
    x = torch.randn(2, 3, 13, 6, dtype=torch.float64).round()  # many ties
    assert torch.equal(scan_max(x, direction), corner_pool(x, direction))


def test_tie_rule_moves_gradient_not_values():
    """Tied maxima (ReLU zeros): "first" and "nearest" give the same module output, and
    gradients that differ only in where a tied maximum's gradient lands (same total)."""
    torch.manual_seed(0)
    outs, grads = [], []
    for tie in ("first", "nearest"):
        torch.manual_seed(0)
        m = CascadeCornerPool(DIM, "tl", MID, tie=tie).double().eval()
        x = torch.relu(torch.randn(1, DIM, 7, 7, dtype=torch.float64)).requires_grad_()
        y = corner_pool(x, "top", tie=tie)
        (g,) = torch.autograd.grad(y.sum(), x)
        outs.append((m(x.detach()), y.detach()))
        grads.append(g)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(grads[0], grads[1])
    torch.testing.assert_close(grads[0].sum(), grads[1].sum())


def test_ghostnet_full_depth_taps_and_heads():
    m = CenterNet(3, "ghostnet_050", cnv_dim=16, head_dim=16, pool_dim=8, neck_dim=16)
    assert m.backbone.taps == [2, 4, 6, 9]  # the last block of each stride level
    x = torch.zeros(1, 3, 64, 64)
    out = m.eval()(x)
    assert len(out) == 1
    assert out[0]["tl_heat"].shape == (1, 3, 16, 16) and out[0]["tl_tag"].shape == (1, 1, 16, 16)
    assert out[0]["ct_regr"].shape == (1, 2, 16, 16)
    assert "ct_tag" not in out[0]
    for heats in (m.tl_heats, m.br_heats, m.ct_heats):
        assert torch.all(heats[0][1].bias == -2.19)
    names = set(m.state_dict())
    assert "tl_cnvs.0.P1_look_conv.weight" in names and "ct_cnvs.0.p1_conv1.bn.running_var" in names
    assert "tl_heats.0.0.conv.bias" in names and "tl_heats.0.1.bias" in names


def test_every_parameter_gets_a_gradient():
    m = CenterNet(2, "ghostnet_050", cnv_dim=8, head_dim=8, pool_dim=4, neck_dim=8)
    out = m(torch.randn(2, 3, 64, 64))
    sum(v.sum() for v in out[0].values()).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_hourglass_two_stacks():
    m = CenterNet(
        2,
        "hourglass104",
        cnv_dim=8,
        head_dim=8,
        pool_dim=4,
        hourglass=dict(n=2, dims=(8, 8, 12), modules=(1, 1, 1)),
    )
    out = m(torch.randn(2, 3, 64, 64))
    assert len(out) == 2 and out[1]["br_heat"].shape == (2, 2, 16, 16)
    assert "backbone.inters_.0.0.weight" in m.state_dict()


def test_onnx_export_equals_torch_decode(tmp_path):
    """The exported graph (network + decode, up to soft-NMS) run in onnxruntime gives the
    torch decode's boxes (in input pixels) and scores."""
    ort = pytest.importorskip("onnxruntime")
    from src.models.centernet.decode import DecodeConfig, decode
    from src.models.centernet.export import export_onnx

    torch.manual_seed(0)
    m = CenterNet(3, "ghostnet_050", cnv_dim=8, head_dim=8, pool_dim=4, neck_dim=8).eval()
    with torch.no_grad():  # spread the untrained maps so scores and tags are not near-tied
        for heads in (m.tl_heats, m.br_heats, m.ct_heats, m.tl_tags, m.br_tags):
            heads[0][1].weight.normal_(0, 1.0)
    cfg = DecodeConfig(top_k=10, num_dets=50, flip=False, ae_threshold=100.0)
    path = export_onnx(m, tmp_path / "c.onnx", (64, 64), cfg)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x.numpy()})))
    with torch.no_grad():
        d = decode(m(x)[-1], cfg)
    # rejected pairs all score -1 and come in any order (a tie): compare the kept ones
    np.testing.assert_allclose(got["scores"], d["scores"].numpy(), rtol=1e-4, atol=1e-5)
    kept = d["scores"].numpy() > -1
    assert kept.sum() >= 20
    np.testing.assert_allclose(got["boxes"][kept], d["boxes"].numpy()[kept] * 4, atol=1e-3)
    np.testing.assert_array_equal(got["classes"][kept], d["classes"].numpy()[kept])
    np.testing.assert_allclose(got["centers"], d["centers"].numpy() * 4, rtol=1e-4, atol=1e-3)
