"""GAN losses shared by the image-to-image trainers.

* ``AdversarialLoss(mode)``: ``vanilla`` (BCE with logits, Goodfellow et al. 2014), ``lsgan``
  (MSE to 1 / 0, Mao et al. 2017), ``wgan`` (-mean for real, +mean for fake; Arjovsky et al.
  2017), ``hinge`` (discriminator relu(1 - real) + relu(1 + fake), generator -mean; Miyato et
  al. 2018), ``ragan_ls`` (relativistic average least squares, Jolicoeur-Martineau 2018, as
  DeblurGAN-v2's ``RelativisticDiscLossLS``: discriminator
  ``(mean((r - mean(f) - 1)^2) + mean((f - mean(r) + 1)^2)) / 2``, generator the same with
  the signs of the 1s swapped). ``loss(pred, target_is_real, for_discriminator)`` is the
  reference's ``GANLoss.__call__``; ``discriminator(real, fake)`` = real term + fake term and
  ``generator(fake, real=None)`` cover every mode. A prediction may be a tensor or, for
  multi-scale discriminators, a list per scale of feature lists whose last entry is the
  prediction: the loss is then summed over scales (pix2pixHD's ``GANLoss``: no 1/num_D).
* ``gradient_penalty``: one function with the variants the references use (see its doc).
* ``feature_matching_loss``: pix2pixHD's discriminator feature matching.
* ``VGGPerceptualLoss``: pix2pixHD's VGG19 loss; weights only from a local file.
* ``Pix2PixLoss`` (``kind = "pix2pix"``): the GAN term + ``lambda_l1`` x L1 (Isola et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.utils.errors import UserError
from src.utils.weights_file import read_state_dict

GAN_MODES = ("vanilla", "lsgan", "wgan", "hinge", "ragan_ls")


def _predictions(pred) -> list[Tensor]:
    """The prediction tensors of a discriminator output (a tensor, or per-scale lists)."""
    if isinstance(pred, Tensor):
        return [pred]
    return [p[-1] if isinstance(p, (list, tuple)) else p for p in pred]


class AdversarialLoss(nn.Module):
    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in GAN_MODES:
            raise UserError(f"gan_mode={mode!r} is unknown; use one of {', '.join(GAN_MODES)}")
        self.mode, self.real_label, self.fake_label = mode, float(real_label), float(fake_label)

    def _single(self, pred: Tensor, real: bool, for_discriminator: bool) -> Tensor:
        if self.mode in ("vanilla", "lsgan"):
            target = torch.full_like(pred, self.real_label if real else self.fake_label)
            if self.mode == "vanilla":
                return F.binary_cross_entropy_with_logits(pred, target)
            return F.mse_loss(pred, target)
        if self.mode == "wgan":
            return -pred.mean() if real else pred.mean()
        if self.mode == "hinge":
            if not for_discriminator:
                if not real:
                    raise ValueError("hinge: the generator loss is taken on fakes as real")
                return -pred.mean()
            return F.relu(1.0 - pred).mean() if real else F.relu(1.0 + pred).mean()
        raise ValueError("ragan_ls compares real and fake: use discriminator() / generator()")

    def forward(self, pred, target_is_real: bool, for_discriminator: bool = True) -> Tensor:
        return sum(self._single(p, target_is_real, for_discriminator) for p in _predictions(pred))

    def discriminator(self, real_pred, fake_pred) -> Tensor:
        """The discriminator's loss: real term + fake term (pix2pix halves it)."""
        if self.mode == "ragan_ls":
            return sum(
                ((r - f.mean() - 1) ** 2).mean() / 2 + ((f - r.mean() + 1) ** 2).mean() / 2
                for r, f in zip(_predictions(real_pred), _predictions(fake_pred))
            )
        return self(real_pred, True) + self(fake_pred, False)

    def generator(self, fake_pred, real_pred=None) -> Tensor:
        """The generator's loss (``ragan_ls`` also needs the real predictions)."""
        if self.mode == "ragan_ls":
            if real_pred is None:
                raise ValueError("ragan_ls: the generator loss needs the real predictions too")
            return sum(
                ((r - f.mean() + 1) ** 2).mean() / 2 + ((f - r.mean() - 1) ** 2).mean() / 2
                for r, f in zip(_predictions(real_pred), _predictions(fake_pred))
            )
        return self(fake_pred, True, for_discriminator=False)


def interpolates(
    real: Tensor, fake: Tensor, alpha: Tensor | None = None, alpha_per: str = "sample"
) -> Tensor:
    """``alpha * real + (1 - alpha) * fake`` (both detached): ``alpha`` given (broadcastable,
    e.g. (B, 1, 1, 1)), or U(0, 1) from torch's global RNG, one per sample (``alpha_per =
    "sample"``: Gulrajani et al. 2017, junyanz, DPE) or one for the batch (``"batch"``:
    DeblurGAN)."""
    if alpha is None:
        if alpha_per == "sample":
            shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        elif alpha_per == "batch":
            shape = (1,) * real.dim()
        else:
            raise ValueError(f"alpha_per must be 'sample' or 'batch', got {alpha_per!r}")
        alpha = torch.rand(shape, device=real.device, dtype=real.dtype)
    return alpha * real.detach() + (1 - alpha) * fake.detach()


def penalty_of_gradient(
    grad: Tensor,
    *,
    target: float = 1.0,
    norm_over: str = "sample",
    one_sided: bool = False,
    power: int = 2,
    scale: float = 1.0,
) -> Tensor:
    """``mean(phi(scale * ||grad|| - target) ** power)`` of a critic's input gradient.

    ``norm_over``: ``sample`` (the L2 norm of each flattened sample) or ``channels`` (over
    channels at each pixel, then averaged: DeblurGAN); ``one_sided``: ``phi = max(0, .)`` (DPE)
    instead of the identity; ``power`` 2 (the WGAN-GP square) or 1 (DPE's code); ``scale``
    rescales the norm (a gradient w.r.t. [-1, 1] images taken w.r.t. [0, 1] ones: 2)."""
    if norm_over == "sample":
        norms = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    elif norm_over == "channels":
        norms = grad.norm(2, dim=1)
    else:
        raise ValueError(f"norm_over must be 'sample' or 'channels', got {norm_over!r}")
    gap = norms * scale - target
    if one_sided:
        gap = gap.clamp(min=0)
    return (gap**power).mean()


def gradient_penalty(
    critic: Callable[[Tensor], object],
    real: Tensor,
    fake: Tensor,
    *,
    lambda_gp: float = 10.0,
    target: float = 1.0,
    alpha: Tensor | None = None,
    alpha_per: str = "sample",
    norm_over: str = "sample",
    one_sided: bool = False,
    power: int = 2,
    interpolate: str = "mixed",
    eps: float = 1e-16,
) -> Tensor:
    """``lambda_gp * mean(phi(||grad_x critic(x)|| - target) ** power)`` at ``x`` between real
    and fake.

    * ``interpolate``: ``mixed`` (``interpolates``: ``alpha * real + (1 - alpha) * fake``),
      ``real`` or ``fake`` (junyanz ``cal_gradient_penalty`` types).
    * ``alpha_per``: ``sample`` (one U(0, 1) per sample: Gulrajani et al. 2017, junyanz) or
      ``batch`` (one for the whole batch: DeblurGAN). ``alpha`` fixes it (shape broadcastable
      to ``real``, e.g. (B, 1, 1, 1)); otherwise drawn from torch's global RNG.
    * ``norm_over``, ``one_sided``, ``power``: ``penalty_of_gradient`` (the one place the norm
      and its penalty are formed; DPE's critic step uses it too).
    * ``eps`` is added to the gradient before the norm, as the reference does.

    The gradient graph is kept (``create_graph=True``): the penalty is differentiable w.r.t. the
    critic's parameters, which needs every op in the critic twice differentiable. Outputs of a
    multi-scale critic are summed over their prediction tensors.
    """
    if interpolate == "real":
        x = real
    elif interpolate == "fake":
        x = fake
    elif interpolate == "mixed":
        x = interpolates(real, fake, alpha, alpha_per)
    else:
        raise ValueError(f"interpolate must be mixed, real or fake, got {interpolate!r}")
    x = x.detach().requires_grad_(True)
    outputs = _predictions(critic(x))
    (grad,) = torch.autograd.grad(
        outputs=outputs,
        inputs=x,
        grad_outputs=[torch.ones_like(o) for o in outputs],
        create_graph=True,
        retain_graph=True,
    )
    penalty = penalty_of_gradient(
        grad + eps, target=target, norm_over=norm_over, one_sided=one_sided, power=power
    )
    return penalty * lambda_gp


def feature_matching_loss(
    fake_features: Sequence[Sequence[Tensor]],
    real_features: Sequence[Sequence[Tensor]],
    lambda_feat: float = 10.0,
    n_layers: int | None = None,
) -> Tensor:
    """pix2pixHD: sum over scales i and intermediate layers j (all but the prediction) of
    ``1/num_D * 4/(n_layers + 1) * lambda_feat * L1(fake[i][j], real[i][j].detach())``;
    ``n_layers`` defaults to the number of feature groups per scale minus 2."""
    num_d = len(fake_features)
    n_layers = len(fake_features[0]) - 2 if n_layers is None else n_layers
    weight = (1.0 / num_d) * (4.0 / (n_layers + 1)) * lambda_feat
    total = fake_features[0][0].new_zeros(())
    for fake_scale, real_scale in zip(fake_features, real_features):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + weight * F.l1_loss(f, r.detach())
    return total


VGG_SLICES = (2, 7, 12, 21, 30)  # torchvision vgg19.features up to relu1_1 ... relu5_1
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGGPerceptualLoss(nn.Module):
    """pix2pixHD's ``VGGLoss``: ``sum_i w_i * L1(vgg_i(x), vgg_i(y).detach())`` over relu1_1,
    relu2_1, relu3_1, relu4_1, relu5_1 of VGG19 with weights 1/32, 1/16, 1/8, 1/4, 1. The
    network is torchvision's ``vgg19`` (``weights=None``) with its ``features`` loaded from a
    local file (torchvision's ``vgg19-dcbb9e9d.pth`` or any state dict with ``features.*``
    keys); nothing is downloaded. As the reference, inputs go in as they are ([-1, 1]);
    ``imagenet_normalize=True`` maps them to ImageNet statistics first. Frozen, and not in
    the state dict."""

    def __init__(self, weights: str | None, imagenet_normalize: bool = False):
        super().__init__()
        if not weights:
            raise UserError(
                "the VGG19 perceptual loss needs a local weights file (nothing is downloaded "
                "here): set loss.vgg_weights=/path/to/vgg19-dcbb9e9d.pth, or turn the loss off "
                "with loss.lambda_vgg=0"
            )
        from torchvision.models import vgg

        state = read_state_dict(weights, "VGG19 weights", "loss.vgg_weights=<file>")
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        if "0.weight" not in state:
            raise UserError(
                f"{weights}: not VGG19 weights (no features.0.weight; expected torchvision's "
                "vgg19 state dict)"
            )
        # vgg19's feature layers alone (building vgg19() would also initialise its 120 M
        # parameter classifier, only to drop it)
        features = vgg.make_layers(vgg.cfgs["E"])[: VGG_SLICES[-1]]
        own = features.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise UserError(
                f"{weights}: not VGG19 weights (no features.{missing[0]}; expected torchvision's "
                "vgg19 state dict)"
            )
        features.load_state_dict({k: state[k] for k in own})
        # kept outside the module tree: frozen and read from its file, it is not part of the
        # Task's state_dict / checkpoints (it follows the input's device in forward)
        slices = nn.ModuleList(features[a:b] for a, b in zip((0, *VGG_SLICES[:-1]), VGG_SLICES))
        object.__setattr__(self, "slices", slices.requires_grad_(False).eval())
        self.imagenet_normalize = bool(imagenet_normalize)
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def _features(self, x: Tensor) -> list[Tensor]:
        if next(self.slices.parameters()).device != x.device:
            self.slices.to(x.device)
        if self.imagenet_normalize:
            x = ((x + 1) / 2 - self.mean.to(x)) / self.std.to(x)
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return sum(
            w * F.l1_loss(a, b.detach())
            for w, a, b in zip(VGG_WEIGHTS, self._features(x), self._features(y))
        )


class Pix2PixLoss(nn.Module):
    """pix2pix: discriminator ``0.5 * (GAN(D(A, B), real) + GAN(D(A, G(A)), fake))``;
    generator ``GAN(D(A, G(A)), real) + lambda_l1 * L1(G(A), B)`` (+ ``lambda_vgg`` x the VGG19
    loss when a weights file is given; off by default)."""

    kind = "pix2pix"

    def __init__(
        self,
        gan_mode: str = "vanilla",
        lambda_l1: float = 100.0,
        lambda_vgg: float = 0.0,
        vgg_weights: str | None = None,
    ):
        super().__init__()
        if gan_mode == "ragan_ls":
            raise UserError(
                "loss.gan_mode=ragan_ls is not wired into pix2pix (its generator step has no "
                "real predictions); use vanilla, lsgan, wgan or hinge"
            )
        self.gan = AdversarialLoss(gan_mode)
        self.lambda_l1, self.lambda_vgg = float(lambda_l1), float(lambda_vgg)
        self.vgg = VGGPerceptualLoss(vgg_weights) if self.lambda_vgg > 0 else None

    def discriminator(self, real_pred, fake_pred) -> Tensor:
        return 0.5 * (self.gan(fake_pred, False) + self.gan(real_pred, True))

    def generator(self, fake_pred, fake: Tensor, real: Tensor) -> dict[str, Tensor]:
        g_gan = self.gan.generator(fake_pred)
        g_l1 = F.l1_loss(fake, real)
        total = g_gan + self.lambda_l1 * g_l1
        out = {"g_gan": g_gan.detach(), "g_l1": g_l1.detach()}
        if self.vgg is not None:
            g_vgg = self.vgg(fake, real)
            total = total + self.lambda_vgg * g_vgg
            out["g_vgg"] = g_vgg.detach()
        return {"loss": total, **out}
