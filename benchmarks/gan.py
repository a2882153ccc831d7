"""GAN trainers: images/s of one training step, ours against the reference's step order run
on the same networks.

    python benchmarks/gan.py --size 256 --batches 1 4 --threads 1 --repeats 3 [--only pix2pix]

"ours" is the Task's ``training_step`` through the engine's ``Optimization`` (each backward
restricted to its own optimizer group's parameters). "reference" is the same step as
junyanz/pytorch-CycleGAN-and-pix2pix writes ``optimize_parameters``: ``set_requires_grad`` on
the discriminators, ``loss.backward()`` over the whole graph, ``optimizer.step()`` — on a deep
copy of the same networks, with the same Adam settings. Both start from equal weights; the
first step's losses are printed side by side so a reader sees the same computation ran.

Networks at the papers' sizes: pix2pix U-Net 256 + 70x70 PatchGAN (BatchNorm); CycleGAN two
ResNet-9 generators + two PatchGANs (InstanceNorm, pools of 50); pix2pixHD's global generator
(ngf 64, 36 input channels) + 2-scale discriminators with feature matching (pix2pixHD's own
train.py order: G step, then D). Prints one table (images/s).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.engine.optim import Optimization  # noqa: E402
from src.losses.cyclegan import CycleGANLoss  # noqa: E402
from src.losses.gan import Pix2PixLoss  # noqa: E402
from src.losses.pix2pixhd import Pix2PixHDLoss  # noqa: E402
from src.models.gan import build_discriminator, build_generator, build_hd_generator  # noqa: E402
from src.tasks.cyclegan import CycleGANTask  # noqa: E402
from src.tasks.pix2pix import Pix2PixTask  # noqa: E402
from src.tasks.pix2pixhd import Pix2PixHDTask  # noqa: E402

ADAM = dict(lr=2e-4, betas=(0.5, 0.999))


def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def _adam(params):
    return torch.optim.Adam(params, **ADAM)


# ---- pix2pix ------------------------------------------------------------------------------
def pix2pix_task(size):
    g = build_generator(f"unet_{min(size, 256)}", 3, 3, ngf=64, norm="batch", dropout=True)
    d = build_discriminator("basic", 6, ndf=64, norm="batch")
    return Pix2PixTask(g, d, Pix2PixLoss(), {})


def pix2pix_reference(task):
    """pix2pix_model.optimize_parameters: forward; D (requires_grad on) backward + step; D
    frozen; G backward + step."""
    g, d = copy.deepcopy(task.generator), copy.deepcopy(task.discriminator)
    opt_g, opt_d = _adam(g.parameters()), _adam(d.parameters())

    def bce(pred, real):
        return F.binary_cross_entropy_with_logits(pred, torch.full_like(pred, float(real)))

    def step(batch):
        a, b = batch["A"], batch["B"]
        fake_b = g(a)
        set_requires_grad([d], True)
        opt_d.zero_grad()
        loss_d = 0.5 * (
            bce(d(torch.cat([a, fake_b.detach()], 1)), 0) + bce(d(torch.cat([a, b], 1)), 1)
        )
        loss_d.backward()
        opt_d.step()
        set_requires_grad([d], False)
        opt_g.zero_grad()
        loss_g = bce(d(torch.cat([a, fake_b], 1)), 1) + 100.0 * (fake_b - b).abs().mean()
        loss_g.backward()
        opt_g.step()
        return {"d_loss": float(loss_d), "g_loss": float(loss_g)}

    return step


# ---- CycleGAN -----------------------------------------------------------------------------
def cyclegan_task(size):
    return CycleGANTask(
        partial(build_generator, "resnet_9blocks", 3, 3, ngf=64, norm="instance", dropout=False),
        partial(build_discriminator, "basic", 3, ndf=64, norm="instance"),
        CycleGANLoss(),
        {},
        pool_size=50,
    )


def cyclegan_reference(task):
    """cycle_gan_model.optimize_parameters: forward; D frozen; G backward + step; D unfrozen;
    D_A + D_B backward (pooled fakes) + step."""
    g_a, g_b = copy.deepcopy(task.generator_a), copy.deepcopy(task.generator_b)
    d_a, d_b = copy.deepcopy(task.discriminator_a), copy.deepcopy(task.discriminator_b)
    pool_b, pool_a = copy.deepcopy(task.fake_b_pool), copy.deepcopy(task.fake_a_pool)
    opt_g = _adam([*g_a.parameters(), *g_b.parameters()])
    opt_d = _adam([*d_a.parameters(), *d_b.parameters()])

    def mse(pred, real):
        return ((pred - float(real)) ** 2).mean()

    def step(batch):
        a, b = batch["A"], batch["B"]
        fake_b, fake_a = g_a(a), g_b(b)
        rec_a, rec_b = g_b(fake_b), g_a(fake_a)
        set_requires_grad([d_a, d_b], False)
        opt_g.zero_grad()
        idt = (g_a(b) - b).abs().mean() * 5.0 + (g_b(a) - a).abs().mean() * 5.0
        loss_g = (
            mse(d_a(fake_b), 1)
            + mse(d_b(fake_a), 1)
            + 10.0 * (rec_a - a).abs().mean()
            + 10.0 * (rec_b - b).abs().mean()
            + idt
        )
        loss_g.backward()
        opt_g.step()
        set_requires_grad([d_a, d_b], True)
        opt_d.zero_grad()
        pb, pa = pool_b(fake_b), pool_a(fake_a)
        loss_da = 0.5 * (mse(d_a(b), 1) + mse(d_a(pb.detach()), 0))
        loss_db = 0.5 * (mse(d_b(a), 1) + mse(d_b(pa.detach()), 0))
        (loss_da + loss_db).backward()
        opt_d.step()
        return {"g_loss": float(loss_g), "d_a": float(loss_da), "d_b": float(loss_db)}

    return step


# ---- pix2pixHD ----------------------------------------------------------------------------
HD_LABELS = 36  # Cityscapes: 35 label channels + the instance-edge channel


class _LabelMaps:
    """What the Task reads from its dataset to size and check the networks."""

    input_nc = HD_LABELS

    def __init__(self, size):
        self.size = size

    def output_size(self):
        return (self.size, self.size)


def pix2pixhd_task(size):
    return Pix2PixHDTask(
        partial(build_hd_generator, "global", ngf=64),
        partial(build_discriminator, "multiscale", ndf=64, num_d=2, intermediate_features=True),
        Pix2PixHDLoss(),
        {"train": _LabelMaps(size)},
    )


def pix2pixhd_reference(task):
    """pix2pixHD train.py: one forward giving both losses (D on the detached fake and the real
    pair, G through D on the fake pair), then loss_G.backward() + step G (its gradients also
    land in D, cleared by D's zero_grad), loss_D.backward() + step D."""
    g, d = copy.deepcopy(task.generator), copy.deepcopy(task.discriminator)
    opt_g, opt_d = _adam(g.parameters()), _adam(d.parameters())
    loss = task.loss

    def step(batch):
        a, b = batch["A"], batch["B"]
        fake_b = g(a)
        pred_fake_pool = d(torch.cat([a, fake_b.detach()], 1))
        pred_real = d(torch.cat([a, b], 1))
        pred_fake = d(torch.cat([a, fake_b], 1))
        loss_d = loss.discriminator(pred_real, pred_fake_pool)
        loss_g = loss.generator(pred_fake, pred_real, fake_b, b)["loss"]
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        return {"d_loss": float(loss_d), "g_loss": float(loss_g)}

    return step


TRAINERS = {
    "pix2pix": (pix2pix_task, pix2pix_reference, "U-Net 256 + PatchGAN, BN"),
    "cyclegan": (cyclegan_task, cyclegan_reference, "2 x ResNet-9 + 2 x PatchGAN, IN"),
    "pix2pixhd": (pix2pixhd_task, pix2pixhd_reference, "global G ngf 64 + 2-scale D, 36 ch in"),
}
IN_CHANNELS = {"pix2pixhd": HD_LABELS}


def ours(task):
    groups = task.optimizer_groups()
    opt = Optimization({n: _adam(p) for n, p in groups.items()}, device=torch.device("cpu"))

    def step(batch):
        out = task.training_step(batch, opt)
        opt.advance()
        return {k: float(v) for k, v in out.items()}

    return step


def timed(fn, batch, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(batch)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help=f"a subset of {list(TRAINERS)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.only or TRAINERS:
        make_task, make_reference, what = TRAINERS[name]
        for bs in args.batches:
            torch.manual_seed(0)
            task = make_task(args.size).train()
            reference = make_reference(task)  # copies the networks before our first step
            mine = ours(task)
            g = torch.Generator().manual_seed(1)
            shape = (bs, 3, args.size, args.size)
            a_shape = (bs, IN_CHANNELS.get(name, 3), args.size, args.size)
            batch = {"A": torch.rand(a_shape, generator=g) * 2 - 1}
            batch["B"] = torch.rand(shape, generator=g) * 2 - 1
            torch.manual_seed(2)
            first_ref = reference(batch)
            torch.manual_seed(2)
            first_ours = mine(batch)
            same = {k: (round(first_ref[k], 5), round(first_ours[k], 5)) for k in first_ref}
            print(f"{name} batch {bs}: first-step losses (reference, ours) {same}")
            r, o = timed(reference, batch, args.repeats), timed(mine, batch, args.repeats)
            rows.append((f"{name} ({what}), batch {bs} at {args.size}", bs / r, bs / o))
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} steps")
    print("| training step | reference step order | ours | ratio |\n|---|---|---|---|")
    for what, r, o in rows:
        print(f"| {what} | {r:.2f} img/s | {o:.2f} img/s | {o / r:.2f}x |")


if __name__ == "__main__":
    main()
