"""GAN networks: parameter counts against closed forms, reference state-dict layouts (a port of
the reference's layer lists loads strictly and computes the same), initialisation, the size
check, the multi-scale discriminator, the image pool rule, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.models.gan import (
    GeneratorSizeError,
    ImagePool,
    MultiscaleDiscriminator,
    build_discriminator,
    build_generator,
    check_input_size,
    count_parameters,
    export_generator_onnx,
)
from src.models.gan.discriminators import PixelDiscriminator
from src.utils.errors import UserError
from tests.gan import reference as ref


# ---- parameter counts ---------------------------------------------------------------------------
def test_reference_headline_counts():
    # pix2pix prints "[Network G] 54.414 M" / "[Network D] 2.769 M"; CycleGAN "11.378 M" /
    # "2.765 M". Exact values from the closed forms (a PatchGAN with conv biases next to its
    # BatchNorms would be 2,769,601 and a U-Net with a norm in its innermost down path
    # 54,414,979: the reference has neither).
    assert ref.unet_count(3, 3, 8, 64, "batch") == 54_413_955
    assert ref.patchgan_count(6, 64, 3, "batch") == 2_768_705
    assert ref.resnet_count(3, 3, 64, 9, "instance") == 11_378_179
    assert ref.patchgan_count(3, 64, 3, "instance") == 2_764_737
    assert count_parameters(build_generator("unet_256", 3, 3, 64, "batch")) == 54_413_955
    assert count_parameters(build_discriminator("basic", 6, 64, norm="batch")) == 2_768_705
    assert count_parameters(build_generator("resnet_9blocks", ngf=64, norm="instance")) == (
        11_378_179
    )


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("name,downs", [("unet_128", 7), ("unet_256", 8), ("unet_32", 5)])
def test_unet_counts(name, downs, norm):
    net = build_generator(name, input_nc=1, output_nc=3, ngf=8, norm=norm)
    assert count_parameters(net) == ref.unet_count(1, 3, downs, 8, norm)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("blocks", [6, 9])
def test_resnet_counts(blocks, norm):
    net = build_generator(f"resnet_{blocks}blocks", ngf=8, norm=norm)
    assert count_parameters(net) == ref.resnet_count(3, 3, 8, blocks, norm)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("n_layers", [1, 3, 5])
def test_patchgan_pixel_and_multiscale_counts(n_layers, norm):
    d = build_discriminator("n_layers", 6, ndf=8, n_layers=n_layers, norm=norm)
    assert count_parameters(d) == ref.patchgan_count(6, 8, n_layers, norm)
    b = norm == "instance"
    pixel = ref.conv(6, 8, 1, True) + ref.conv(8, 16, 1, b) + ref.norm_params(norm, 16)
    pixel += ref.conv(16, 1, 1, b)
    assert count_parameters(build_discriminator("pixel", 6, ndf=8, norm=norm)) == pixel
    for features in (True, False):
        ms = build_discriminator("multiscale", 6, 8, n_layers, norm, 3, features)
        assert count_parameters(ms) == 3 * ref.hd_patchgan_count(6, 8, n_layers, norm)


# ---- reference layouts ----------------------------------------------------------------------
def _same_outputs(ours, theirs, x):
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_reference_layout_state_dicts_load_strictly(norm):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    unet = ref.RefUnet(3, 3, 6, 4, norm)
    assert list(build_generator("unet_64", ngf=4, norm=norm).state_dict()) == list(
        unet.state_dict()
    )
    assert "model.model.1.model.3.model.3.model.3.model.3.model.1.weight" in unet.state_dict()
    _same_outputs(build_generator("unet_64", ngf=4, norm=norm), unet, x)
    _same_outputs(
        build_generator("resnet_6blocks", ngf=4, norm=norm, dropout=False),
        ref.RefResnet(3, 3, 4, 6, norm),
        x,
    )
    d = ref.RefNLayer(6, 4, 3, norm)
    _same_outputs(build_discriminator("basic", 6, 4, norm=norm), d, torch.randn(2, 6, 64, 64))


def test_unet_dropout_sits_in_the_innermost_8ngf_blocks():
    net = build_generator("unet_256", ngf=4)
    names = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Dropout)]
    depth = [n.count("model.") for n in names]
    # three blocks with dropout: levels 4, 5, 6 of 8 (1 = the outermost; the innermost has none)
    assert len(names) == 3 and sorted(depth) == [6, 7, 8]
    assert all(m.p == 0.5 for m in net.modules() if isinstance(m, torch.nn.Dropout))
    assert not [
        m
        for m in build_generator("unet_256", dropout=False, ngf=4).modules()
        if isinstance(m, torch.nn.Dropout)
    ]
    assert isinstance(list(net.modules())[-1], torch.nn.Module)
    assert isinstance(net.model.model[-1], torch.nn.Tanh)


def test_init_normal_002_and_bn_weights_around_one():
    torch.manual_seed(0)
    net = build_generator("unet_256", ngf=16)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    w = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 1e-3
    assert all(m.bias is None or not m.bias.any() for m in convs)
    bn = torch.cat(
        [m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    )
    assert abs(float(bn.mean()) - 1) < 5e-3 and abs(float(bn.std()) - 0.02) < 5e-3
    inst = [
        m
        for m in build_generator("resnet_6blocks", ngf=4, norm="instance").modules()
        if isinstance(m, torch.nn.InstanceNorm2d)
    ]
    assert inst and all(not m.affine and not m.track_running_stats for m in inst)


# ---- sizes --------------------------------------------------------------------------------
def test_generators_keep_the_size_they_can_take():
    x = torch.randn(1, 3, 96, 64)
    assert build_generator("unet_32", ngf=4)(x).shape == x.shape
    assert build_generator("resnet_6blocks", ngf=4)(torch.randn(1, 3, 36, 44)).shape == (
        1,
        3,
        36,
        44,
    )
    out = build_generator("unet_32", ngf=4)(x)
    assert float(out.abs().max()) <= 1.0


def test_size_check_is_one_line_naming_size_generator_and_sizes_that_work():
    with pytest.raises(GeneratorSizeError) as e:
        check_input_size(build_generator("unet_256", ngf=4), 128, 128, " (dataset.image_size=128)")
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, UserError)
    assert "unet_256" in msg and "128x128" in msg and "multiples of 256" in msg
    assert "dataset.image_size=128" in msg and "unet_128" in msg
    with pytest.raises(
        GeneratorSizeError,
        match=r"resnet_9blocks cannot take 90x90 .*multiples of 4 \(e.g. 88, 92, 96\)",
    ):
        check_input_size(build_generator("resnet_9blocks", ngf=4), 90)
    check_input_size(build_generator("unet_256", ngf=4), 512, 256)  # fine: no error
    with pytest.raises(UserError, match="generator 'unet' is unknown"):
        build_generator("unet")


# ---- multi-scale discriminator --------------------------------------------------------------
def test_multiscale_features_finest_first_with_the_reference_keys():
    torch.manual_seed(0)
    d = MultiscaleDiscriminator(6, ndf=4, n_layers=3, norm="instance", num_d=2)
    keys = d.state_dict().keys()
    assert "scale0_layer0.0.weight" in keys and "scale1_layer4.0.weight" in keys
    out = d(torch.randn(1, 6, 64, 64))
    assert len(out) == 2 and all(len(s) == 5 for s in out)
    # padding 2: 64 -> 33 -> 17 -> 9 -> 10 -> 11 on the finest scale, which scale1 sees
    assert [t.shape[-1] for t in out[0]] == [33, 17, 9, 10, 11]
    pooled = torch.nn.functional.avg_pool2d(
        torch.randn(1, 6, 64, 64), 3, 2, 1, count_include_pad=False
    )
    assert [t.shape[-1] for t in out[1]] == [17, 9, 5, 6, 7] and pooled.shape[-1] == 32
    x = torch.randn(1, 6, 32, 32)
    h = x
    for j in range(5):
        h = getattr(d, f"scale1_layer{j}")(h)
    torch.testing.assert_close(d(x)[0][-1], h)
    flat = MultiscaleDiscriminator(6, 4, 3, "instance", 2, intermediate_features=False)
    assert "layer1.0.weight" in flat.state_dict() and all(len(s) == 1 for s in flat(x))
    assert isinstance(PixelDiscriminator(6, 4)(x), torch.Tensor)


# ---- image pool ---------------------------------------------------------------------------
def _plain_pool(batches, size, seed):
    """The reference's rule, as a list, with the same draws from torch's RNG."""
    torch.manual_seed(seed)
    stored, outputs = [], []
    for batch in batches:
        out = []
        for image in batch:
            if len(stored) < size:
                stored.append(image.clone())
                out.append(image.clone())
            elif torch.rand(()).item() > 0.5:
                k = torch.randint(0, size, ()).item()
                out.append(stored[k].clone())
                stored[k] = image.clone()
            else:
                out.append(image.clone())
        outputs.append(torch.stack(out))
    return outputs


def test_image_pool_follows_the_reference_rule_and_resumes_exactly():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(12)]
    want = _plain_pool(batches, size=5, seed=7)
    torch.manual_seed(7)
    pool = ImagePool(5)
    got = [pool(b) for b in batches[:6]]
    # resume: a fresh pool loads the state dict strictly; the RNG state goes with it
    state, rng = pool.state_dict(), torch.get_rng_state()
    fresh = ImagePool(5)
    fresh.load_state_dict(state, strict=True)
    torch.set_rng_state(rng)
    got += [fresh(b) for b in batches[6:]]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(fresh.count) == 5
    # some outputs came from the history (not the batch itself)
    assert any(not torch.equal(a, b) for a, b in zip(got[2:], batches[2:]))
    zero = ImagePool(0)
    assert zero(batches[0]) is batches[0]


# ---- ONNX export ----------------------------------------------------------------------------
def test_generator_onnx_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = build_generator("unet_32", ngf=4).eval()
    path = export_generator_onnx(net, tmp_path / "g.onnx", sample_size=(32, 32))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 96)).astype(np.float32)
    (got,) = session.run(None, {"images": x})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
