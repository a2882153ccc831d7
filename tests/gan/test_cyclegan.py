"""The CycleGAN trainer: two training steps through the engine's Optimization against an
independent port of the reference's ``optimize_parameters`` (``backward_G``,
``backward_D_basic``, ``ImagePool.query``) on seeded tiny networks in float64 (G first, then
D; each backward reaching only its own group), the loss terms one by one, the image pools in
the state dict, evaluate / visualize / predict / export, and through run.py: exact resume
after SIGTERM with the pools, eval / predict / export on the checkpoint; learning (slow)."""

from __future__ import annotations

import copy
import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate

from src.data.synthetic_translation import build_synthetic_cyclegan
from src.engine.checkpoint import load
from src.engine.optim import Optimization
from src.engine.seed import sample_rng
from src.losses.cyclegan import CycleGANLoss
from src.metrics.image_quality import FrechetDistance, RandomFeatures
from src.models.gan import GeneratorSizeError, build_discriminator, build_generator
from src.tasks.cyclegan import CycleGANTask
from src.utils.errors import UserError
from tests.conftest import compose_config, run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cyc") / "synthetic"
    return build_synthetic_cyclegan(
        root, image_size=32, num_train_a=6, num_train_b=5, num_test=4, source_size=36
    )


def _task(data, pool_size=2, gan_mode="lsgan", lambda_identity=0.5, **kw):
    torch.manual_seed(0)
    return CycleGANTask(
        partial(build_generator, "resnet_1blocks", ngf=4, norm="instance", dropout=False),
        partial(build_discriminator, "basic", 3, ndf=4, norm="instance"),
        CycleGANLoss(gan_mode, lambda_identity=lambda_identity),
        data,
        pool_size=pool_size,
        **kw,
    )


def _batch(data, n=2, epoch=0):
    return default_collate([data["train"].load(i, sample_rng(0, epoch, i)) for i in range(n)])


# ---- an independent port of the reference (cycle_gan_model.py, image_pool.py) ----------------
class RefPool:
    """``ImagePool.query`` as the reference writes it (a list; torch's RNG)."""

    def __init__(self, size):
        self.size, self.images = size, []

    def query(self, images):
        out = []
        for image in images:
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(()).item() > 0.5:
                k = torch.randint(0, self.size, ()).item()
                out.append(self.images[k].clone())
                self.images[k] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


def _gan(pred, real, mode):
    target = torch.full_like(pred, 1.0 if real else 0.0)
    if mode == "lsgan":
        return ((pred - target) ** 2).mean()
    return F.binary_cross_entropy_with_logits(pred, target)


def reference_step(nets, pools, real_a, real_b, lr, mode="lsgan", lam_a=10.0, lam_b=10.0, idt=0.5):
    """One ``optimize_parameters`` with plain autograd and SGD: forward, backward_G, step G,
    backward_D_A + backward_D_B, step D. Returns the loss terms."""
    g_a, g_b, d_a, d_b = nets
    fake_b = g_a(real_a)
    rec_a = g_b(fake_b)
    fake_a = g_b(real_b)
    rec_b = g_a(fake_a)
    terms = {}
    if idt > 0:
        terms["idt_a"] = (g_a(real_b) - real_b).abs().mean() * lam_b * idt
        terms["idt_b"] = (g_b(real_a) - real_a).abs().mean() * lam_a * idt
    terms["g_a"] = _gan(d_a(fake_b), True, mode)
    terms["g_b"] = _gan(d_b(fake_a), True, mode)
    terms["cycle_a"] = (rec_a - real_a).abs().mean() * lam_a
    terms["cycle_b"] = (rec_b - real_b).abs().mean() * lam_b
    loss_g = sum(terms.values())
    g_params = [*g_a.parameters(), *g_b.parameters()]
    grads = torch.autograd.grad(loss_g, g_params)
    with torch.no_grad():
        for p, g in zip(g_params, grads):
            p -= lr * g

    def backward_d_basic(net, real, fake):
        return (_gan(net(real), True, mode) + _gan(net(fake.detach()), False, mode)) * 0.5

    terms["d_a"] = backward_d_basic(d_a, real_b, pools[0].query(fake_b.detach()))
    terms["d_b"] = backward_d_basic(d_b, real_a, pools[1].query(fake_a.detach()))
    d_params = [*d_a.parameters(), *d_b.parameters()]
    grads = torch.autograd.grad(terms["d_a"] + terms["d_b"], d_params)
    with torch.no_grad():
        for p, g in zip(d_params, grads):
            p -= lr * g
    terms["g_loss"] = loss_g
    return {k: float(v.detach()) for k, v in terms.items()}


def _sgd_opt(task, lr):
    return Optimization(
        {
            "G": torch.optim.SGD(task.optimizer_groups()["G"], lr=lr),
            "D": torch.optim.SGD(task.optimizer_groups()["D"], lr=lr),
        },
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("gan_mode,lambda_identity", [("lsgan", 0.5), ("vanilla", 0.0)])
def test_two_steps_equal_the_reference_g_first_then_d(data, gan_mode, lambda_identity):
    """float64, pools of 2 with batches of 2: the second step's D sees pooled fakes (torch RNG
    draws in the reference's order: fake B's pool, then fake A's)."""
    task = _task(data, pool_size=2, gan_mode=gan_mode, lambda_identity=lambda_identity).double()
    oracle = copy.deepcopy(task)
    nets = (oracle.generator_a, oracle.generator_b, oracle.discriminator_a, oracle.discriminator_b)
    pools = (RefPool(2), RefPool(2))
    lr = 0.05
    opt = _sgd_opt(task, lr)
    g_params = set(map(id, task.optimizer_groups()["G"]))
    d_params = set(map(id, task.optimizer_groups()["D"]))
    calls, leaks = [], []
    backward, step = opt.backward, opt.step

    def spy_backward(loss, name):
        calls.append(("backward", name))
        done = backward(loss, name)
        own, other = (g_params, d_params) if name == "G" else (d_params, g_params)
        for p in task.parameters():
            if id(p) in other and p.grad is not None:
                leaks.append(name)
            if id(p) in own:
                assert p.grad is not None
        return done

    def spy_step(name):
        calls.append(("step", name))
        return step(name)

    opt.backward, opt.step = spy_backward, spy_step
    task.train()
    for epoch in range(2):
        batch = _batch(data, 2, epoch)
        a, b = batch["A"].double(), batch["B"].double()
        torch.manual_seed(10 + epoch)
        out = task.training_step({"A": a, "B": b}, opt)
        torch.manual_seed(10 + epoch)
        want = reference_step(nets, pools, a, b, lr, gan_mode, idt=lambda_identity)
        got = {k: float(v) for k, v in out.items()}
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-10, abs=1e-12), k
    assert calls == [("backward", "G"), ("step", "G"), ("backward", "D"), ("step", "D")] * 2
    assert not leaks  # G's loss left D's gradients alone, D's loss G's
    assert ("idt_a" in out) == (lambda_identity > 0)
    mine = {k: v for k, v in task.state_dict().items() if "pool" not in k}
    theirs = {k: v for k, v in oracle.state_dict().items() if "pool" not in k}
    assert mine.keys() == theirs.keys()
    for k in mine:  # the four networks after two steps each
        torch.testing.assert_close(mine[k], theirs[k], rtol=1e-10, atol=1e-12, msg=k)
    # the pools hold what the reference's lists hold
    for pool, ref in zip((task.fake_b_pool, task.fake_a_pool), pools):
        assert int(pool.count) == 2
        torch.testing.assert_close(pool.images, torch.cat(ref.images), rtol=1e-10, atol=1e-12)
    # every network moved
    fresh = _task(data).double()
    for name in task.ddp_modules:
        before = next(getattr(fresh, name).parameters())
        assert not torch.equal(before, next(getattr(task, name).parameters())), name


def test_loss_weights_and_groups(data):
    loss = CycleGANLoss()
    assert loss.gan.mode == "lsgan"
    assert (loss.lambda_a, loss.lambda_b, loss.lambda_identity) == (10.0, 10.0, 0.5)
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    one = torch.ones_like(x)
    pred = torch.ones(1, 1, 2, 2, dtype=torch.float64)  # D says "real": no GAN loss
    out = loss.generator(pred, pred, x, x, x, x, idt_a=x, idt_b=one)
    # identity of B -> A off by 1 everywhere: weight lambda_a * 0.5 = 5
    assert float(out["idt_b"]) == pytest.approx(5.0) and float(out["loss"]) == pytest.approx(5.0)
    assert float(loss.discriminator(pred, pred)) == pytest.approx(0.5)  # 0.5 * (0 + 1)
    with pytest.raises(UserError, match="ragan_ls"):
        CycleGANLoss("ragan_ls")
    task = _task(data)
    groups = task.optimizer_groups()
    ids = {n: [id(p) for p in ps] for n, ps in groups.items()}
    assert ids["G"] == [
        id(p) for n in ("generator_a", "generator_b") for p in getattr(task, n).parameters()
    ]
    assert ids["D"] == [
        id(p) for n in ("discriminator_a", "discriminator_b") for p in getattr(task, n).parameters()
    ]
    assert sorted(ids["G"] + ids["D"]) == sorted(id(p) for p in task.parameters())
    # four networks, each its own initialisation
    assert not torch.equal(next(task.generator_a.parameters()), next(task.generator_b.parameters()))
    assert task.ddp_modules == ("generator_a", "generator_b", "discriminator_a", "discriminator_b")


def test_identity_off_skips_the_identity_forwards(data):
    task = _task(data, lambda_identity=0.0)
    calls = []
    for name in ("generator_a", "generator_b"):
        getattr(task, name).register_forward_hook(lambda m, i, o, n=name: calls.append(n))
    task.training_step(_batch(data), _sgd_opt(task, 0.01))
    assert calls == ["generator_a", "generator_b", "generator_b", "generator_a"]


def test_pools_are_in_the_state_dict_and_resume_exactly(data):
    task = _task(data, pool_size=3)
    opt = _sgd_opt(task, 0.01)
    torch.manual_seed(3)
    for epoch in range(2):  # 4 images into pools of 3: full
        task.training_step(_batch(data, 2, epoch), opt)
    state, rng = task.state_dict(), torch.get_rng_state()
    assert int(state["fake_a_pool.count"]) == int(state["fake_b_pool.count"]) == 3
    assert state["fake_b_pool.images"].shape == (3, 3, 32, 32)
    fresh = _task(data, pool_size=3)
    fresh.load_state_dict(state, strict=True)
    fakes = torch.randn(6, 3, 32, 32)
    torch.set_rng_state(rng)
    want = [task.fake_b_pool(fakes), task.fake_a_pool(fakes)]
    torch.set_rng_state(rng)
    got = [fresh.fake_b_pool(fakes), fresh.fake_a_pool(fakes)]
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert any(not torch.equal(w, fakes) for w in want)  # some came from the history


def test_configuration_errors_are_one_line(data):
    with pytest.raises(UserError, match="_partial_: true"):
        CycleGANTask(
            build_generator("resnet_1blocks", ngf=4),
            partial(build_discriminator, "basic", 3, ndf=4),
            CycleGANLoss(),
            data,
        )
    with pytest.raises(UserError, match="direction"):
        _task(data, direction="AtoC")
    odd = build_synthetic_cyclegan(
        next(iter(data.values())).files_a[0].parents[1],
        image_size=30,
        num_train_a=6,
        num_train_b=5,
        num_test=4,
        source_size=36,
    )
    with pytest.raises(GeneratorSizeError) as e:
        _task(odd)
    assert "\n" not in str(e.value)
    assert "resnet_1blocks cannot take 30x30 images (dataset.image_size=30)" in str(e.value)


def test_evaluate_visualize_predict_and_export(data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    task = _task(data).eval()
    batch = default_collate([data["val"].load(i, None) for i in range(4)])
    with torch.no_grad():
        metrics = task.evaluate([batch])
    assert set(metrics) == {
        "fd_random",
        "fd_random_AtoB",
        "fd_random_BtoA",
        *(f"cycle_{k}_{d}" for k in ("psnr", "ssim", "l1") for d in "AB"),
    }
    assert task.monitor == "val/fd_random" and task.monitor_mode == "min"
    # the values, by hand from the generators (G_A: A -> B, G_B: B -> A)
    with torch.no_grad():
        a, b = batch["A"], batch["B"]
        fake_b, fake_a = task.generator_a(a), task.generator_b(b)
        rec_a = task.generator_b(fake_b)
        fd_ab, fd_ba = FrechetDistance(RandomFeatures(0)), FrechetDistance(RandomFeatures(0))
        fd_ab.update(fake_b, b)
        fd_ba.update(fake_a, a)
    assert metrics["fd_random_AtoB"] == pytest.approx(fd_ab.compute(), rel=1e-9)
    assert metrics["fd_random_BtoA"] == pytest.approx(fd_ba.compute(), rel=1e-9)
    mse = (((rec_a + 1) / 2 - (a + 1) / 2) ** 2).double().flatten(1).mean(1)
    assert metrics["cycle_psnr_A"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()))
    assert metrics["cycle_l1_A"] == pytest.approx(float((rec_a - a).abs().mean()), rel=1e-5)
    assert metrics["fd_random"] == pytest.approx(
        (metrics["fd_random_AtoB"] + metrics["fd_random_BtoA"]) / 2
    )
    pictures = task.visualize(batch)
    assert set(pictures) == {"AtoB", "BtoA"} and len(pictures["AtoB"]) == 4
    picture, caption = pictures["BtoA"][0]
    assert picture.shape == (32, 96, 3) and picture.dtype == np.uint8
    assert caption == "B | fake A | rec B"
    np.testing.assert_array_equal(
        picture[:, :32], ((b[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    )

    # predict: an image of any size in, the translation at that size out; direction picks G
    src = tmp_path / "in.png"
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(src)
    outs = {}
    for direction in ("AtoB", "BtoA"):
        task.direction = direction
        with torch.no_grad():
            (record,) = task.predict([src], tmp_path / direction)
        assert record["direction"] == direction
        with Image.open(record["translated"]) as out:
            assert out.size == (50, 40)
            outs[direction] = np.asarray(out)
    assert not np.array_equal(outs["AtoB"], outs["BtoA"])

    # export: the chosen generator; onnxruntime computes what it computes
    for direction, net in (("AtoB", task.generator_a), ("BtoA", task.generator_b)):
        task.direction = direction
        (path,) = task.export(tmp_path / "export")
        assert path.name == f"generator_{direction}.onnx"
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 48)).astype(np.float32)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"images": x})
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


# ---- through run.py --------------------------------------------------------------------------
def _tiny(tmp_path):
    return [
        "model=cyclegan",
        "logger=none",
        "print_config=false",
        "seed=0",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.image_size=32",
        "dataset.source_size=36",
        "dataset.num_train_a=16",
        "dataset.num_train_b=12",
        "dataset.num_test=4",
        "model.generator.name=resnet_1blocks",
        "model.generator.ngf=4",
        "model.discriminator.ndf=4",
        "model.pool_size=6",  # fills within two steps, then swaps: must resume exactly
        "trainer.batch_size=4",
        "trainer.max_epochs=3",
        "trainer.max_steps=10",
        "trainer.num_workers=0",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "scheduler.groups.G.constant_epochs=1",
        "scheduler.groups.G.decay_epochs=2",
    ]


def test_resume_after_sigterm_is_exact_and_modes_work_on_the_checkpoint(tmp_path):
    common = _tiny(tmp_path)
    a = run_cli(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert a.returncode == 0, a.stderr[-3000:]
    b1 = run_cli(*common, "trainer.preempt_at_step=6", f"hydra.run.dir={tmp_path / 'b'}")
    assert b1.returncode == 0, b1.stderr[-3000:]
    assert load(tmp_path / "b" / "checkpoints" / "last.ckpt")["progress"]["global_step"] == 6
    b2 = run_cli(*common, "resume=auto", f"hydra.run.dir={tmp_path / 'b'}")
    assert b2.returncode == 0, b2.stderr[-3000:]
    ca = load(tmp_path / "a" / "checkpoints" / "last.ckpt")
    cb = load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert ca["progress"] == cb["progress"] and ca["progress"]["global_step"] == 10
    assert ca["optim"]["updates"] == cb["optim"]["updates"] == {"G": 10, "D": 10}
    assert ca["task"].keys() == cb["task"].keys()
    for k in ca["task"]:  # the four networks and both image pools
        assert torch.equal(ca["task"][k], cb["task"][k]), k
    for pool in ("fake_a_pool", "fake_b_pool"):
        assert int(ca["task"][f"{pool}.count"]) == 6
        assert ca["task"][f"{pool}.images"].shape == (6, 3, 32, 32)
    for name in ("G", "D"):
        sa, sb = ca["optim"]["optimizers"][name], cb["optim"]["optimizers"][name]
        assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
        assert len(sa["state"]) == len(sb["state"]) > 0
        for i in sa["state"]:
            for k in sa["state"][i]:
                assert torch.equal(
                    torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k])
                )
    # 16 A images / batch 4: epochs of 4 steps; after 2 epochs G's rate decayed, D's not
    assert ca["optim"]["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 3)
    assert ca["optim"]["optimizers"]["D"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert ca["optim"]["optimizers"]["G"]["param_groups"][0]["betas"] == (0.5, 0.999)

    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ev = run_cli(*common, "mode=eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    trained = json.loads((tmp_path / "a" / "summary.json").read_text())  # the final weights
    assert summary["val/fd_random"] == pytest.approx(trained["val/fd_random"], rel=1e-9)
    assert {"val/cycle_psnr_A", "val/cycle_psnr_B", "val/fd_random_BtoA"} <= set(summary)
    inputs = next((tmp_path / "data").glob("synthetic_cyclegan_*")) / "testB"
    pr = run_cli(
        *common,
        "mode=predict",
        "model.direction=BtoA",
        f"ckpt_path={ckpt}",
        f"input={inputs}",
        f"hydra.run.dir={tmp_path / 'p'}",
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    records = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert len(records) == 4 and all(r["direction"] == "BtoA" for r in records)
    with Image.open(records[0]["translated"]) as out:
        assert out.size == (36, 36)
    ex = run_cli(*common, "mode=export", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'x'}")
    assert ex.returncode == 0, ex.stderr[-3000:]
    assert (tmp_path / "x" / "export" / "generator_AtoB.onnx").stat().st_size > 0


@pytest.mark.slow
def test_the_default_run_learns_the_synthetic_translation(tmp_path):
    """`python run.py model=cyclegan` as a user types it (synthetic_cyclegan, 64 px, ngf 16,
    3 blocks, batch 4, 6 epochs: about 3.5 minutes on 2 busy CPU cores). On the 16 + 16 val
    images, fd_random of the identity map (doing nothing: A against B) is 165 and of an
    untrained G_A 196; measured after training: 10.6 (A -> B) and 13.9 (B -> A), the mean
    down from 25.6 after the first epoch to 12.2; cycle PSNR 21.4 / 21.0 dB (untrained about
    10 dB). Floors: each direction under 0.15 x the identity map's, the mean under 0.7 x the
    first evaluation's, cycle PSNR above 18.5 dB."""
    r = run_cli(
        "model=cyclegan",
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
        if "val/fd_random" in line
    ]
    # the identity map's score on the same val images, through the same reader and features
    val = build_synthetic_cyclegan(next((tmp_path / "data").glob("synthetic_cyclegan_*")))["val"]
    images = default_collate([val.load(i, None) for i in range(len(val))])
    fd = FrechetDistance(RandomFeatures(0))
    fd.update(images["A"], images["B"])
    identity = fd.compute()
    last = evals[-1]
    assert identity > 100, identity  # the two domains are far apart for these features
    assert last["val/fd_random_AtoB"] < 0.15 * identity, (identity, evals)
    assert last["val/fd_random_BtoA"] < 0.15 * identity, (identity, evals)
    assert last["val/fd_random"] < 0.7 * evals[0]["val/fd_random"], evals
    assert last["val/cycle_psnr_A"] > 18.5 and last["val/cycle_psnr_B"] > 18.5, evals


def test_paper_recipe_composes():
    cfg = compose_config("experiment=cyclegan_horse2zebra", check=True)
    g, d = cfg.model.generator, cfg.model.discriminator
    assert (g.name, g.ngf, g.norm, g.dropout) == ("resnet_9blocks", 64, "instance", False)
    assert (d.name, d.ndf, d.norm, d.input_nc) == ("basic", 64, "instance", 3)
    assert cfg.model.pool_size == 50
    assert cfg.loss.gan_mode == "lsgan"
    assert (cfg.loss.lambda_a, cfg.loss.lambda_b, cfg.loss.lambda_identity) == (10, 10, 0.5)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 2e-4
    assert list(cfg.optimizer.betas) == [0.5, 0.999]
    assert cfg.scheduler._target_ == "src.engine.schedulers.LinearDecayLR"
    assert (cfg.scheduler.constant_epochs, cfg.scheduler.decay_epochs) == (100, 100)
    assert (cfg.trainer.batch_size, cfg.trainer.max_epochs) == (1, 200)
    assert (cfg.dataset.image_size, cfg.dataset.load_size) == (256, 286)
    assert cfg.dataset._target_ == "src.data.image_translation.build_unpaired_images"
