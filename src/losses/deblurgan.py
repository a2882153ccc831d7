"""DeblurGAN v1 / v2 losses (Kupyn et al. 2018, 2019; KupynOrest/DeblurGAN and
VITA-Group/DeblurGANv2 ``models/losses.py``), built on the shared GAN losses of
``src.losses.gan`` (``AdversarialLoss``, ``gradient_penalty``, the local-file VGG19).

Adversarial term (``DeblurAdversarial``, ``gan_mode``), the critic seeing restored / sharp
images alone (unconditional):

* ``wgan_gp``: critic ``mean(D(fake)) - mean(D(real)) + GP``, generator ``-mean(D(fake))``.
  ``penalty=standard`` (default): Gulrajani et al.'s, one alpha per sample and the norm of each
  sample's flattened gradient; ``penalty=reference``: DeblurGAN's ``calc_gradient_penalty``, one
  alpha for the whole batch and the norm over channels at each pixel, averaged over pixels (no
  eps). Lambda 10.
* ``ragan_ls``: relativistic average LSGAN (``AdversarialLoss("ragan_ls")``, DeblurGAN-v2's
  ``RelativisticDiscLossLS`` on the batch's means; the reference takes the means over pools of
  the last 50 predictions instead).
* ``lsgan``: a real least-squares GAN (MSE to 1 / 0); ``vanilla``: BCE with logits (the
  reference's ``gan``: sigmoid + BCE); ``l1``: the reference's ``lsgan``, which is an L1 loss to
  1 / 0 (``GANLoss(use_l1=True)``). These three: critic ``0.5 * (fake + real)``, as the
  reference's ``DiscLoss``.

Content term: with a local VGG19 file (``vgg_weights``, torchvision's ``vgg19-dcbb9e9d.pth``;
nothing is downloaded) the perceptual loss on VGG19 ``conv3_3`` (``features[:15]``, before its
ReLU) features, MSE; without one, L1 on pixels, and the loss says so once when built.

* ``DeblurGANLoss`` (v1, ``kind = "deblurgan"``): ``adv + lambda_content * content`` with
  ``lambda_content = 100``; the v1 reference feeds VGG the [-1, 1] images as they are.
* ``DeblurGANv2Loss`` (v2, ``kind = "deblurgan_v2"``): ``adv_lambda * adv + content``, content
  ``0.006 * MSE(vgg(fake), vgg(real)) + 0.5 * MSE(fake01, real01)`` on [0, 1] images, VGG seeing
  ImageNet-normalised inputs. The reference normalises only the *first image of the batch* (in
  place, so its pixel MSE sees that image normalised too): ``reference_normalization=true``
  reproduces it; default, every image is normalised for VGG and the pixel MSE is on [0, 1].
  The critic loss is ``adv_lambda`` x the average over the two critics, as the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.losses.gan import AdversarialLoss, VGGPerceptualLoss, gradient_penalty
from src.utils.errors import UserError

log = logging.getLogger(__name__)

DEBLUR_GAN_MODES = ("wgan_gp", "ragan_ls", "lsgan", "vanilla", "l1")
PENALTIES = ("standard", "reference")
CONV3_3 = 15  # torchvision vgg19.features[:15] ends with conv3_3 (index 14), before its ReLU
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeblurAdversarial(nn.Module):
    """The adversarial term of one critic (see the module docstring)."""

    def __init__(self, mode: str = "wgan_gp", penalty: str = "standard", lambda_gp: float = 10.0):
        super().__init__()
        if mode not in DEBLUR_GAN_MODES:
            raise UserError(
                f"loss.gan_mode={mode!r} is unknown; use one of {', '.join(DEBLUR_GAN_MODES)}"
            )
        if penalty not in PENALTIES:
            raise UserError(f"loss.penalty={penalty!r}: use standard or reference")
        self.mode, self.penalty, self.lambda_gp = mode, penalty, float(lambda_gp)
        base = {"wgan_gp": "wgan", "ragan_ls": "ragan_ls", "lsgan": "lsgan", "vanilla": "vanilla"}
        self.gan = AdversarialLoss(base.get(mode, "lsgan"))

    def _l1(self, pred: Tensor, real: bool) -> Tensor:
        return F.l1_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))

    def gradient_penalty(self, critic: Callable, real: Tensor, fake: Tensor) -> Tensor:
        if self.penalty == "reference":
            return gradient_penalty(
                critic,
                real,
                fake,
                lambda_gp=self.lambda_gp,
                alpha_per="batch",
                norm_over="channels",
                eps=0.0,
            )
        return gradient_penalty(critic, real, fake, lambda_gp=self.lambda_gp)

    def critic_loss(self, critic: Callable, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """``{"loss", ...}`` of one critic update on real (sharp) and fake (restored) images."""
        fake = fake.detach()
        pred_fake, pred_real = critic(fake), critic(real)
        if self.mode == "wgan_gp":
            gp = self.gradient_penalty(critic, real, fake)
            w = pred_real.mean() - pred_fake.mean()
            return {"loss": -w + gp, "wasserstein": w.detach(), "gp": gp.detach()}
        if self.mode == "ragan_ls":
            return {"loss": self.gan.discriminator(pred_real, pred_fake)}
        if self.mode == "l1":
            return {"loss": 0.5 * (self._l1(pred_fake, False) + self._l1(pred_real, True))}
        return {"loss": 0.5 * (self.gan(pred_fake, False) + self.gan(pred_real, True))}

    def generator_loss(self, critic: Callable, fake: Tensor, real: Tensor) -> Tensor:
        pred_fake = critic(fake)
        if self.mode == "wgan_gp":
            return -pred_fake.mean()
        if self.mode == "ragan_ls":
            with torch.no_grad():
                pred_real = critic(real)
            return self.gan.generator(pred_fake, pred_real)
        if self.mode == "l1":
            return self._l1(pred_fake, True)
        return self.gan.generator(pred_fake)


class VGGConv33(nn.Module):
    """VGG19 ``features[:15]`` (up to conv3_3) from a local torchvision file, frozen and outside
    the state dict; loaded and checked by ``src.losses.gan.VGGPerceptualLoss``."""

    def __init__(self, weights: str):
        super().__init__()
        vgg = VGGPerceptualLoss(weights)
        layers = [m for block in vgg.slices for m in block][:CONV3_3]
        net = nn.Sequential(*layers).requires_grad_(False).eval()
        object.__setattr__(self, "net", net)

    def forward(self, x: Tensor) -> Tensor:
        if next(self.net.parameters()).device != x.device:
            self.net.to(x.device)
        return self.net(x)


def _content(vgg_weights: str | None, what: str, lambda_text: str) -> VGGConv33 | None:
    if vgg_weights:
        log.info(
            "%s content loss: VGG19 conv3_3 perceptual (%s), %s", what, vgg_weights, lambda_text
        )
        return VGGConv33(vgg_weights)
    log.warning(
        "%s content loss: L1 on pixels, NOT the paper's VGG19 conv3_3 perceptual loss (no "
        "weights file given; set loss.vgg_weights=/path/to/vgg19-dcbb9e9d.pth for it)",
        what,
    )
    return None


class DeblurGANLoss(nn.Module):
    kind = "deblurgan"

    def __init__(
        self,
        gan_mode: str = "wgan_gp",
        lambda_content: float = 100.0,
        vgg_weights: str | None = None,
        penalty: str = "standard",
        lambda_gp: float = 10.0,
    ):
        super().__init__()
        self.adversarial = DeblurAdversarial(gan_mode, penalty, lambda_gp)
        self.gan_mode, self.lambda_content = gan_mode, float(lambda_content)
        self.vgg = _content(vgg_weights, "DeblurGAN", f"x {self.lambda_content:g}")
        self.content_name = "perceptual" if self.vgg is not None else "l1"

    def content(self, fake: Tensor, real: Tensor) -> Tensor:
        if self.vgg is None:
            return F.l1_loss(fake, real)
        return F.mse_loss(self.vgg(fake), self.vgg(real).detach())

    def critic(self, critic: Callable, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        return self.adversarial.critic_loss(critic, real, fake)

    def generator(self, critic: Callable, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        adv = self.adversarial.generator_loss(critic, fake, real)
        content = self.content(fake, real)
        total = adv + self.lambda_content * content
        return {"loss": total, "g_adv": adv.detach(), f"g_{self.content_name}": content.detach()}


def imagenet_normalize(x01: Tensor, first_only: bool = False) -> Tensor:
    """[0, 1] images to ImageNet statistics (``first_only``: the reference's quirk, image 0
    alone; the others stay in [0, 1])."""
    mean = x01.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x01.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if not first_only:
        return (x01 - mean) / std
    return torch.cat([(x01[:1] - mean) / std, x01[1:]], 0)


class DeblurGANv2Loss(nn.Module):
    kind = "deblurgan_v2"

    def __init__(
        self,
        gan_mode: str = "ragan_ls",
        adv_lambda: float = 0.001,
        vgg_weights: str | None = None,
        lambda_feature: float = 0.006,
        lambda_pixel: float = 0.5,
        reference_normalization: bool = False,
        penalty: str = "standard",
        lambda_gp: float = 10.0,
    ):
        super().__init__()
        self.adversarial = DeblurAdversarial(gan_mode, penalty, lambda_gp)
        self.gan_mode, self.adv_lambda = gan_mode, float(adv_lambda)
        self.lambda_feature, self.lambda_pixel = float(lambda_feature), float(lambda_pixel)
        self.reference_normalization = bool(reference_normalization)
        self.vgg = _content(
            vgg_weights,
            "DeblurGAN-v2",
            f"{self.lambda_feature:g} x feature MSE + {self.lambda_pixel:g} x pixel MSE",
        )
        self.content_name = "perceptual" if self.vgg is not None else "l1"

    def content(self, fake: Tensor, real: Tensor) -> Tensor:
        if self.vgg is None:
            return F.l1_loss(fake, real)
        fake01, real01 = (fake + 1) / 2, (real + 1) / 2
        quirk = self.reference_normalization
        fake_n, real_n = imagenet_normalize(fake01, quirk), imagenet_normalize(real01, quirk)
        feature = F.mse_loss(self.vgg(fake_n), self.vgg(real_n).detach())
        if quirk:  # the reference's pixel MSE sees its in-place normalised first image
            fake01, real01 = fake_n, real_n
        return self.lambda_feature * feature + self.lambda_pixel * F.mse_loss(fake01, real01)

    def critic(self, critics: Sequence[Callable], real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """``adv_lambda`` x the mean over the critics (patch + full) of their losses."""
        parts = [self.adversarial.critic_loss(c, real, fake) for c in critics]
        out = {"loss": self.adv_lambda * sum(p["loss"] for p in parts) / len(parts)}
        for key in parts[0]:
            if key != "loss":
                out[key] = sum(p[key] for p in parts) / len(parts)
        return out

    def generator(
        self, critics: Sequence[Callable], fake: Tensor, real: Tensor
    ) -> dict[str, Tensor]:
        adv = sum(self.adversarial.generator_loss(c, fake, real) for c in critics) / len(critics)
        content = self.content(fake, real)
        total = content + self.adv_lambda * adv
        return {"loss": total, "g_adv": adv.detach(), f"g_{self.content_name}": content.detach()}
