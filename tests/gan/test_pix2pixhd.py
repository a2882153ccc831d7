"""pix2pixHD: generators against an independent port of the reference (tests/gan/
reference_pix2pixhd.py: parameter counts, strict loading of reference-layout state dicts, equal
outputs), the loss against the reference's formulas in float64, the reader's one-hot + edge
encoding on a written example with known values, the same transform for label / instance /
photo, niter_fix_global, the step order, predict / export, the recipe, and learning (slow)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from src.data.base import DataError
from src.data.pix2pixhd import (
    CITYSCAPES_PALETTE,
    HDTransform,
    build_pix2pixhd_dataset,
    instance_edges,
)
from src.data.synthetic_pix2pixhd import build_synthetic_pix2pixhd
from src.engine.checkpoint import load
from src.engine.optim import Optimization
from src.engine.schedulers import LinearDecayLR
from src.engine.seed import sample_rng
from src.losses.pix2pixhd import Pix2PixHDLoss
from src.models.gan import build_discriminator, count_parameters
from src.models.gan.generators import GeneratorSizeError
from src.models.gan.pix2pixhd import GlobalGenerator, build_hd_generator
from src.tasks.pix2pixhd import Pix2PixHDTask
from src.utils.errors import UserError
from tests.conftest import compose_config, run_cli
from tests.gan.reference_pix2pixhd import (
    RefGlobalGenerator,
    RefLocalEnhancer,
    global_count,
    ref_gan_loss,
    ref_get_edges,
    ref_losses,
)


# ---- generators -----------------------------------------------------------------------------
def test_global_generator_has_182_5_m_parameters_at_full_size():
    """ngf 64, 4 downsamplings, 9 blocks, Cityscapes' 35 + 1 input channels: built on the meta
    device (no memory), counted, and equal to the closed form (182,546,755)."""
    with torch.device("meta"):
        net = build_hd_generator("global", input_nc=36)
    assert count_parameters(net) == global_count(36, 3, 64, 4, 9) == 182_546_755
    assert round(count_parameters(net) / 1e6, 1) == 182.5
    with torch.device("meta"):  # the 2048x1024 recipe's local enhancer (ngf 32) around it
        local = build_hd_generator("local", input_nc=36, ngf=32)
    g1 = global_count(36, 3, 64, 4, 9) - (64 * 3 * 49 + 3)  # without the output conv
    assert count_parameters(local.model) == g1


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_closed_form_equals_the_port_at_small_sizes(norm):
    for args in [(7, 3, 4, 2, 2), (5, 3, 8, 3, 1), (36, 3, 2, 4, 3)]:
        ours = GlobalGenerator(*args, norm=norm)
        ref = RefGlobalGenerator(*args, norm=norm)
        assert count_parameters(ours) == count_parameters(ref) == global_count(*args, norm=norm)


def test_reference_state_dicts_load_strictly_and_compute_the_same():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32, 32, dtype=torch.float64)
    ref = RefGlobalGenerator(7, 3, 4, 2, 2).double()
    ours = build_hd_generator("global", 7, 3, ngf=4, n_downsample_global=2, n_blocks_global=2)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.double().load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-12)

    ref_l = RefLocalEnhancer(7, 3, 4, 2, 2, 1, 1).double()
    ours_l = build_hd_generator(
        "local", 7, 3, ngf=4, n_downsample_global=2, n_blocks_global=2, n_blocks_local=1
    )
    assert list(ours_l.state_dict()) == list(ref_l.state_dict())
    ours_l.double().load_state_dict(ref_l.state_dict(), strict=True)
    torch.testing.assert_close(ours_l(x), ref_l(x), rtol=0, atol=1e-12)
    assert ours_l.size_multiple == 8 and ours.size_multiple == 4
    # the reference trains alone, for niter_fix_global epochs, the keys starting "model1"
    local_keys = {k for k, _ in ref_l.named_parameters() if k.startswith("model1")}
    assert {id(p) for p in ours_l.local_parameters()} == {
        id(p) for k, p in ours_l.named_parameters() if k in local_keys
    }
    assert local_keys and len(local_keys) < len(dict(ref_l.named_parameters()))


def test_local_enhancer_starts_from_a_trained_global_generator(tmp_path):
    torch.manual_seed(0)
    g = build_hd_generator("global", 7, 3, ngf=8, n_downsample_global=2, n_blocks_global=1)
    path = tmp_path / "latest_net_G.pth"
    torch.save(g.state_dict(), path)
    local = build_hd_generator(
        "local", 7, 3, ngf=4, n_downsample_global=2, n_blocks_global=1, global_weights=str(path)
    )
    for k, v in local.model.state_dict().items():
        assert torch.equal(v, g.state_dict()[f"model.{k}"]), k
    with pytest.raises(UserError, match="not the weights of a global generator"):
        build_hd_generator("local", 7, 3, ngf=8, n_downsample_global=2, global_weights=str(path))


# ---- loss -----------------------------------------------------------------------------------
def _features(g, num_d=2, n_layers=3, b=2, c=5):
    """Per-scale lists of n_layers + 1 feature maps and a prediction (float64)."""
    out = []
    for i in range(num_d):
        s = 32 // 2**i
        out.append(
            [torch.randn(b, c, s, s, generator=g, dtype=torch.float64) for _ in range(n_layers + 2)]
        )
    return out


def test_loss_equals_the_reference_formulas_in_float64():
    g = torch.Generator().manual_seed(0)
    pool, real, fake = _features(g), _features(g), _features(g)
    loss = Pix2PixHDLoss()
    d = loss.discriminator(real, pool)
    out = loss.generator(fake, real, None, None)
    ref_d, ref_g, ref_gan, ref_feat = ref_losses(pool, real, fake, num_d=2, n_layers=3)
    torch.testing.assert_close(d, ref_d, rtol=1e-14, atol=0)
    torch.testing.assert_close(out["loss"], ref_g, rtol=1e-14, atol=0)
    torch.testing.assert_close(out["g_gan"], ref_gan, rtol=1e-14, atol=0)
    torch.testing.assert_close(out["g_feat"], ref_feat, rtol=1e-14, atol=0)
    # the GAN term is a SUM over the two scales (no 1/num_D), feature matching is weighted
    # 1/num_D x 4/(n_layers+1) x 10 = 5 per layer
    per_scale = [((s[-1] - 1) ** 2).mean() for s in fake]
    torch.testing.assert_close(out["g_gan"], per_scale[0] + per_scale[1], rtol=1e-14, atol=0)
    l1 = sum((f - r).abs().mean() for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))
    torch.testing.assert_close(out["g_feat"], 5.0 * l1, rtol=1e-14, atol=0)
    # feature matching sees the real features as constants
    fake_leaf = [[t.clone().requires_grad_() for t in s] for s in fake]
    real_leaf = [[t.clone().requires_grad_() for t in s] for s in real]
    loss.generator(fake_leaf, real_leaf, None, None)["loss"].backward()
    assert all(t.grad is None for s in real_leaf for t in s)
    assert all(t.grad is not None for s in fake_leaf for t in s[:-1])


def test_loss_through_the_discriminator_and_its_switches():
    torch.manual_seed(0)
    d = build_discriminator("multiscale", 10, ndf=4, n_layers=3, norm="instance").double()
    a, b = (
        torch.randn(2, 10, 32, 32, dtype=torch.float64),
        torch.randn(2, 10, 32, 32, dtype=torch.float64),
    )
    pa, pb = d(a), d(b)
    assert len(pa) == 2 and len(pa[0]) == 5
    ref_d, ref_g, _, _ = ref_losses(pa, pb, pa, 2, 3)
    torch.testing.assert_close(Pix2PixHDLoss().discriminator(pb, pa), ref_d, rtol=1e-14, atol=0)
    torch.testing.assert_close(Pix2PixHDLoss().generator(pa, pb, None, None)["loss"], ref_g)
    no_fm = Pix2PixHDLoss(feature_matching=False).generator(pa, pb, None, None)
    torch.testing.assert_close(no_fm["loss"], ref_gan_loss(pa, True))
    assert "g_feat" not in no_fm
    with pytest.raises(UserError, match="needs a local weights file"):
        Pix2PixHDLoss(lambda_vgg=10.0)
    plain = build_discriminator("multiscale", 10, ndf=4, intermediate_features=False)
    with pytest.raises(UserError, match="intermediate_features=true"):
        Pix2PixHDLoss().generator(plain(a.float()), plain(b.float()), None, None)


# ---- data -----------------------------------------------------------------------------------
LABEL = np.array(
    [
        [0, 0, 1, 1, 2, 2, 2, 2],
        [0, 0, 1, 1, 2, 2, 2, 2],
        [3, 3, 3, 3, 3, 3, 0, 0],
        [3, 3, 3, 3, 3, 3, 0, 0],
    ],
    np.uint8,
)
INST = np.array(  # two cars (label 3) side by side: one label region, two instances
    [
        [0, 0, 1, 1, 2, 2, 2, 2],
        [0, 0, 1, 1, 2, 2, 2, 2],
        [3000, 3000, 3000, 3001, 3001, 3001, 0, 0],
        [3000, 3000, 3000, 3001, 3001, 3001, 0, 0],
    ],
    np.uint16,
)
EDGES = np.array(  # by hand: a pixel whose left/right/up/down neighbour has another id
    [
        [0, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 0, 1, 1, 0],
    ],
    np.float32,
)


def _write_example(root, phases=("train", "test")):
    for phase in phases:
        for sub in ("label", "inst", "img"):
            (root / f"{phase}_{sub}").mkdir(parents=True)
        Image.fromarray(LABEL).save(root / f"{phase}_label" / "a_gtFine_labelIds.png")
        Image.fromarray(INST).save(root / f"{phase}_inst" / "a_gtFine_instanceIds.png")
        photo = np.stack([LABEL * 60, np.arange(8)[None].repeat(4, 0) * 30, INST % 7 * 30], -1)
        Image.fromarray(photo.astype(np.uint8)).save(root / f"{phase}_img" / "a_leftImg8bit.png")
    return root


def test_reader_one_hot_and_instance_edges_on_a_written_example(tmp_path):
    root = _write_example(tmp_path / "hd")
    assert Image.open(root / "train_inst" / "a_gtFine_instanceIds.png").mode.startswith("I")
    data = build_pix2pixhd_dataset(root, label_nc=5, preprocess="none", size_multiple=1)
    sample = data["val"].load(0, None)
    a = sample["A"]
    assert a.shape == (6, 4, 8) and a.dtype == torch.float32 and data["val"].input_nc == 6
    for k in range(5):
        np.testing.assert_array_equal(a[k].numpy(), (LABEL == k).astype(np.float32))
    np.testing.assert_array_equal(a[5].numpy(), EDGES)
    # the reference's get_edges on the same map
    ref = ref_get_edges(torch.from_numpy(INST.astype(np.int64))[None, None])[0, 0]
    np.testing.assert_array_equal(ref.numpy(), EDGES)
    photo = np.asarray(Image.open(root / "test_img" / "a_leftImg8bit.png"), np.float32)
    np.testing.assert_allclose(sample["B"].permute(1, 2, 0).numpy(), photo / 127.5 - 1, atol=1e-6)
    # without instances: label channels only
    plain = build_pix2pixhd_dataset(
        root, label_nc=5, instance=False, preprocess="none", size_multiple=1
    )
    assert plain["val"].load(0, None)["A"].shape == (5, 4, 8)


def test_edges_match_the_reference_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        inst = rng.integers(0, 3, (9, 13))
        ref = ref_get_edges(torch.from_numpy(inst)[None, None])[0, 0].numpy()
        np.testing.assert_array_equal(instance_edges(inst).astype(np.float32), ref)


def test_label_instance_and_photo_share_one_crop_and_flip(tmp_path):
    root = tmp_path / "syn"
    data = build_synthetic_pix2pixhd(
        root,
        num_train=2,
        num_test=1,
        preprocess="scale_width_and_crop",
        load_size=96,
        image_size=32,
    )
    ds = data["train"]
    full = build_synthetic_pix2pixhd(
        root, num_train=2, num_test=1, preprocess="none", flip=False, size_multiple=1
    )["train"]
    ref = full.load(0, None)  # 96 x 48, untouched
    flips = set()
    for seed in range(8):
        rng = sample_rng(seed, 0, 0)
        geometry = ds.transform.geometry((96, 48), sample_rng(seed, 0, 0))
        got = ds.load(0, rng)
        left, top, right, bottom = geometry["crop"]
        want_a, want_b = ref["A"][:, top:bottom, left:right], ref["B"][:, top:bottom, left:right]
        if geometry["flip"]:
            want_a, want_b = want_a.flip(-1), want_b.flip(-1)
        flips.add(geometry["flip"])
        # labels exactly; the edge channel is recomputed after the crop, so it differs from the
        # cropped full map only on the crop's border; the photo within JPEG-free PNG rounding
        torch.testing.assert_close(got["A"][:6], want_a[:6], rtol=0, atol=0)
        torch.testing.assert_close(got["A"][6, 1:-1, 1:-1], want_a[6, 1:-1, 1:-1], rtol=0, atol=0)
        torch.testing.assert_close(got["B"], want_b, rtol=0, atol=1e-6)
    assert flips == {True, False}


def test_scale_width_rounds_as_the_reference_and_eval_is_deterministic():
    t = HDTransform("scale_width", load_size=1024, size_multiple=16)
    assert t.output_size((2048, 1024)) == (1024, 512)
    assert t.geometry((2048, 1024), None) == {"resize": (1024, 512), "crop": None, "flip": False}
    t = HDTransform("scale_width", load_size=100, size_multiple=16)
    assert t.output_size((200, 90)) == (96, 48)  # 100 x 45 -> multiples of 16 (round)
    t = HDTransform("resize_and_crop", crop_size=32, load_size=36)
    assert t.geometry((50, 40), None)["resize"] == (32, 32)  # eval: straight to the crop
    assert t.geometry((50, 40), np.random.default_rng(0))["resize"] == (36, 36)
    with pytest.raises(DataError, match="dataset.preprocess"):
        HDTransform("crop")


def test_reader_errors_are_one_clear_line(tmp_path):
    root = _write_example(tmp_path / "hd")
    with pytest.raises(DataError, match=r"label id 3 is outside 0..2 \(dataset.label_nc=3\)"):
        build_pix2pixhd_dataset(root, label_nc=3, preprocess="none")["train"].load(0, None)
    Image.fromarray((np.zeros((4, 8, 3)) + [10, 20, 30]).astype(np.uint8)).save(
        root / "train_label" / "b_gtFine_color.png"
    )
    with pytest.raises(DataError, match="folders hold different numbers"):
        build_pix2pixhd_dataset(root, label_nc=5)
    (root / "train_img" / "b.png").write_bytes(
        (root / "test_img" / "a_leftImg8bit.png").read_bytes()
    )
    (root / "train_inst" / "b.png").write_bytes(
        (root / "test_inst" / "a_gtFine_instanceIds.png").read_bytes()
    )
    ds = build_pix2pixhd_dataset(root, label_nc=5, preprocess="none", size_multiple=1)["train"]
    with pytest.raises(DataError, match="colour picture, not a label map"):
        ds.load(1, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images .* in .*empty/train_label"):
        build_pix2pixhd_dataset(tmp_path / "empty", label_nc=5)
    with pytest.raises(DataError, match="dataset root"):
        build_pix2pixhd_dataset(tmp_path / "nowhere")


def test_rgb_input_variant_reads_train_a_and_train_b(tmp_path):
    data = build_synthetic_pix2pixhd(
        tmp_path / "rgb", label_nc=0, num_train=2, num_test=1, preprocess="none", size_multiple=1
    )
    assert (tmp_path / "rgb" / "train_A").is_dir() and (tmp_path / "rgb" / "train_B").is_dir()
    sample = data["val"].load(0, None)
    assert sample["A"].shape == (4, 48, 96) and data["val"].input_nc == 4
    a = np.asarray(Image.open(tmp_path / "rgb" / "test_A" / "0000.png"), np.float32)
    np.testing.assert_allclose(sample["A"][:3].permute(1, 2, 0).numpy(), a / 127.5 - 1, atol=1e-6)
    labels = build_synthetic_pix2pixhd(
        tmp_path / "lab", num_train=2, num_test=1, preprocess="none", size_multiple=1
    )
    # the same scenes (same seed) whichever layout, and the same edge channel
    torch.testing.assert_close(labels["val"].load(0, None)["B"], sample["B"])
    torch.testing.assert_close(labels["val"].load(0, None)["A"][-1], sample["A"][-1])


# ---- the task -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("p2phd") / "synthetic"
    return build_synthetic_pix2pixhd(root, num_train=4, num_test=2)


def _task(data, name="global", n_downsample_global=2, **kw):
    torch.manual_seed(0)
    gen = dict(ngf=4, n_downsample_global=n_downsample_global, n_blocks_global=1, n_blocks_local=1)
    return Pix2PixHDTask(
        lambda input_nc: build_hd_generator(name, input_nc, **gen),
        lambda input_nc: build_discriminator("multiscale", input_nc, ndf=4, norm="instance"),
        Pix2PixHDLoss(),
        data,
        **kw,
    )


def _batch(data, n=2):
    return default_collate([data["train"].load(i, sample_rng(0, 0, i)) for i in range(n)])


def _opt(task, cls=torch.optim.SGD, **kw):
    opts = {
        "G": cls(task.generator.parameters(), **kw),
        "D": cls(task.discriminator.parameters(), **kw),
    }
    task.__dict__["_optimizers"] = opts
    return Optimization(opts, device=torch.device("cpu"))


def test_step_is_one_forward_then_g_then_d_as_the_reference(data):
    task = _task(data)
    assert task.input_nc == 7 and task.discriminator.scale0_layer0[0].in_channels == 10
    oracle = copy.deepcopy(task)
    lr = 0.05
    opt = _opt(task, lr=lr)
    calls = []
    backward, step = opt.backward, opt.step
    opt.backward = lambda loss, name: calls.append(("backward", name)) or backward(loss, name)
    opt.step = lambda name: calls.append(("step", name)) or step(name)
    batch = _batch(data)
    task.train()
    out = task.training_step(batch, opt)
    assert calls == [("backward", "G"), ("step", "G"), ("backward", "D"), ("step", "D")]
    assert set(out) == {"d_loss", "g_loss", "g_gan", "g_feat"}
    # the oracle: train.py's order with plain autograd; D's loss from the pre-step forward
    a, b = batch["A"], batch["B"]
    g_net, d_net = oracle.generator.train(), oracle.discriminator.train()
    fake = g_net(a)
    p_pool, p_real = d_net(torch.cat([a, fake.detach()], 1)), d_net(torch.cat([a, b], 1))
    p_fake = d_net(torch.cat([a, fake], 1))
    loss_d, loss_g, _, _ = ref_losses(p_pool, p_real, p_fake, 2, 3)
    g_params, d_params = list(g_net.parameters()), list(d_net.parameters())
    g_grads = torch.autograd.grad(loss_g, g_params, retain_graph=True)
    d_grads = torch.autograd.grad(loss_d, d_params)
    with torch.no_grad():
        for p, gr in [*zip(g_params, g_grads), *zip(d_params, d_grads)]:
            p -= lr * gr
    assert float(out["d_loss"]) == pytest.approx(float(loss_d), rel=1e-6)
    assert float(out["g_loss"]) == pytest.approx(float(loss_g), rel=1e-6)
    for (k, v), (k2, v2) in zip(task.state_dict().items(), oracle.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6, msg=k)


def test_niter_fix_global_trains_only_the_local_enhancer_first(data):
    task = _task(data, "local", niter_fix_global=1)
    opt = _opt(task, torch.optim.Adam, lr=1e-3)
    local = {id(p) for p in task.generator.local_parameters()}
    names = {id(p): k for k, p in task.generator.named_parameters()}
    assert {names[i].split(".")[0] for i in local} == {"model1_1", "model1_2"}

    def moved(before):
        return {k for k, p in task.generator.named_parameters() if not torch.equal(before[k], p)}

    task.train()
    task.on_train_epoch_start(0)
    before = {k: p.detach().clone() for k, p in task.generator.named_parameters()}
    d_before = [p.detach().clone() for p in task.discriminator.parameters()]
    task.training_step(_batch(data), opt)
    changed = moved(before)
    assert changed and all(k.startswith("model1_") for k in changed)  # the global part is fixed
    assert any(not torch.equal(a, p) for a, p in zip(d_before, task.discriminator.parameters()))
    g_state = opt.optimizers["G"].state
    assert g_state and all(id(p) in local for p in g_state)  # no moments for the fixed part
    task.on_train_epoch_end(0)  # the reference's update_fixed_params: a fresh optimizer
    assert not opt.optimizers["G"].state
    task.on_train_epoch_start(1)
    before = {k: p.detach().clone() for k, p in task.generator.named_parameters()}
    task.training_step(_batch(data), opt)
    assert any(k.startswith("model.") for k in moved(before))  # now G1 learns too
    # resuming mid-way: the hook alone decides, from the epoch
    task.on_train_epoch_start(0)
    assert task.fix_global
    with pytest.raises(UserError, match="needs model.generator.name=local"):
        _task(data, "global", niter_fix_global=2)


def test_input_channels_follow_the_dataset_or_must_agree(data):
    with pytest.raises(UserError, match="input_nc=36, but the dataset gives 7"):
        Pix2PixHDTask(
            __import__("functools").partial(build_hd_generator, input_nc=36, ngf=4),
            lambda input_nc: build_discriminator("multiscale", input_nc, ndf=4),
            Pix2PixHDLoss(),
            data,
        )


def test_size_the_generator_cannot_take_stops_at_construction(tmp_path):
    data = build_synthetic_pix2pixhd(
        tmp_path / "s", num_train=2, num_test=1, load_size=70, size_multiple=2
    )
    with pytest.raises(
        GeneratorSizeError,
        match=r"global cannot take 36x70 images \(dataset "
        r"train inputs are 70x36\): its sides must be multiples of 4",
    ):
        _task(data)
    small = build_synthetic_pix2pixhd(tmp_path / "s2", num_train=2, num_test=1, load_size=32)
    with pytest.raises(GeneratorSizeError, match=r"cannot take 16x32 images .* at least 32"):
        _task(small, n_downsample_global=4)


def test_evaluate_visualize_predict_and_export(data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    task = _task(data).eval()
    with torch.no_grad():
        metrics = task.evaluate([default_collate([data["val"].load(i, None) for i in range(2)])])
        pictures = task.visualize(_batch(data))["synthesis"]
    assert set(metrics) == {"psnr", "ssim", "l1", "fd_random"}
    assert pictures[0][0].shape == (32, 192, 3) and pictures[0][0].dtype == np.uint8
    # predict from a label-id map (its instance map found in the sibling test_inst folder),
    # and from a colour-coded one (nearest palette colour per pixel)
    label = data["val"].files["A"][0]
    colour = tmp_path / "drawn.png"
    ids = np.asarray(Image.open(label))
    Image.fromarray(data["val"].colors[ids]).save(colour)
    with torch.no_grad():
        rec_ids, rec_col = task.predict([label, colour], tmp_path / "out")
    assert rec_ids["instance"] == str(data["val"].files["inst"][0])
    assert rec_col["label_from"] == "palette colours" and rec_col["instance"] is None
    with Image.open(rec_ids["synthesized"]) as out:
        assert out.size == (96, 48)
    a_ids, _, _ = data["val"].encode_file(label)
    a_col, _, _ = data["val"].encode_file(colour)
    torch.testing.assert_close(a_col[:6], a_ids[:6], rtol=0, atol=0)  # the same labels
    # export: onnxruntime computes what the generator computes, at another size too
    (path,) = task.export(tmp_path / "export")
    x = np.random.default_rng(0).uniform(0, 1, (1, 7, 32, 48)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x})
    with torch.no_grad():
        want = task.generator.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cityscapes_palette_has_the_35_label_colours():
    assert len(CITYSCAPES_PALETTE) == 35
    assert CITYSCAPES_PALETTE[7] == (128, 64, 128) and CITYSCAPES_PALETTE[26] == (0, 0, 142)


# ---- configs and runs -----------------------------------------------------------------------
def test_reference_recipe_composes_and_its_decay_is_the_reference_rule():
    cfg = compose_config("experiment=pix2pixhd_cityscapes", check=True)
    g, d = cfg.model.generator, cfg.model.discriminator
    assert (g.name, g.ngf, g.n_downsample_global, g.n_blocks_global, g.norm) == (
        "global",
        64,
        4,
        9,
        "instance",
    )
    assert (d.name, d.ndf, d.n_layers, d.num_d, d.norm) == ("multiscale", 64, 3, 2, "instance")
    assert d.intermediate_features and cfg.loss.gan_mode == "lsgan" and cfg.loss.lambda_feat == 10
    assert (cfg.dataset.label_nc, cfg.dataset.instance, cfg.dataset.load_size) == (35, True, 1024)
    assert cfg.dataset.preprocess == "scale_width"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 2e-4
    assert list(cfg.optimizer.betas) == [0.5, 0.999]
    assert (cfg.trainer.batch_size, cfg.trainer.max_epochs) == (1, 200)
    # the reference: after each epoch e (1-based) > niter, lr -= lr0 / niter_decay
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-4)
    sched = LinearDecayLR(opt, cfg.scheduler.constant_epochs, cfg.scheduler.decay_epochs)
    lr = 2e-4
    for epoch in range(1, 201):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12), epoch
        sched.step()
        if epoch > 100:
            lr -= 2e-4 / 100


def _tiny(tmp_path):
    return [
        "model=pix2pixhd",
        "logger=none",
        "print_config=false",
        "seed=0",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.num_train=8",
        "dataset.num_test=2",
        "model.generator.ngf=4",
        "model.generator.n_blocks_global=1",
        "model.discriminator.ndf=4",
        "trainer.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.num_workers=0",
        "trainer.progress_bar=false",
    ]


def test_run_py_train_eval_predict_export_and_the_local_enhancer(tmp_path):
    common = _tiny(tmp_path)
    tr = run_cli(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert tr.returncode == 0, tr.stderr[-3000:]
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ev = run_cli(*common, "mode=eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    trained = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["val/psnr"] == pytest.approx(trained["val/psnr"], rel=1e-9)
    labels = next((tmp_path / "data").glob("synthetic_pix2pixhd_*")) / "test_label"
    pr = run_cli(
        *common,
        "mode=predict",
        f"ckpt_path={ckpt}",
        f"input={labels}",
        f"hydra.run.dir={tmp_path / 'p'}",
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert len(records) == 2 and all(r["instance"] for r in records)
    ex = run_cli(*common, "mode=export", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'x'}")
    assert ex.returncode == 0, ex.stderr[-3000:]
    assert (tmp_path / "x" / "export" / "generator.onnx").stat().st_size > 0
    # the 2048-style recipe in small: a local enhancer started from that global run, its
    # global part fixed for the first epoch
    lo = run_cli(
        *common,
        "model.generator.name=local",
        "model.generator.ngf=2",
        f"model.generator.global_weights={ckpt}",
        "model.niter_fix_global=1",
        "dataset.load_size=128",  # 128 x 64: its global part sees 64 x 32, 4 x 2 innermost
        f"hydra.run.dir={tmp_path / 'l'}",
    )
    assert lo.returncode == 0, lo.stderr[-3000:]
    bad = run_cli(*common, "model.generator.input_nc=36", f"hydra.run.dir={tmp_path / 'b'}")
    assert bad.returncode == 2
    last = [line for line in bad.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "input_nc=36, but the dataset gives 7" in last


def test_resume_after_sigterm_is_exact_across_the_niter_fix_global_switch(tmp_path):
    """A local enhancer with its global part fixed for epoch 0 and an image pool, stopped by
    SIGTERM at the end of epoch 0 (before the switch's optimizer restart) and resumed: the
    same weights, pool and optimizer state as the run that went through."""
    common = [
        *_tiny(tmp_path),
        "model.generator.name=local",
        "model.generator.ngf=2",
        "model.niter_fix_global=1",
        "model.pool_size=3",
        "dataset.load_size=128",
        "trainer.log_every_n_steps=1",
    ]
    a = run_cli(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert a.returncode == 0, a.stderr[-3000:]
    b1 = run_cli(*common, "trainer.preempt_at_step=2", f"hydra.run.dir={tmp_path / 'b'}")
    assert b1.returncode == 0, b1.stderr[-3000:]
    b2 = run_cli(*common, "resume=auto", f"hydra.run.dir={tmp_path / 'b'}")
    assert b2.returncode == 0, b2.stderr[-3000:]
    ca = load(tmp_path / "a" / "checkpoints" / "last.ckpt")
    cb = load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert ca["progress"] == cb["progress"] and ca["progress"]["global_step"] == 4
    assert ca["task"].keys() == cb["task"].keys() and int(ca["task"]["fake_pool.count"]) == 3
    for k in ca["task"]:
        assert torch.equal(ca["task"][k], cb["task"][k]), k
    for name in ("G", "D"):
        sa, sb = ca["optim"]["optimizers"][name]["state"], cb["optim"]["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k]))
    # G's moments restarted at the switch: 2 Adam steps since, for every G parameter
    steps = {int(v["step"]) for v in ca["optim"]["optimizers"]["G"]["state"].values()}
    assert steps == {2}


@pytest.mark.slow
def test_the_default_run_learns_the_synthetic_scenes(tmp_path):
    """`python run.py model=pix2pixhd` as a user types it (synthetic_pix2pixhd at 64 x 32, a
    global generator of ngf 32 / 3 downsamplings / 3 blocks, 10 epochs of 50 steps; about 2 CPU
    minutes alone, 5.5 on a shared machine): val PSNR from 10.3 dB untrained (SSIM 0.02) to 18.5
    dB measured (SSIM 0.51); the floor is 17 dB / SSIM 0.4."""
    r = run_cli(
        "model=pix2pixhd",
        "logger=none",
        "print_config=false",
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer.progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    evals = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "val/psnr" in line
    ]
    assert evals[-1]["val/psnr"] > 17.0, evals
    assert evals[-1]["val/ssim"] > 0.4, evals
    assert evals[-1]["val/fd_random"] < evals[0]["val/fd_random"]
