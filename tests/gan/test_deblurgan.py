"""DeblurGAN v1 / v2: networks against independent ports of the references (KupynOrest/DeblurGAN
``networks.py``, VITA-Group/DeblurGANv2 ``losses.py``), second-order gradients of the critics,
the gradient penalties against independent formulations, the v2 normalisation quirk, the
GoPro reader and the synthetic blur writer, the SSIM of the GoPro protocol, the steps and the
schedules; through run.py: exact resume after SIGTERM with the critic counters, eval / predict /
export on the checkpoint; learning (slow)."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch import nn
from torch.utils.data import default_collate

from src.data.base import DataError
from src.data.gopro import build_gopro
from src.data.synthetic_blur import (
    blur_image,
    build_synthetic_gopro,
    linear_kernel,
    shaky_kernel,
)
from src.engine.checkpoint import load
from src.engine.optim import Optimization
from src.engine.schedulers import LinearDecayToMinLR
from src.engine.seed import sample_rng
from src.losses.deblurgan import DeblurAdversarial, DeblurGANLoss, DeblurGANv2Loss
from src.metrics.image_quality import ssim
from src.models.gan import count_parameters
from src.models.gan.deblurgan import build_deblurgan_generator, build_patch_critic
from src.models.gan.fpn import build_fpn_generator
from src.tasks.deblurgan import DeblurGANTask, DeblurGANv2Task
from tests.conftest import compose_config, run_cli


# ---- independent ports of the reference networks (KupynOrest/DeblurGAN models/networks.py) ---
def _ref_norm():
    return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True)


class RefResnetBlock(nn.Module):
    """``two_conv=True``: the 2018 release's block; False: the current code's expression
    ``A + B + [Dropout] if use_dropout else [] + C`` exactly as Python parses it."""

    def __init__(self, dim, norm, use_dropout, two_conv):
        super().__init__()

        def pad_conv():
            return [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=True)]

        if two_conv:
            blocks = pad_conv() + [norm(dim), nn.ReLU(True)]
            blocks += [nn.Dropout(0.5)] if use_dropout else []
            blocks += pad_conv() + [norm(dim)]
        else:
            blocks = (
                pad_conv() + [norm(dim), nn.ReLU(True)] + [nn.Dropout(0.5)]
                if use_dropout
                else [] + pad_conv() + [norm(dim)]
            )
        self.conv_block = nn.Sequential(*blocks)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnetGenerator(nn.Module):
    def __init__(self, ngf=64, n_blocks=9, use_dropout=True, two_conv=True):
        super().__init__()
        norm = _ref_norm()
        model = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, padding=0, bias=True), norm(ngf)]
        model += [nn.ReLU(True)]
        for i in range(2):
            m = 2**i
            model += [nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1, bias=True)]
            model += [norm(ngf * m * 2), nn.ReLU(True)]
        model += [RefResnetBlock(ngf * 4, norm, use_dropout, two_conv) for _ in range(n_blocks)]
        for i in range(2):
            m = 2 ** (2 - i)
            model += [
                nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1, bias=True),
                norm(ngf * m // 2),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return torch.clamp(x + self.model(x), min=-1, max=1)  # learn_residual


class RefNLayerDiscriminator(nn.Module):
    def __init__(self, input_nc=3, ndf=64, n_layers=3):
        super().__init__()
        norm, kw, padw = _ref_norm(), 4, int(np.ceil((4 - 1) / 2))
        seq = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            prev, nf_mult = nf_mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * prev, ndf * nf_mult, kw, stride=2, padding=padw, bias=True),
                norm(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, nf_mult = nf_mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * prev, ndf * nf_mult, kw, stride=1, padding=padw, bias=True),
            norm(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


def _load_port(ours: nn.Module, port: nn.Module) -> None:
    """The port's weights into ours: same keys and shapes but the port's running statistics of
    its ``InstanceNorm2d(track_running_stats=True)``, which ours does not keep."""
    state = {k: v for k, v in port.state_dict().items() if "running_" not in k}
    state = {k: v for k, v in state.items() if "num_batches_tracked" not in k}
    ours.load_state_dict(state, strict=True)


@pytest.mark.parametrize(
    "block, dropout, count",
    [
        ("two_conv", True, 11_378_179),
        ("reference_slip", True, 6_067_459),
        ("reference_slip", False, 6_067_459),
    ],  # fmt: skip
)
def test_generator_parameters_keys_and_outputs_equal_the_reference_port(block, dropout, count):
    ours = build_deblurgan_generator(block=block, dropout=dropout)
    port = RefResnetGenerator(use_dropout=dropout, two_conv=block == "two_conv")
    assert count_parameters(ours) == count_parameters(port) == count
    # 11.38 M = the 2018 release; the slip drops one 3x3 conv (256 x 256 x 9 + 256) per block
    assert count_parameters(build_deblurgan_generator()) - count == (
        0 if block == "two_conv" else 9 * (256 * 256 * 9 + 256)
    )
    # outputs on a small one, in float64, weights of the port loaded into ours
    torch.manual_seed(0)
    small = build_deblurgan_generator(ngf=4, n_blocks=2, block=block, dropout=dropout).double()
    port = RefResnetGenerator(4, 2, dropout, block == "two_conv").double()
    for p in port.parameters():
        nn.init.normal_(p, 0, 0.3)
    _load_port(small, port)
    x = torch.rand(2, 3, 20, 24, dtype=torch.float64) * 2 - 1
    small.eval(), port.train()  # the port's instance norms use batch statistics in train mode
    for m in port.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    got, want = small(x), port(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert got.abs().max() <= 1 and not torch.equal(got, x)  # the clamped global residual


@pytest.mark.parametrize("n_layers, ndf", [(3, 64), (5, 64), (5, 4)])
def test_patch_critic_equals_the_reference_port(n_layers, ndf):
    ours, port = build_patch_critic(3, ndf, n_layers), RefNLayerDiscriminator(3, ndf, n_layers)
    assert count_parameters(ours) == count_parameters(port)
    if ndf == 4:
        port = port.double()
        for p in port.parameters():
            nn.init.normal_(p, 0, 0.3)
        ours = ours.double()
        _load_port(ours, port)
        x = torch.rand(2, 3, 40, 40, dtype=torch.float64)
        torch.testing.assert_close(ours(x), port(x), rtol=0, atol=1e-12)
    assert count_parameters(build_patch_critic(3, 64, 3)) == 2_764_737


# ---- second-order gradients --------------------------------------------------------------------
@pytest.mark.parametrize("n_layers", [3, 5])
def test_the_critics_differentiate_twice_in_float64(n_layers):
    """What the penalty needs: second derivatives in the input and, mixed, in the parameters
    (checked on the first and last conv weights, with every layer in between)."""
    torch.manual_seed(0)
    critic = build_patch_critic(3, ndf=1, n_layers=n_layers).double()
    for p in critic.parameters():
        nn.init.normal_(p, 0, 0.5)
    named = dict(critic.named_parameters())
    first, last = "model.0.weight", f"model.{len(critic.model) - 1}.weight"
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    w0 = named[first].detach().clone().requires_grad_(True)
    w1 = named[last].detach().clone().requires_grad_(True)

    def score(x, w0, w1):
        return torch.func.functional_call(critic, {**named, first: w0, last: w1}, (x,)).sum()

    assert torch.autograd.gradgradcheck(score, (x, w0, w1), eps=1e-6, atol=1e-5)


# ---- gradient penalties against independent formulations -----------------------------------------
def _critic64(seed=0):
    torch.manual_seed(seed)
    critic = build_patch_critic(3, ndf=4, n_layers=3).double()
    for p in critic.parameters():
        nn.init.normal_(p, 0, 0.2)
    return critic


def _penalty_per_sample_loop(critic, real, fake, alpha):
    """Gulrajani et al.: each sample alone, the norm of its flattened input gradient."""
    gaps = []
    for i in range(len(real)):
        x = (alpha[i] * real[i : i + 1] + (1 - alpha[i]) * fake[i : i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        gaps.append((g.flatten().norm() - 1) ** 2)
    return 10 * torch.stack(gaps).mean()


def _penalty_deblurgan(critic, real, fake):
    """KupynOrest/DeblurGAN ``calc_gradient_penalty``, ported (CPU)."""
    alpha = torch.rand(1, 1, dtype=real.dtype).expand(real.size())  # (float64 here)
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(interpolates)
    (g,) = torch.autograd.grad(out, interpolates, torch.ones(out.size()).double(),
                               create_graph=True, retain_graph=True, only_inputs=True)  # fmt: skip
    return ((g.norm(2, dim=1) - 1) ** 2).mean() * 10


@pytest.mark.parametrize("penalty", ["standard", "reference"])
def test_penalty_and_its_parameter_gradients_equal_an_independent_formulation(penalty):
    critic = _critic64()
    real = torch.rand(3, 3, 24, 24, dtype=torch.float64) * 2 - 1
    fake = torch.rand(3, 3, 24, 24, dtype=torch.float64) * 2 - 1
    adv = DeblurAdversarial("wgan_gp", penalty)
    torch.manual_seed(5)
    got = adv.gradient_penalty(critic, real, fake)
    torch.manual_seed(5)
    if penalty == "standard":
        alpha = torch.rand(3, 1, 1, 1, dtype=torch.float64)
        want = _penalty_per_sample_loop(critic, real, fake, alpha)
    else:
        want = _penalty_deblurgan(critic, real, fake)
    assert got.item() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    params = list(critic.parameters())  # (the last bias does not reach the input gradient)
    g_got = torch.autograd.grad(got, params, allow_unused=True, materialize_grads=True)
    g_want = torch.autograd.grad(want, params, allow_unused=True, materialize_grads=True)
    assert sum(float(g.abs().sum()) > 0 for g in g_got) >= len(params) - 1
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the two forms are different numbers on the same critic
    other = DeblurAdversarial("wgan_gp", "reference" if penalty == "standard" else "standard")
    torch.manual_seed(5)
    assert abs(other.gradient_penalty(critic, real, fake).item() - got.item()) > 1e-3


def test_critic_losses_of_every_mode_equal_the_reference_formulas():
    critic = _critic64(1)
    real = torch.rand(2, 3, 24, 24, dtype=torch.float64) * 2 - 1
    fake = torch.rand(2, 3, 24, 24, dtype=torch.float64) * 2 - 1
    r, f = critic(real), critic(fake)
    torch.manual_seed(3)
    d = DeblurAdversarial("wgan_gp", "reference").critic_loss(critic, real, fake)
    torch.manual_seed(3)
    want = f.mean() - r.mean() + _penalty_deblurgan(critic, real, fake)  # DiscLossWGANGP
    torch.testing.assert_close(d["loss"], want, rtol=1e-12, atol=0)
    lsgan = DeblurAdversarial("lsgan").critic_loss(critic, real, fake)["loss"]
    torch.testing.assert_close(lsgan, 0.5 * ((f**2).mean() + ((r - 1) ** 2).mean()))
    l1 = DeblurAdversarial("l1").critic_loss(critic, real, fake)["loss"]  # the reference's "lsgan"
    torch.testing.assert_close(l1, 0.5 * (f.abs().mean() + (r - 1).abs().mean()))
    ragan = DeblurAdversarial("ragan_ls").critic_loss(critic, real, fake)["loss"]
    want = (((r - f.mean() - 1) ** 2).mean() + ((f - r.mean() + 1) ** 2).mean()) / 2
    torch.testing.assert_close(ragan, want)
    g = DeblurAdversarial("ragan_ls").generator_loss(critic, fake, real)
    want = (((r - f.mean() + 1) ** 2).mean() + ((f - r.mean() - 1) ** 2).mean()) / 2
    torch.testing.assert_close(g, want)
    assert torch.equal(DeblurAdversarial("wgan_gp").generator_loss(critic, fake, real), -f.mean())


# ---- content losses: VGG19 conv3_3 from a local file, the v2 normalisation quirk ---------------
@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    from torchvision.models import vgg

    torch.manual_seed(0)
    features = vgg.make_layers(vgg.cfgs["E"])
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path, features[:15].double().eval()  # up to conv3_3 (index 14), the oracle


def _reference_v2_content(features, fake, real):
    """VITA-Group/DeblurGANv2 ``PerceptualLoss.get_loss`` with ``nn.MSELoss``, ported."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=fake.dtype).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=fake.dtype).view(3, 1, 1)
    fake_im, real_im = (fake + 1) / 2.0, (real + 1) / 2.0
    fake_im[0, :, :, :] = (fake_im[0, :, :, :] - mean) / std  # transforms.Normalize, image 0
    real_im[0, :, :, :] = (real_im[0, :, :, :] - mean) / std
    loss = F.mse_loss(features(fake_im), features(real_im).detach())
    return 0.006 * torch.mean(loss) + 0.5 * F.mse_loss(fake_im, real_im)


def test_v2_content_quirk_flag_and_the_whole_batch_default(vgg_file):
    path, features = vgg_file
    torch.manual_seed(0)
    fake = torch.rand(3, 3, 16, 16, dtype=torch.float64) * 2 - 1
    real = torch.rand(3, 3, 16, 16, dtype=torch.float64) * 2 - 1
    quirk = DeblurGANv2Loss(vgg_weights=str(path), reference_normalization=True)
    quirk.vgg.net.double()
    got = quirk.content(fake, real)
    torch.testing.assert_close(got, _reference_v2_content(features, fake, real), rtol=1e-12, atol=0)
    ours = DeblurGANv2Loss(vgg_weights=str(path))
    ours.vgg.net.double()
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    f01, r01 = (fake + 1) / 2, (real + 1) / 2
    want = 0.006 * F.mse_loss(features((f01 - mean) / std), features((r01 - mean) / std))
    want = want + 0.5 * F.mse_loss(f01, r01)
    torch.testing.assert_close(ours.content(fake, real), want, rtol=1e-12, atol=0)
    assert abs(ours.content(fake, real).item() - got.item()) > 1e-4
    # one image: the quirk only changes the pixel term (it is then normalised)
    assert ours.content_name == quirk.content_name == "perceptual"


def test_v1_content_is_conv3_3_mse_with_a_file_and_l1_without_saying_so(vgg_file, caplog):
    path, features = vgg_file
    fake = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    real = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    loss = DeblurGANLoss(vgg_weights=str(path))
    loss.vgg.net.double()
    torch.testing.assert_close(loss.content(fake, real), F.mse_loss(features(fake), features(real)))
    assert "vgg" not in "".join(loss.state_dict())  # frozen, read from its file
    with caplog.at_level("WARNING"):
        plain = DeblurGANLoss()
    assert plain.content_name == "l1" and "L1 on pixels" in caplog.text
    assert sum("content loss" in r.message for r in caplog.records) == 1
    torch.testing.assert_close(plain.content(fake, real), (fake - real).abs().mean())


# ---- data ----------------------------------------------------------------------------------------
def _write_gopro(root, sequences=("GOPR0001_00", "GOPR0002_00"), frames=(3, 2), size=(24, 20)):
    """Blurred frame == sharp frame (so any crop / flip mismatch shows), each colour-coded."""
    for split in ("train", "test"):
        for seq, n in zip(sequences, frames):
            for folder in ("blur", "sharp"):
                (root / split / seq / folder).mkdir(parents=True, exist_ok=True)
            for i in reversed(range(n)):  # written out of order
                rng = np.random.default_rng([i, sequences.index(seq)])
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                pixels[0, 0] = (i, len(seq), 7)
                for folder in ("blur", "sharp"):
                    Image.fromarray(pixels).save(root / split / seq / folder / f"{i:06d}.png")


def test_gopro_reader_pairs_by_name_and_crops_and_flips_both_alike(tmp_path):
    _write_gopro(tmp_path)
    data = build_gopro(tmp_path, image_size=16)
    train, val = data["train"], data["val"]
    assert len(train) == len(val) == 5
    for blur, sharp, seq in train.pairs:
        assert blur.name == sharp.name and blur.parent.parent == sharp.parent.parent
        assert blur.parent.name == "blur" and sharp.parent.name == "sharp" and seq in str(blur)
    flips = set()
    for i in range(len(train)):
        for epoch in range(4):
            rng = sample_rng(0, epoch, i)
            s = train.load(i, rng)
            assert s["A"].shape == (3, 16, 16) and torch.equal(s["A"], s["B"])
            flips.add(train.transform.params((24, 20), sample_rng(0, epoch, i))[2])
    assert flips == {True, False}
    assert torch.equal(
        train.load(1, sample_rng(0, 0, 1))["A"], train.load(1, sample_rng(0, 0, 1))["A"]
    )
    full = val.load(0, None)  # evaluation: the whole frame
    assert full["A"].shape == (3, 20, 24)
    resized = build_gopro(tmp_path, image_size=16, load_size=[32, 18])["val"].load(0, None)
    assert resized["A"].shape == (3, 18, 32)


def test_gopro_reader_errors_are_one_line(tmp_path):
    _write_gopro(tmp_path)
    (tmp_path / "train" / "GOPR0002_00" / "sharp" / "000001.png").unlink()
    with pytest.raises(DataError) as e:
        build_gopro(tmp_path, image_size=16)
    msg = str(e.value)
    assert "\n" not in msg and "GOPR0002_00/blur/000001.png" in msg and "sharp partner" in msg
    with pytest.raises(DataError, match="dataset root .* not found; download"):
        build_gopro(tmp_path / "nope", hint="download it")
    _write_gopro(tmp_path / "ok")
    small = build_gopro(tmp_path / "ok", image_size=22)["train"]  # 24 x 20 frames
    with pytest.raises(DataError, match="24x20 is smaller than the crop dataset.image_size=22"):
        small.load(0, sample_rng(0, 0, 0))


@pytest.mark.parametrize("make", [linear_kernel, shaky_kernel])
def test_synthetic_kernels_sum_to_one_and_blur(make):
    for seed in range(20):
        k = make(np.random.default_rng(seed), 11)
        assert k.shape == (11, 11) and (k >= 0).all()
        assert k.sum() == pytest.approx(1.0, abs=1e-12)
        assert k.max() < 0.7  # spread, not a delta
    image = np.zeros((21, 21, 3), np.uint8)
    image[10, 10] = 255
    blurred = blur_image(image, k)  # a point spreads into the kernel itself
    np.testing.assert_allclose(blurred[5:16, 5:16, 0], np.round(255 * k), atol=0)


def test_synthetic_gopro_writes_the_layout_and_reads_it_back(tmp_path):
    data = build_synthetic_gopro(
        tmp_path / "syn", image_size=32, train_sequences=2, test_sequences=1,
        frames_per_sequence=3, source_size=40, kernel_size=7,
    )  # fmt: skip
    root = tmp_path / "syn"
    assert (root / "synthetic_gopro.json").is_file()
    assert sorted(p.name for p in (root / "train").iterdir()) == ["SYN0000_train", "SYN0001_train"]
    assert len(list((root / "test" / "SYN0000_test" / "blur").glob("*.png"))) == 3
    assert len(data["train"]) == 6 and len(data["val"]) == 3
    batch = default_collate([data["val"].load(i, None) for i in range(3)])
    from src.metrics.image_quality import psnr

    p = psnr(batch["A"], batch["B"])
    assert ((p > 14) & (p < 40)).all(), p  # blurred, but the same scene


# ---- the SSIM of the GoPro protocol --------------------------------------------------------------
def test_ssim_is_the_gaussian_11x11_sigma_1_5_protocol():
    """Independent formulation: scikit-image's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`` algorithm with
    scipy (Gaussian filter truncated at 3.5 sigma = 11 taps, reflect border, the 5-pixel border
    cropped before the mean, channels averaged)."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 40, 36))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    want = []
    for a, b in zip(x, y):
        per_channel = []
        for u, v in zip(a, b):
            filt = functools.partial(ndimage.gaussian_filter, sigma=1.5, truncate=3.5)
            mu_u, mu_v = filt(u), filt(v)
            vu, vv, cuv = filt(u * u) - mu_u**2, filt(v * v) - mu_v**2, filt(u * v) - mu_u * mu_v
            c1, c2 = 0.01**2, 0.03**2
            s = ((2 * mu_u * mu_v + c1) * (2 * cuv + c2)) / (
                (mu_u**2 + mu_v**2 + c1) * (vu + vv + c2)
            )
            per_channel.append(s[5:-5, 5:-5].mean())
        want.append(np.mean(per_channel))
    got = ssim(torch.from_numpy(x) * 2 - 1, torch.from_numpy(y) * 2 - 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


# ---- schedules, steps, freezing ------------------------------------------------------------------
def test_v2_linear_decay_from_epoch_50_to_min_lr():
    def lrs(**kw):
        opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-4)
        sched = LinearDecayToMinLR(opt, 50, 200, 1e-7, **kw)
        out = []
        for _ in range(200):
            out.append(opt.param_groups[0]["lr"])
            opt.step(), sched.step()
        return out

    fixed, ref = lrs(), lrs(reference_slope=True)
    assert fixed[:51] == ref[:51] == [1e-4] * 51
    for e in (51, 120, 199):  # down to min_lr in the last epoch
        assert fixed[e] == pytest.approx(1e-4 - (1e-4 - 1e-7) * (e - 50) / 149, rel=1e-9)
    assert fixed[199] == pytest.approx(1e-7, rel=1e-9)
    # the reference: base - (base - min) / num_epochs * (epoch - start)
    assert ref[199] == pytest.approx(1e-4 - (1e-4 - 1e-7) / 200 * 149, rel=1e-9)  # ~25 %


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return build_synthetic_gopro(
        tmp_path_factory.mktemp("syn") / "d", image_size=32, train_sequences=1,
        test_sequences=1, frames_per_sequence=4, source_size=40, kernel_size=7,
    )  # fmt: skip


def _batch(data, n=2):
    return default_collate([data["train"].load(i, sample_rng(0, 0, i)) for i in range(n)])


def _opt(task, lr=1e-3):
    return Optimization(
        {n: torch.optim.Adam(p, lr=lr) for n, p in task.optimizer_groups().items()},
        device=torch.device("cpu"),
    )


def test_v1_step_updates_the_critic_5_times_then_g_through_the_updated_critic(syn):
    torch.manual_seed(0)
    task = DeblurGANTask(
        build_deblurgan_generator(ngf=4, n_blocks=1),
        build_patch_critic(ndf=4),
        DeblurGANLoss(),
        syn,
    )
    assert task.critic_updates == 5
    opt = _opt(task)
    seen = []
    opt.listeners.append(seen.append)
    out = task.training_step(_batch(syn), opt)
    assert seen == ["D"] * 5 + ["G"] and opt.updates == {"D": 5, "G": 1}
    assert {"d_loss", "d_gp", "d_wasserstein", "g_adv", "g_l1", "g_loss"} <= set(out)
    assert (
        DeblurGANTask(
            task.generator, task.discriminator, DeblurGANLoss("lsgan"), syn
        ).critic_updates
        == 1
    )


def test_v2_backbone_frozen_for_the_warmup_epochs_then_trained(syn):
    torch.manual_seed(0)
    gen = build_fpn_generator(num_filters=8, num_filters_fpn=16)
    task = DeblurGANv2Task(gen, build_patch_critic(ndf=4), build_patch_critic(ndf=4, n_layers=5),
                           DeblurGANv2Loss(), syn, warmup_epochs=3)  # fmt: skip
    opt = _opt(task)
    for epoch, frozen in ((0, True), (2, True), (3, False)):
        task.on_train_epoch_start(epoch)
        enc = {
            k: v.detach().clone()
            for k, v in gen.encoder.state_dict().items()
            if "running" not in k and "num_batches" not in k
        }
        head = gen.final.weight.detach().clone()
        task.training_step(_batch(syn), opt)
        moved = [not torch.equal(v, gen.encoder.state_dict()[k]) for k, v in enc.items()]
        assert not any(moved) if frozen else any(moved), epoch
        assert not torch.equal(head, gen.final.weight)
    assert opt.updates == {"G": 3, "D": 3}


def test_restore_pads_whole_frames_and_eval_is_deterministic(syn):
    torch.manual_seed(0)
    gen = build_fpn_generator(num_filters=8, num_filters_fpn=16)
    task = DeblurGANv2Task(gen, build_patch_critic(ndf=4), None, DeblurGANv2Loss(), syn).eval()
    frames = default_collate([syn["val"].load(i, None) for i in range(2)])
    assert frames["A"].shape[-2:] == (40, 40)  # not a multiple of 32: padded, cropped back
    out = task.restore(frames["A"])
    assert out.shape == frames["A"].shape and out.abs().max() <= 1
    m1, m2 = task.evaluate([frames]), task.evaluate([frames])
    assert m1 == m2 and m1["psnr_gain"] == pytest.approx(m1["psnr"] - m1["psnr_blurred"])
    assert task.ddp_modules == ("generator", "patch_discriminator")


# ---- through run.py --------------------------------------------------------------------------
def _tiny(tmp_path, model):
    nets = {
        "deblurgan": [
            "model.generator.ngf=4",
            "model.generator.n_blocks=1",
            "model.discriminator.ndf=4",
        ],
        "deblurgan_v2": [
            "model.generator.num_filters=8",
            "model.generator.num_filters_fpn=16",
            "model.patch_discriminator.ndf=4",
            "model.full_discriminator.ndf=4",
            "model.warmup_epochs=2",
        ],
    }[model]
    return [
        f"model={model}",
        "logger=none",
        "print_config=false",
        "seed=0",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.image_size=32",
        "dataset.source_size=40",
        "dataset.kernel_size=7",
        "dataset.train_sequences=2",
        "dataset.test_sequences=1",
        "dataset.frames_per_sequence=4",
        *nets,
        "trainer.batch_size=2",
        "trainer.max_epochs=3",
        "trainer.max_steps=10",
        "trainer.num_workers=0",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]


@pytest.mark.parametrize(
    "model, updates", [("deblurgan", {"G": 10, "D": 50}), ("deblurgan_v2", {"G": 10, "D": 10})]
)
def test_resume_after_sigterm_is_exact_and_modes_work_on_the_checkpoint(tmp_path, model, updates):
    common = _tiny(tmp_path, model)
    a = run_cli(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert a.returncode == 0, a.stderr[-3000:]
    assert (a.stdout + a.stderr).count("content loss: L1 on pixels") == 1  # said once
    b1 = run_cli(*common, "trainer.preempt_at_step=6", f"hydra.run.dir={tmp_path / 'b'}")
    assert b1.returncode == 0, b1.stderr[-3000:]
    mid = load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert mid["progress"]["global_step"] == 6
    assert mid["optim"]["updates"] == {k: v * 6 // 10 for k, v in updates.items()}
    b2 = run_cli(*common, "resume=auto", f"hydra.run.dir={tmp_path / 'b'}")
    assert b2.returncode == 0, b2.stderr[-3000:]
    ca = load(tmp_path / "a" / "checkpoints" / "last.ckpt")
    cb = load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert ca["progress"] == cb["progress"] and ca["progress"]["global_step"] == 10
    assert ca["optim"]["updates"] == cb["optim"]["updates"] == updates  # the critic counters
    assert ca["task"].keys() == cb["task"].keys()
    for k in ca["task"]:
        assert torch.equal(ca["task"][k], cb["task"][k]), k
    for name in ("G", "D"):
        sa, sb = ca["optim"]["optimizers"][name], cb["optim"]["optimizers"][name]
        assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
        assert sa["state"].keys() == sb["state"].keys()
        for i in sa["state"]:
            for k in sa["state"][i]:
                assert torch.equal(
                    torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k])
                )
    if (
        model == "deblurgan_v2"
    ):  # 4 steps an epoch, warm-up 2 epochs: the backbone joined in epoch 2
        n_g = len(ca["optim"]["optimizers"]["G"]["state"])
        assert n_g == len(ca["optim"]["optimizers"]["G"]["param_groups"][0]["params"])

    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ev = run_cli(*common, "mode=eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    trained = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["val/psnr"] == pytest.approx(trained["val/psnr"], rel=1e-9)
    assert {"val/psnr", "val/ssim", "val/psnr_blurred", "val/psnr_gain", "val/ssim_gain"} <= set(
        summary
    )
    frames = next((tmp_path / "data").glob("synthetic_gopro_*")) / "test" / "SYN0000_test" / "blur"
    pr = run_cli(*common, "mode=predict", f"ckpt_path={ckpt}", f"input={frames}",
                 f"hydra.run.dir={tmp_path / 'p'}")  # fmt: skip
    assert pr.returncode == 0, pr.stderr[-3000:]
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert len(records) == 4
    with Image.open(records[0]["deblurred"]) as out:
        assert out.size == (40, 40)
    ex = run_cli(*common, "mode=export", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'x'}")
    assert ex.returncode == 0, ex.stderr[-3000:]
    assert (tmp_path / "x" / "export" / "generator.onnx").stat().st_size > 0


def test_paper_recipes_compose():
    v1 = compose_config("experiment=deblurgan_gopro", check=True)
    v2 = compose_config("experiment=deblurgan_v2_gopro", check=True)
    for cfg in (v1, v2):
        assert (
            cfg.dataset._target_ == "src.data.gopro.build_gopro" and cfg.dataset.image_size == 256
        )
    assert v1.model.generator.block == "two_conv" and v1.model.generator.ngf == 64
    assert v1.model.generator.n_blocks == 9 and v1.loss.gan_mode == "wgan_gp"
    assert v1.loss.lambda_content == 100 and v1.optimizer.lr == 1e-4
    assert list(v1.optimizer.betas) == [0.5, 0.999]
    assert (v1.scheduler.constant_epochs, v1.scheduler.decay_epochs) == (150, 150)
    assert list(v1.dataset.load_size) == [640, 360]
    assert v2.model.generator.backbone == "inception_resnet_v2"
    assert (v2.model.generator.num_filters, v2.model.generator.num_filters_fpn) == (128, 256)
    assert v2.loss.gan_mode == "ragan_ls" and v2.loss.adv_lambda == 0.001
    assert v2.model.warmup_epochs == 3 and v2.model.full_discriminator.n_layers == 5
    g = v2.scheduler.groups.G
    assert (g.start_epoch, g.num_epochs, g.min_lr) == (50, 200, 1e-7)


# ---- learning (slow) -------------------------------------------------------------------------
def _evals(run_dir):
    return [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "val/psnr" in line
    ]


@pytest.mark.slow
@pytest.mark.parametrize("model, margin", [("deblurgan", 0.3), ("deblurgan_v2", 0.3)])
def test_the_default_run_deblurs_the_synthetic_gopro(tmp_path, model, margin):
    """`python run.py model=<m>` as a user types it (synthetic_gopro, 64 px crops, whole 100 px
    frames evaluated): the restored frames beat the blurred input by ``margin`` dB PSNR
    (measured: v1 +0.59 dB, SSIM +0.012, ~3 CPU minutes; v2 +0.80 dB, SSIM +0.016, ~2 CPU
    minutes; 16 epochs each; the generators start as
    the identity, so the first evaluation is near 0 dB gain)."""
    r = run_cli(
        f"model={model}",
        "logger=none",
        "print_config=false",
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer.progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    evals = _evals(tmp_path / "run")
    assert evals[-1]["val/psnr_gain"] > margin, evals
    assert evals[-1]["val/ssim_gain"] > 0, evals
    assert evals[-1]["val/psnr_gain"] > evals[0]["val/psnr_gain"] + 0.2
    assert math.isfinite(evals[-1]["val/ssim"])
