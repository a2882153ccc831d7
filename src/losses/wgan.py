"""Wasserstein GAN losses (Arjovsky et al. 2017; Gulrajani et al. 2017), built on
``src.losses.gan`` (``AdversarialLoss("wgan")`` and ``gradient_penalty``).

Sign convention: the critic scores real images high. Critic loss ``mean(D(fake)) -
mean(D(real))`` (its negative is the Wasserstein estimate), generator loss ``-mean(D(G(z)))``.
The WGAN reference (martinarjovsky/WassersteinGAN ``main.py``) uses the mirrored convention
(``errD_real.backward(one)``, ``errD_fake.backward(mone)``, ``errG.backward(one)``: its critic
scores real images low); with weight clipping (symmetric) or a gradient penalty (sign-free)
the two are the same problem with the critic negated, so this is only a sign in the logs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from src.losses.gan import AdversarialLoss, gradient_penalty


class WGANLoss(nn.Module):
    """Critic ``mean(D(fake)) - mean(D(real))``; generator ``-mean(D(G(z)))``."""

    kind = "wgan"

    def __init__(self):
        super().__init__()
        self.gan = AdversarialLoss("wgan")

    def critic(self, real_scores: Tensor, fake_scores: Tensor) -> Tensor:
        return self.gan.discriminator(real_scores, fake_scores)

    def generator(self, fake_scores: Tensor) -> Tensor:
        return self.gan.generator(fake_scores)


class WGANGPLoss(WGANLoss):
    """WGAN-GP: the critic loss + ``lambda_gp * mean((||grad_x D(x)|| - target)^2)`` at
    ``x = alpha * real + (1 - alpha) * fake`` (Gulrajani et al. 2017, Algorithm 1: one alpha
    per sample, the L2 norm of each sample's flattened gradient, lambda 10). The other forms of
    ``src.losses.gan.gradient_penalty`` are options: ``alpha_per=batch`` / ``norm_over=channels``
    (DeblurGAN's), ``one_sided=true`` (DPE's)."""

    kind = "wgan_gp"

    def __init__(
        self,
        lambda_gp: float = 10.0,
        target: float = 1.0,
        alpha_per: str = "sample",
        norm_over: str = "sample",
        one_sided: bool = False,
    ):
        super().__init__()
        self.lambda_gp, self.target = float(lambda_gp), float(target)
        self.alpha_per, self.norm_over, self.one_sided = alpha_per, norm_over, bool(one_sided)

    def penalty(
        self,
        critic: Callable[[Tensor], Tensor],
        real: Tensor,
        fake: Tensor,
        alpha: Tensor | None = None,
    ) -> Tensor:
        return gradient_penalty(
            critic,
            real,
            fake,
            lambda_gp=self.lambda_gp,
            target=self.target,
            alpha=alpha,
            alpha_per=self.alpha_per,
            norm_over=self.norm_over,
            one_sided=self.one_sided,
        )

    @property
    def per_sample(self) -> bool:
        """Whether the penalty is taken per sample (what BatchNorm in the critic breaks)."""
        return self.alpha_per == "sample" or self.norm_over == "sample"
