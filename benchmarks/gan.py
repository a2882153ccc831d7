"""GAN trainers: images/s of one training step, ours against the reference's step order run
on the same networks.

    python benchmarks/gan.py --size 256 --batches 1 4 --threads 1 --repeats 3 [--only pix2pix]
    python benchmarks/gan.py --size 64 --batches 1 --repeats 1   # a quick check of every row

"ours" is the Task's ``training_step`` through the engine's ``Optimization`` (each backward
restricted to its own optimizer group's parameters), its optimizers built by the engine's
``build_optimizers`` (so its default implementation: fused Adam), in a process with the
engine's default ``trainer.host_allocator=keep``. "reference" is the same step as
junyanz/pytorch-CycleGAN-and-pix2pix writes ``optimize_parameters``: ``set_requires_grad`` on
the discriminators, ``loss.backward()`` over the whole graph, ``optimizer.step()`` (torch's
default on CPU: the per-parameter loop), with the same settings, in a process with glibc's
own allocator settings, as the reference repos run (``--reference-allocator`` /
``--ours-allocator`` change either; equal modes share one process). Each side builds the same
networks from one seed, so both start from equal weights; the first step's losses are printed
side by side so a reader sees the same computation ran. The two worker processes
(benchmarks/_workers.py) are timed round-robin, one call of each phase per round.

Networks at the papers' sizes: pix2pix U-Net 256 + 70x70 PatchGAN (BatchNorm); CycleGAN two
ResNet-9 generators + two PatchGANs (InstanceNorm, pools of 50); pix2pixHD's global generator
(ngf 64, 36 input channels) + 2-scale discriminators with feature matching (pix2pixHD's own
train.py order: G step, then D).

GAN-II trainers (each a timed *cycle* of the Task's schedule, images/s = real images consumed):

* ``wgan``: DCGAN G + BatchNorm critic at 64 px (ngf = ndf = 64, nz 100), RMSprop 5e-5, clipping
  +-0.01. One cycle after the warm-up (generator update 25: 5 critic updates, then 1 generator
  update) = 5 ``training_step`` calls, 5 batches. Reference: martinarjovsky/WassersteinGAN
  ``main.py`` (two backwards per critic update, ``requires_grad`` toggled around the G step),
  written in the Task's sign convention (real high) and clamping after each critic update as the
  Task does (the reference clamps before, which leaves its G step facing the unclamped critic;
  same cost).
* ``wgan_gp``: the same with a LayerNorm critic, Adam 1e-4 (0, 0.9), the per-sample gradient
  penalty; reference: the common PyTorch port of igul222/improved_wgan_training (D_real, D_fake
  and the penalty each ``backward()``ed on their own, ``autograd.grad(create_graph=True)``).
* ``deblurgan``: ResNet-9 (ngf 64, instance norm, dropout) + PatchGAN critic at ``--size``, one
  ``training_step`` = 5 WGAN-GP critic updates on ``G(blurred)`` + 1 generator update (KupynOrest
  ``optimize_parameters``); content L1 x 100 (no VGG19 file here, in both).
* ``deblurgan_v2``: FPN on MobileNet-v2 (``pretrained=False``, backbone trainable: after the
  warm-up) + patch (n_layers 3) and full (n_layers 5) critics, RaGAN-LS on batch means, adv
  lambda 0.001, content L1 (no VGG19 file); one ``training_step`` = 1 critic + 1 generator update.
  Reference: VITA-Group ``train.py`` (no ``requires_grad`` toggling: its G backward also fills
  the critics' gradients, and its G loss runs the critics on the sharp images with gradient).
* ``dpe``: two DPE generators (ngf 16) + two critics (ndf 16, instance norm) at ``--size``
  (at least 128: at batch 1 the global branch's batch norm needs 2x2 maps)
  (``global_kernel = size / 64``, ``head_kernel = size / 32``: the authors' 8 / 16 at 512 px),
  Adam 1e-5, the authors' schedule of 50 critic updates per generator update. A cycle is one
  step with the generator update + 49 critic-only steps; it is timed as ``t(critic + G step) +
  49 x t(critic step)`` (each a median of ``--repeats``; a 50-step cycle at 256 px would take
  minutes), the Task's counter set for each kind. Reference: the authors' loop in plain torch
  (each critic forward on real, fake and interpolates apart, the adaptive lambdas as host
  floats).

``gradient_penalty``: one critic step of WGAN-GP alone on the DCGAN critic (LayerNorm) at
``--gp-batch`` (64) x 64 px: critic loss + ``src.losses.gan.gradient_penalty``, double backward
to the critic's parameters, against the plain composite (interpolate, critic forward,
``torch.autograd.grad(create_graph=True)``, norm, square, mean, backward) written here; the
penalty values and every parameter gradient are checked equal before timing.

Prints one table (images/s) and, per row, the first cycle's losses side by side.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._workers import Workers, serve  # noqa: E402
from src.engine.host_memory import MODES  # noqa: E402
from src.engine.optim import Optimization, build_optimizers  # noqa: E402
from src.losses.cyclegan import CycleGANLoss  # noqa: E402
from src.losses.deblurgan import DeblurGANLoss, DeblurGANv2Loss  # noqa: E402
from src.losses.dpe import DPELoss  # noqa: E402
from src.losses.gan import Pix2PixLoss  # noqa: E402
from src.losses.pix2pixhd import Pix2PixHDLoss  # noqa: E402
from src.losses.wgan import WGANGPLoss, WGANLoss  # noqa: E402
from src.models.gan import build_discriminator, build_generator, build_hd_generator  # noqa: E402
from src.models.gan.dcgan import DCGANCritic, DCGANGenerator  # noqa: E402
from src.models.gan.deblurgan import build_deblurgan_generator, build_patch_critic  # noqa: E402
from src.models.gan.dpe import DPECritic, DPEGenerator  # noqa: E402
from src.models.gan.fpn import build_fpn_generator  # noqa: E402
from src.tasks.cyclegan import CycleGANTask  # noqa: E402
from src.tasks.deblurgan import DeblurGANTask, DeblurGANv2Task  # noqa: E402
from src.tasks.dpe import DPETask  # noqa: E402
from src.tasks.pix2pix import Pix2PixTask  # noqa: E402
from src.tasks.pix2pixhd import Pix2PixHDTask  # noqa: E402
from src.tasks.wgan import WGANGPTask, WGANTask  # noqa: E402

_adam = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))  # junyanz: G and D


def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


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
        return {"d_loss": float(loss_d.detach()), "g_loss": float(loss_g.detach())}

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
        return {
            "g_loss": float(loss_g.detach()),
            "d_a": float(loss_da.detach()),
            "d_b": float(loss_db.detach()),
        }

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
        return {"d_loss": float(loss_d.detach()), "g_loss": float(loss_g.detach())}

    return step


# ---- WGAN / WGAN-GP -----------------------------------------------------------------------
DCGAN_SIZE = 64  # the papers' (LSUN bedrooms / CelebA at 64 px), whatever --size says
N_CRITIC = 5  # critic updates per generator update after the warm-up
RMSPROP = partial(torch.optim.RMSprop, lr=5e-5)  # WassersteinGAN main.py
ADAM_GP = partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.9))  # Gulrajani et al.


def plain_penalty(critic, real, fake, alpha, lambda_gp=10.0):
    """The composite the PyTorch WGAN-GP ports write: interpolate, critic forward,
    ``autograd.grad(create_graph=True)``, per-sample L2 norm, ``(norm - 1)^2``, mean."""
    x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(
        out, x, grad_outputs=torch.ones_like(out), create_graph=True, retain_graph=True
    )
    return lambda_gp * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def wgan_task(size, gp=False):
    g = DCGANGenerator(DCGAN_SIZE, nz=100, ngf=64, norm="batch")
    d = DCGANCritic(DCGAN_SIZE, ndf=64, norm="layer" if gp else "batch")
    task = (WGANGPTask if gp else WGANTask)(g, d, WGANGPLoss() if gp else WGANLoss(), {})
    task.gen_iterations.fill_(25)  # past the warm-up (100 critic updates for G updates 0..24)
    assert task.critic_target() == N_CRITIC
    return task


def wgan_reference(task, optimizer):
    """WassersteinGAN main.py (WGAN-GP: the PyTorch port of Gulrajani et al.'s): N_CRITIC
    critic updates, each on a fresh batch (here the same one) with ``D(real)``, ``D(fake)``
    (and the penalty) backwarded one by one, then ``requires_grad=False`` on the critic and one
    generator update on fresh noise. Signs as the Task (the critic scores real images high);
    clipping after each critic update, as the Task (the reference: before each)."""
    g, d = copy.deepcopy(task.generator), copy.deepcopy(task.critic)
    opt_g, opt_d = optimizer(g.parameters()), optimizer(d.parameters())
    gp, clip, nz = isinstance(task, WGANGPTask), task.clip_value, task.nz

    def step(batch):
        real = batch["image"]
        b, out = len(real), {}
        set_requires_grad([d], True)
        for i in range(N_CRITIC):
            opt_d.zero_grad()
            with torch.no_grad():
                fake = g(torch.randn(b, nz))
            d_real = d(real).mean()
            (-d_real).backward()
            d_fake = d(fake).mean()
            d_fake.backward()
            loss_d = d_fake - d_real
            if gp:
                penalty = plain_penalty(d, real, fake, torch.rand(b, 1, 1, 1))
                penalty.backward()
                loss_d = loss_d + penalty
            opt_d.step()
            if clip:
                with torch.no_grad():
                    for p in d.parameters():
                        p.clamp_(-clip, clip)
            out["d_loss" if i == 0 else "d_loss_last"] = loss_d.detach()
        set_requires_grad([d], False)
        opt_g.zero_grad()
        loss_g = -d(g(torch.randn(b, nz))).mean()
        loss_g.backward()
        opt_g.step()
        out["g_loss"] = loss_g.detach()
        return {k: float(v) for k, v in out.items()}

    return step


# ---- DeblurGAN v1 / v2 --------------------------------------------------------------------
ADAM_DEBLUR = partial(torch.optim.Adam, lr=1e-4, betas=(0.5, 0.999))  # KupynOrest/DeblurGAN
ADAM_V2 = partial(torch.optim.Adam, lr=1e-4)  # DeblurGANv2 config.yaml


def deblurgan_task(size):
    g = build_deblurgan_generator(3, 3, ngf=64, n_blocks=9, norm="instance", dropout=True)
    d = build_patch_critic(3, ndf=64, n_layers=3, norm="instance")
    return DeblurGANTask(g, d, DeblurGANLoss(), {})


def deblurgan_reference(task, optimizer):
    """conditional_gan_model.optimize_parameters: ``fake = G(blurred)``; critic_updates x (D
    zero_grad, ``D(fake.detach()) - D(sharp) + GP``, ``backward(retain_graph=True)``, step);
    G: ``-D(fake) + 100 x content`` backward (no requires_grad toggling) + step."""
    g, d = copy.deepcopy(task.generator), copy.deepcopy(task.discriminator)
    opt_g, opt_d = optimizer(g.parameters()), optimizer(d.parameters())
    n, lam = task.critic_updates, task.loss.lambda_content

    def step(batch):
        a, b = batch["A"], batch["B"]
        fake = g(a)
        for _ in range(n):
            opt_d.zero_grad()
            loss_d = d(fake.detach()).mean() - d(b).mean()
            loss_d = loss_d + plain_penalty(d, b, fake, torch.rand(len(b), 1, 1, 1))
            loss_d.backward(retain_graph=True)
            opt_d.step()
        opt_g.zero_grad()
        loss_g = -d(fake).mean() + lam * (fake - b).abs().mean()
        loss_g.backward()
        opt_g.step()
        return {"d_loss": float(loss_d.detach()), "g_loss": float(loss_g.detach())}

    return step


def deblurgan_v2_task(size):
    g = build_fpn_generator("mobilenetv2_100", 64, 128, norm="instance", pretrained=False)
    patch = build_patch_critic(3, ndf=64, n_layers=3, norm="instance")
    full = build_patch_critic(3, ndf=64, n_layers=5, norm="instance")
    return DeblurGANv2Task(g, patch, full, DeblurGANv2Loss(), {})


def ragan_ls(x, y):
    """``(mean((x - mean(y) - 1)^2) + mean((y - mean(x) + 1)^2)) / 2`` (critic: x real, y
    fake; generator: x fake, y real)."""
    return (((x - y.mean() - 1) ** 2).mean() + ((y - x.mean() + 1) ** 2).mean()) / 2


def deblurgan_v2_reference(task, optimizer):
    """DeblurGANv2 train.py ``_run_epoch``: ``fake = G(blurred)``; ``_update_d``: one Adam over
    both critics, ``adv_lambda x mean(critic losses)`` backward(retain_graph=True) + step; G:
    content + ``adv_lambda x mean(G losses)`` (each critic run on fake, then sharp, with
    gradient) backward + step. RaGAN-LS on the batch means (the Task's; the reference's pools
    of 50 hold just this batch on the first step)."""
    g = copy.deepcopy(task.generator)
    critics = [copy.deepcopy(task.patch_discriminator), copy.deepcopy(task.full_discriminator)]
    opt_g = optimizer(g.parameters())
    opt_d = optimizer([p for c in critics for p in c.parameters()])
    lam = task.loss.adv_lambda

    def step(batch):
        a, b = batch["A"], batch["B"]
        fake = g(a)
        opt_d.zero_grad()
        loss_d = 0.0
        for c in critics:
            pred_fake = c(fake.detach())
            loss_d = loss_d + ragan_ls(c(b), pred_fake)
        loss_d = lam * loss_d / len(critics)
        loss_d.backward(retain_graph=True)
        opt_d.step()
        opt_g.zero_grad()
        adv = 0.0
        for c in critics:
            pred_fake = c(fake)
            adv = adv + ragan_ls(pred_fake, c(b))
        loss_g = (fake - b).abs().mean() + lam * adv / len(critics)
        loss_g.backward()
        opt_g.step()
        return {"d_loss": float(loss_d.detach()), "g_loss": float(loss_g.detach())}

    return step


# ---- DPE ----------------------------------------------------------------------------------
ADAM_DPE = partial(torch.optim.Adam, lr=1e-5, betas=(0.9, 0.999))  # experiment=dpe_fivek


def dpe_task(size):
    gen = partial(DPEGenerator, ngf=16, global_kernel=max(1, size // 64))
    crit = partial(DPECritic, ndf=16, head_kernel=max(1, size // 32), norm="instance")
    return DPETask(gen, crit, DPELoss(), {}, critic_steps=50)


def dpe_cycle(task):
    every = int(task.critic_every)
    return [("G", 1), ("D", every - 1)]


def dpe_phases(task, step):
    """Our step with the Task's critic counter set first: 0 (this step updates the
    generators too) or 1 (critics only)."""

    def at(count):
        def run(batch):
            task.critic_count.fill_(count)
            task._schedule = None  # the Task's host copy of its counters: re-read the buffer
            return step(batch)

        return run

    return {"G": at(0), "D": at(1)}


def dpe_reference(task, optimizer):
    """The authors' loop in plain torch: every step one update of both critics (``D(fake) -
    D(real) + lambda x mean(max(0, 2 ||grad|| - 1))``, real, fake and interpolates in three
    forwards), then the A-WGAN lambda rule on host floats; on generator steps
    ``requires_grad=False`` on the critics, the two generators' fakes and cycles (domain 1),
    ``-D_Y(G_X(x)) - D_X(G_Y(y)) + 1e3 x identity + 1e4 x cycle`` (MSEs on [0, 1]) backward +
    step. Returns ``{"G": step with the generator update, "D": critic-only step}``."""
    gx, gy = copy.deepcopy(task.generator_x), copy.deepcopy(task.generator_y)
    dy, dx = copy.deepcopy(task.critic_y), copy.deepcopy(task.critic_x)
    opt_g = optimizer([*gx.parameters(), *gy.parameters()])
    opt_d = optimizer([*dy.parameters(), *dx.parameters()])
    loss, rule = task.loss, task.loss.lambda_x
    lam = {k: {"value": float(loss.lambda_x.value), "avg": 0.0, "wait": 0, "n": 0} for k in "xy"}

    def adapt(state, penalty):  # A-WGAN: moving average; x factor above the bound
        if state["n"] >= rule.ignore:
            state["avg"] = rule.decay * state["avg"] + (1 - rule.decay) * penalty
        if state["wait"] == 0 and state["avg"] > rule.bound:
            state.update(value=state["value"] * rule.factor, avg=0.0, wait=rule.cooldown_updates)
        state["wait"] = max(state["wait"] - 1, 0)
        state["n"] += 1

    def critic_loss(d, real, fake, weight):
        alpha = torch.rand(len(real), 1, 1, 1)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        s_real, s_fake, s_hat = d(real), d(fake), d(x_hat)
        (grad,) = torch.autograd.grad(s_hat.sum(), x_hat, create_graph=True)
        penalty = torch.relu(2 * grad.flatten(1).norm(2, dim=1) - 1).mean()  # d/d[0, 1] image
        return s_fake.mean() - s_real.mean() + weight * penalty, penalty

    def mse01(a, b):
        return ((a - b) ** 2).mean() / 4

    def step(batch, generator):
        x, y = batch["A"], batch["B"]
        with torch.no_grad():
            fake_y, fake_x = gx(x), gy(y)
        opt_d.zero_grad()
        loss_y, p_y = critic_loss(dy, y, fake_y, lam["y"]["value"])
        loss_x, p_x = critic_loss(dx, x, fake_x, lam["x"]["value"])
        loss_d = loss_y + loss_x
        loss_d.backward()
        opt_d.step()
        adapt(lam["x"], float(p_x.detach()))
        adapt(lam["y"], float(p_y.detach()))
        out = {
            "d_loss": float(loss_d.detach()),
            "gp_y": float(p_y.detach()),
            "gp_x": float(p_x.detach()),
        }
        if generator:
            set_requires_grad([dy, dx], False)
            fake_y, fake_x = gx(x), gy(y)
            rec_x, rec_y = gy(fake_y.clamp(-1, 1), 1), gx(fake_x.clamp(-1, 1), 1)
            loss_g = (
                -dy(fake_y).mean()
                - dx(fake_x).mean()
                + loss.identity_weight * (mse01(fake_y, x) + mse01(fake_x, y))
                + loss.cycle_weight * (mse01(rec_x, x) + mse01(rec_y, y))
            )
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            set_requires_grad([dy, dx], True)
            out["g_loss"] = float(loss_g.detach())
        return out

    return {"G": partial(step, generator=True), "D": partial(step, generator=False)}


# ---- the registry -------------------------------------------------------------------------
def _one_phase(task):
    return [("step", 1)]


@dataclass
class Trainer:
    task: Callable  # size -> Task (networks at the papers' sizes)
    reference: Callable  # Task -> step (or {phase: step}) on deep copies of its networks
    what: str
    optimizer: partial = _adam  # partial(torch.optim.X, **settings), both sides
    layout: str = "pair"  # batch: "pair" ({"A", "B"}) or "images" ({"image"})
    input_nc: int = 3
    size: int | None = None  # a fixed image size (else --size)
    min_size: int = 0  # the smallest size its networks take at batch 1
    steps: int = 1  # training_step calls (batches) in one of our timed calls
    cycle: Callable = field(default=_one_phase)  # Task -> [(phase, count)]: one cycle
    phases: Callable | None = None  # (Task, our step) -> {phase: step}


TRAINERS = {
    "pix2pix": Trainer(pix2pix_task, pix2pix_reference, "U-Net 256 + PatchGAN, BN"),
    "cyclegan": Trainer(cyclegan_task, cyclegan_reference, "2 x ResNet-9 + 2 x PatchGAN, IN"),
    "pix2pixhd": Trainer(
        pix2pixhd_task,
        pix2pixhd_reference,
        "global G ngf 64 + 2-scale D, 36 ch in",
        input_nc=HD_LABELS,
    ),
    "wgan": Trainer(
        wgan_task,
        partial(wgan_reference, optimizer=RMSPROP),
        "DCGAN + BN critic, clip; cycle 5 D + 1 G updates / 5 batches",
        optimizer=RMSPROP,
        layout="images",
        size=DCGAN_SIZE,
        steps=N_CRITIC,
    ),
    "wgan_gp": Trainer(
        partial(wgan_task, gp=True),
        partial(wgan_reference, optimizer=ADAM_GP),
        "DCGAN + LN critic, GP; cycle 5 D + 1 G updates / 5 batches",
        optimizer=ADAM_GP,
        layout="images",
        size=DCGAN_SIZE,
        steps=N_CRITIC,
    ),
    "deblurgan": Trainer(
        deblurgan_task,
        partial(deblurgan_reference, optimizer=ADAM_DEBLUR),
        "ResNet-9 ngf 64 + PatchGAN, WGAN-GP, L1 content; 5 D + 1 G updates / batch",
        optimizer=ADAM_DEBLUR,
    ),
    "deblurgan_v2": Trainer(
        deblurgan_v2_task,
        partial(deblurgan_v2_reference, optimizer=ADAM_V2),
        "FPN MobileNet-v2 + patch & full D, RaGAN-LS, L1 content; 1 D + 1 G / batch",
        optimizer=ADAM_V2,
    ),
    "dpe": Trainer(
        dpe_task,
        partial(dpe_reference, optimizer=ADAM_DPE),
        "2 x U-Net ngf 16 + 2 x critic ndf 16; cycle 1 D+G + 49 D steps / 50 batches",
        optimizer=ADAM_DPE,
        min_size=128,  # the global branch's batch norm needs > 1 value: 2x2 maps at 128 px
        cycle=dpe_cycle,
        phases=dpe_phases,
    ),
}
ROWS = (*TRAINERS, "gradient_penalty")


def _merge(outs):
    """One dict from a cycle's step outputs: the first step's, then the last one's (keys
    already there get ``_last``)."""
    merged = {k: float(v) for k, v in outs[0].items()}
    for k, v in outs[-1].items() if len(outs) > 1 else ():
        merged[f"{k}_last" if k in merged else k] = float(v)
    return merged


def engine_config(optimizer: partial) -> dict:
    """The engine's optimizer config of ``partial(torch.optim.X, **settings)``: ours builds its
    optimizers from it as the Trainer does, so the engine's default implementation applies
    (fused SGD / Adam; the reference runs torch's own default, its per-parameter loop)."""
    return {"_target_": f"torch.optim.{optimizer.func.__name__}", **optimizer.keywords}


def ours(task, optimizer=_adam, steps=1):
    groups = task.optimizer_groups()
    opt = Optimization(
        build_optimizers(groups, engine_config(optimizer)), device=torch.device("cpu")
    )
    opt.listeners.append(task.on_after_optimizer_step)  # as the engine (WGAN's clipping)

    def step(batch):
        outs = []
        for _ in range(steps):
            outs.append(task.training_step(batch, opt))
            opt.advance()
        return _merge(outs)

    return step


def timed(fn, batch, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(batch)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def make_batch(trainer, bs, size):
    g = torch.Generator().manual_seed(1)
    if trainer.layout == "images":
        return {"image": torch.rand((bs, 3, size, size), generator=g) * 2 - 1}
    batch = {"A": torch.rand((bs, trainer.input_nc, size, size), generator=g) * 2 - 1}
    batch["B"] = torch.rand((bs, 3, size, size), generator=g) * 2 - 1
    return batch


def _close(a, b, rel=1e-4, abs_=1e-6):
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def build_side(name: str, side: str, bs: int, size: int) -> tuple[dict, dict]:
    """``({phase: step}, batch)`` of one side (``reference`` | ``ours``) of a trainer's row:
    the networks from seed 0 (equal weights in every process), the batch from seed 1."""
    trainer = TRAINERS[name]
    torch.manual_seed(0)
    task = trainer.task(size).train()
    if side == "reference":
        steps = trainer.reference(task)  # deep copies of the networks
        steps = steps if isinstance(steps, dict) else {"step": steps}
    else:
        mine = ours(task, trainer.optimizer, trainer.steps)
        steps = trainer.phases(task, mine) if trainer.phases else {"step": mine}
    return steps, {"batch": make_batch(trainer, bs, size), "cycle": trainer.cycle(task)}


def worker(mode: str, args) -> None:
    """A worker process (benchmarks/_workers.py): ``build SIDE NAME BS SIZE`` builds a row's
    side and runs its first cycle phase (seed 2), answering the losses and the cycle;
    ``time SIDE PHASE`` times one call of that phase."""
    torch.set_num_threads(args.threads)
    logging.getLogger("src.losses.deblurgan").setLevel(logging.ERROR)
    built: dict[str, tuple[dict, dict]] = {}

    def handle(words: list[str]) -> dict:
        if words[0] == "build":
            side, name, bs, size = words[1], words[2], int(words[3]), int(words[4])
            built[side] = build_side(name, side, bs, size)
            steps, extra = built[side]
            torch.manual_seed(2)
            losses = steps[extra["cycle"][0][0]](extra["batch"])
            return {"losses": losses, "cycle": extra["cycle"]}
        side, phase = words[1], words[2]
        steps, extra = built[side]
        t = time.perf_counter()
        steps[phase](extra["batch"])
        return {"seconds": time.perf_counter() - t}

    serve(mode, handle)


def trainer_rows(name, args, problems, workers):
    """Rows of one trainer, one per batch size: each side in the worker of its allocator mode,
    timed round-robin (one call of every phase of either side per round)."""
    trainer, rows = TRAINERS[name], []
    size = trainer.size or max(args.size, trainer.min_size)
    modes = {"reference": args.reference_allocator, "ours": args.ours_allocator}
    for bs in args.batches:
        first = {
            side: workers.ask(mode, "build", side, name, str(bs), str(size))
            for side, mode in modes.items()
        }
        first_ref, first_ours = first["reference"]["losses"], first["ours"]["losses"]
        same = {k: (f"{first_ref[k]:.6g}", f"{first_ours[k]:.6g}") for k in first_ref}
        equal = all(_close(first_ref[k], first_ours[k]) for k in first_ref)
        if not equal:
            problems.append(f"{name} batch {bs}: first-cycle losses differ {same}")
        verdict = "equal" if equal else "DIFFER"
        print(f"{name} batch {bs}: first-cycle losses (reference, ours) {same}: {verdict}")
        cycle = first["ours"]["cycle"]
        times = {(side, p): [] for side in modes for p, _ in cycle}
        for _ in range(args.repeats):
            for phase, _ in cycle:
                for side, mode in modes.items():
                    answer = workers.ask(mode, "time", side, phase)
                    times[side, phase].append(answer["seconds"])
        t_ref, t_ours = (
            sum(n * statistics.median(times[side, p]) for p, n in cycle) for side in modes
        )
        images = bs * trainer.steps * sum(n for _, n in cycle)
        rows.append(
            (f"{name} ({trainer.what}), batch {bs} at {size}", images / t_ref, images / t_ours)
        )
    return rows


def gradient_penalty_rows(args, problems):
    """Critic loss + penalty, double backward to the critic's parameters: the library's
    ``gradient_penalty`` (through ``WGANGPLoss``, backward restricted to the critic's
    parameters as the engine does) against the plain composite, same weights, same alpha."""
    torch.manual_seed(0)
    critic = DCGANCritic(DCGAN_SIZE, ndf=64, norm="layer")
    plain = copy.deepcopy(critic)
    loss = WGANGPLoss()
    b, g = args.gp_batch, torch.Generator().manual_seed(1)
    real = torch.rand((b, 3, DCGAN_SIZE, DCGAN_SIZE), generator=g) * 2 - 1
    fake = torch.rand((b, 3, DCGAN_SIZE, DCGAN_SIZE), generator=g) * 2 - 1
    alpha = torch.rand((b, 1, 1, 1), generator=g)
    params = list(critic.parameters())

    def library(_=None):
        critic.zero_grad(set_to_none=True)
        wasserstein = loss.critic(critic(real), critic(fake))
        penalty = loss.penalty(critic, real, fake, alpha)
        (wasserstein + penalty).backward(inputs=params)
        return float(penalty.detach())

    def composite(_=None):
        plain.zero_grad(set_to_none=True)
        wasserstein = plain(fake).mean() - plain(real).mean()
        penalty = plain_penalty(plain, real, fake, alpha)
        (wasserstein + penalty).backward()
        return float(penalty.detach())

    p_plain, p_ours = composite(), library()
    pairs = [(a.grad, c.grad) for a, c in zip(critic.parameters(), plain.parameters())]
    diff = max(float((a - c).abs().max()) for a, c in pairs)
    top = max(float(c.abs().max()) for _, c in pairs)
    equal = _close(p_plain, p_ours, 1e-5) and all(
        torch.allclose(a, c, rtol=1e-4, atol=1e-6 * top) for a, c in pairs
    )
    print(
        f"gradient penalty (composite, ours) ({p_plain:.8g}, {p_ours:.8g}); {len(pairs)} "
        f"parameter gradients: max |diff| {diff:.3g} (max |grad| {top:.3g}): "
        f"{'equal' if equal else 'DIFFER'}"
    )
    if not equal:
        problems.append(f"gradient penalty: values or gradients differ (max |diff| {diff:.3g})")
    t_plain, t_ours = timed(composite, None, args.repeats), timed(library, None, args.repeats)
    what = f"gradient-penalty step (DCGAN LN critic, D loss + GP, double backward), batch {b}"
    return [(f"{what} at {DCGAN_SIZE}", b / t_plain, b / t_ours)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gp-batch", type=int, default=64, help="batch of the gradient_penalty row")
    ap.add_argument("--only", nargs="*", default=None, choices=ROWS, help="a subset of the rows")
    ap.add_argument(
        "--reference-allocator",
        default="system",
        choices=MODES,
        help="glibc's settings for the reference rows (system: as the reference repos run)",
    )
    ap.add_argument(
        "--ours-allocator",
        default="keep",
        choices=MODES,
        help="for our rows (keep: the engine's default trainer.host_allocator)",
    )
    ap.add_argument("--allocator", help=argparse.SUPPRESS)  # internal: a worker process
    args = ap.parse_args()
    if args.allocator:
        return worker(args.allocator, args)
    torch.set_num_threads(args.threads)
    rows, problems = [], []
    argv = [sys.executable, __file__, "--threads", str(args.threads)]
    with Workers(argv, [args.reference_allocator, args.ours_allocator]) as workers:
        for name in args.only or ROWS:
            if name == "gradient_penalty":
                rows += gradient_penalty_rows(args, problems)
            else:
                rows += trainer_rows(name, args, problems, workers)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} cycles; "
        f"allocator: reference {args.reference_allocator}, ours {args.ours_allocator}"
    )
    print("| training step | reference step order | ours | ratio |\n|---|---|---|---|")
    for what, r, o in rows:
        print(f"| {what} | {r:.2f} img/s | {o:.2f} img/s | {o / r:.2f}x |")
    for line in problems:
        print("MISMATCH:", line)


if __name__ == "__main__":
    main()
