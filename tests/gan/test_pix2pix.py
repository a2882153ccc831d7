"""The pix2pix trainer: its step through the engine's Optimization against a by-hand oracle
(D first, G second, G's backward leaving D's gradients alone), test-time dropout, the size
check, predict and ONNX export, and through run.py: exact resume after SIGTERM, eval / predict
/ export on the checkpoint, the size error as one line; learning (slow)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate

from src.data.synthetic_translation import build_synthetic_pix2pix
from src.engine.checkpoint import load
from src.engine.optim import Optimization
from src.engine.seed import sample_rng
from src.losses.gan import Pix2PixLoss
from src.models.gan import GeneratorSizeError, build_discriminator, build_generator
from src.tasks.pix2pix import Pix2PixTask
from tests.conftest import compose_config, run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("p2p") / "synthetic"
    return build_synthetic_pix2pix(
        root, image_size=32, num_train=8, num_val=4, num_test=1, source_size=36
    )


def _task(data, name="unet_32", **kw):
    torch.manual_seed(0)
    return Pix2PixTask(
        build_generator(name, ngf=4),
        build_discriminator("basic", 6, ndf=4),
        Pix2PixLoss(),
        data,
        **kw,
    )


def _batch(data, n=2):
    return default_collate([data["train"].load(i, sample_rng(0, 0, i)) for i in range(n)])


def test_step_is_d_first_then_g_through_the_updated_d(data):
    task = _task(data)
    oracle = copy.deepcopy(task)
    lr = 0.05
    opt = Optimization(
        {
            "G": torch.optim.SGD(task.generator.parameters(), lr=lr),
            "D": torch.optim.SGD(task.discriminator.parameters(), lr=lr),
        },
        device=torch.device("cpu"),
    )
    calls, d_grads_after_g = [], []
    backward, step = opt.backward, opt.step

    def spy_backward(loss, name):
        calls.append(("backward", name))
        done = backward(loss, name)
        if name == "G":
            d_grads_after_g.extend(p.grad for p in task.discriminator.parameters())
            assert all(p.grad is not None for p in task.generator.parameters())
        return done

    def spy_step(name):
        calls.append(("step", name))
        return step(name)

    opt.backward, opt.step = spy_backward, spy_step
    batch = _batch(data)
    task.train()
    torch.manual_seed(1)
    out = task.training_step(batch, opt)
    assert calls == [("backward", "D"), ("step", "D"), ("backward", "G"), ("step", "G")]
    assert d_grads_after_g and all(g is None for g in d_grads_after_g)  # untouched by G's loss
    assert set(out) >= {"d_loss", "g_loss", "g_gan", "g_l1"}

    # the oracle, by hand: the reference's optimize_parameters with plain autograd and SGD
    a, b = batch["A"], batch["B"]
    g_net, d_net = oracle.generator.train(), oracle.discriminator.train()
    torch.manual_seed(1)
    fake = g_net(a)
    p_fake, p_real = d_net(torch.cat([a, fake.detach()], 1)), d_net(torch.cat([a, b], 1))
    d_loss = 0.5 * (
        F.binary_cross_entropy_with_logits(p_fake, torch.zeros_like(p_fake))
        + F.binary_cross_entropy_with_logits(p_real, torch.ones_like(p_real))
    )
    d_params = list(d_net.parameters())
    with torch.no_grad():
        for p, g in zip(d_params, torch.autograd.grad(d_loss, d_params)):
            p -= lr * g
    pred = d_net(torch.cat([a, fake], 1))  # the updated D
    g_loss = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
    g_loss = g_loss + 100 * F.l1_loss(fake, b)
    g_params = list(g_net.parameters())
    with torch.no_grad():
        for p, g in zip(g_params, torch.autograd.grad(g_loss, g_params)):
            p -= lr * g
    assert float(out["d_loss"]) == pytest.approx(float(d_loss), rel=1e-6)
    assert float(out["g_loss"]) == pytest.approx(float(g_loss), rel=1e-6)
    for (k, v), (k2, v2) in zip(task.state_dict().items(), oracle.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6, msg=k)
    # D really moved, and so did G
    fresh = _task(data)
    assert not torch.equal(fresh.discriminator.model[0].weight, task.discriminator.model[0].weight)
    assert not torch.equal(
        fresh.generator.model.model[0].weight, task.generator.model.model[0].weight
    )


def test_test_time_dropout_on_by_default_seeded_and_switchable(data):
    task = _task({}, "unet_64")  # one 8ngf block with dropout at this depth
    x = _batch(data)["A"]
    x = F.interpolate(x, size=(64, 64))
    task.eval()
    (dropout,) = [m for m in task.generator.modules() if isinstance(m, torch.nn.Dropout)]
    zeroed = []
    dropout.register_forward_hook(lambda m, i, o: zeroed.append(float((o == 0).float().mean())))
    with torch.no_grad():
        plain = task.generator(x)
        torch.manual_seed(5)
        first = task.translate(x)
        torch.manual_seed(6)  # the run's RNG does not matter: eval_seed does
        second = task.translate(x)
    assert not torch.equal(first, plain) and torch.equal(first, second)
    assert zeroed[0] < 0.01 and 0.3 < zeroed[1] < 0.7  # off in eval(), p=0.5 at test time
    assert not any(m.training for m in task.generator.modules())  # modes given back
    off = _task({}, "unet_64", test_dropout=False).eval()
    off.load_state_dict(task.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(off.translate(x), plain, rtol=0, atol=0)


def test_a_generator_that_cannot_take_the_crop_stops_at_construction(data):
    with pytest.raises(GeneratorSizeError) as e:
        _task(data, "unet_256")
    msg = str(e.value)
    assert "\n" not in msg
    assert "unet_256 cannot take 32x32 images (dataset.image_size=32)" in msg
    assert "multiples of 256" in msg and "unet_32" in msg


def test_evaluate_predict_and_export(data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    task = _task(data).eval()
    with torch.no_grad():
        metrics = task.evaluate([default_collate([data["val"].load(i, None) for i in range(4)])])
    assert set(metrics) == {"psnr", "ssim", "l1", "fd_random"}
    assert task.monitor == "val/psnr" and task.monitor_mode == "max"
    pictures = task.visualize(_batch(data))["translation"]
    assert pictures[0][0].shape == (32, 96, 3) and pictures[0][0].dtype == np.uint8
    # predict: an A picture of any size in, the translation at that size out
    src = tmp_path / "in.png"
    Image.fromarray(np.full((40, 50, 3), 255, np.uint8)).save(src)
    with torch.no_grad():
        (record,) = task.predict([src], tmp_path / "out")
    with Image.open(record["translated"]) as out:
        assert out.size == (50, 40)
    # export: onnxruntime computes what the generator computes in eval mode
    (path,) = task.export(tmp_path / "export")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 32)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x})
    with torch.no_grad():
        want = task.generator.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---- through run.py --------------------------------------------------------------------------
def _tiny(tmp_path):
    return [
        "model=pix2pix",
        "logger=none",
        "print_config=false",
        "seed=0",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.image_size=32",
        "dataset.source_size=36",
        "dataset.num_train=16",
        "dataset.num_val=4",
        "dataset.num_test=1",
        "model.generator.ngf=4",
        "model.discriminator.ndf=4",
        "model.pool_size=6",  # the image pool is in the state and must resume exactly too
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
    for k in ca["task"]:  # weights and BN statistics of both networks, the image pool
        assert torch.equal(ca["task"][k], cb["task"][k]), k
    assert int(ca["task"]["fake_pool.count"]) == 6 and ca["task"]["fake_pool.images"].shape == (
        6,
        6,
        32,
        32,
    )
    for name in ("G", "D"):
        sa, sb = ca["optim"]["optimizers"][name], cb["optim"]["optimizers"][name]
        assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
        for i in sa["state"]:
            for k in sa["state"][i]:
                assert torch.equal(
                    torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k])
                )
    # after 2 epochs the linear decay moved G's rate (constant 1 + decay 2: 1 - (2 + 1 - 1) / 3)
    # but not D's (4 + 4)
    assert ca["optim"]["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 3)
    assert ca["optim"]["optimizers"]["D"]["param_groups"][0]["lr"] == pytest.approx(2e-4)

    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ev = run_cli(*common, "mode=eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e'}")
    assert ev.returncode == 0, ev.stderr[-3000:]
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    trained = json.loads((tmp_path / "a" / "summary.json").read_text())  # the final weights
    assert summary["val/psnr"] == pytest.approx(trained["val/psnr"], rel=1e-9)
    assert {"val/psnr", "val/ssim", "val/fd_random"} <= set(summary)
    inputs = next((tmp_path / "data").glob("synthetic_pix2pix_*")) / "test"
    pr = run_cli(
        *common,
        "mode=predict",
        "model.predict_pair=true",
        f"ckpt_path={ckpt}",
        f"input={inputs}",
        f"hydra.run.dir={tmp_path / 'p'}",
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    (record,) = json.loads((tmp_path / "p" / "predictions.json").read_text())
    with Image.open(record["translated"]) as out:
        assert out.size == (36, 36)  # the A half's size
    ex = run_cli(*common, "mode=export", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'x'}")
    assert ex.returncode == 0, ex.stderr[-3000:]
    assert (tmp_path / "x" / "export" / "generator.onnx").stat().st_size > 0


def test_size_error_through_run_py_is_one_line(tmp_path):
    r = run_cli(*_tiny(tmp_path), "dataset.image_size=48", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2, r.stderr[-3000:]
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "unet_32 cannot take 48x48 images" in last
    assert "dataset.image_size=48" in last and "multiples of 32" in last
    assert not (tmp_path / "r" / "checkpoints").exists()  # stopped before training


@pytest.mark.slow
def test_the_default_run_learns_the_synthetic_translation(tmp_path):
    """`python run.py model=pix2pix` as a user types it (synthetic_pix2pix, 64 px, 8 epochs):
    val PSNR from ~10 dB untrained to above 16.5 dB (17.9 measured), SSIM above 0.7."""
    r = run_cli(
        "model=pix2pix",
        "logger=none",
        "print_config=false",
        f"paths.data_dir={tmp_path / 'data'}",
        "trainer.progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    evals = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "val/psnr" in line
    ]
    assert evals[-1]["val/psnr"] > 16.5, evals
    assert evals[-1]["val/ssim"] > 0.7, evals
    assert evals[-1]["val/psnr"] > evals[0]["val/psnr"] + 1.0
    assert evals[-1]["val/fd_random"] < evals[0]["val/fd_random"]


def test_paper_recipe_composes():
    cfg = compose_config("experiment=pix2pix_facades", check=True)
    assert cfg.model.generator.name == "unet_256" and cfg.model.discriminator.name == "basic"
    assert cfg.model.generator.norm == cfg.model.discriminator.norm == "batch"
    assert cfg.loss.gan_mode == "vanilla" and cfg.loss.lambda_l1 == 100
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 2e-4
    assert list(cfg.optimizer.betas) == [0.5, 0.999]
    assert cfg.scheduler._target_ == "src.engine.schedulers.LinearDecayLR"
    assert (cfg.scheduler.constant_epochs, cfg.scheduler.decay_epochs) == (100, 100)
    assert (cfg.trainer.batch_size, cfg.trainer.max_epochs) == (1, 200)
    assert (cfg.dataset.image_size, cfg.dataset.load_size, cfg.dataset.direction) == (
        256,
        286,
        "BtoA",
    )
