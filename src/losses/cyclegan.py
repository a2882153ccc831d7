"""The CycleGAN objective (Zhu et al. 2017; junyanz/pytorch-CycleGAN-and-pix2pix
``cycle_gan_model``: ``backward_G`` and ``backward_D_basic``).

Naming as the reference: ``G_A``: A -> B, ``G_B``: B -> A; ``D_A`` judges domain B (real B
against ``G_A(A)``), ``D_B`` judges domain A (real A against ``G_B(B)``).

* Generators (one loss for both, one optimizer over both)::

      GAN(D_A(G_A(A)), real) + GAN(D_B(G_B(B)), real)
      + lambda_a * L1(G_B(G_A(A)), A) + lambda_b * L1(G_A(G_B(B)), B)
      + lambda_identity * (lambda_b * L1(G_A(B), B) + lambda_a * L1(G_B(A), A))

  The identity term is scaled by the cycle weight of the domain it maps into, as the reference
  does: ``lambda_identity=0.5`` with ``lambda_a = lambda_b = 10`` is an effective weight of 5.
  ``lambda_identity=0`` drops it (the generators are then not run on the other domain).
* Each discriminator: ``0.5 * (GAN(D(real), real) + GAN(D(fake), fake))``, the fakes drawn from
  that domain's image pool.

``gan_mode``: ``lsgan`` (the paper's, MSE to 1 / 0), ``vanilla``, ``wgan`` or ``hinge`` (the
shared ``AdversarialLoss``); ``ragan_ls`` is not wired in (the generator step would also need
the discriminators' real predictions).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from src.losses.gan import AdversarialLoss
from src.utils.errors import UserError


class CycleGANLoss(nn.Module):
    kind = "cyclegan"

    def __init__(
        self,
        gan_mode: str = "lsgan",
        lambda_a: float = 10.0,
        lambda_b: float = 10.0,
        lambda_identity: float = 0.5,
    ):
        super().__init__()
        if gan_mode == "ragan_ls":
            raise UserError(
                "loss.gan_mode=ragan_ls is not wired into CycleGAN (its generator step has no "
                "real predictions); use lsgan, vanilla, wgan or hinge"
            )
        for key, value in (("lambda_a", lambda_a), ("lambda_b", lambda_b)):
            if value < 0:
                raise UserError(f"loss.{key}={value}: a cycle weight must be >= 0")
        if lambda_identity < 0:
            raise UserError(f"loss.lambda_identity={lambda_identity}: must be >= 0 (0 = off)")
        self.gan = AdversarialLoss(gan_mode)
        self.lambda_a, self.lambda_b = float(lambda_a), float(lambda_b)
        self.lambda_identity = float(lambda_identity)

    @property
    def uses_identity(self) -> bool:
        return self.lambda_identity > 0

    def generator(
        self,
        pred_fake_b,
        pred_fake_a,
        real_a: Tensor,
        real_b: Tensor,
        rec_a: Tensor,
        rec_b: Tensor,
        idt_a: Tensor | None = None,
        idt_b: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``pred_fake_b = D_A(G_A(A))``, ``pred_fake_a = D_B(G_B(B))``, ``rec_a = G_B(G_A(A))``,
        ``rec_b = G_A(G_B(B))``, ``idt_a = G_A(B)``, ``idt_b = G_B(A)`` (the reference's names).
        Returns ``{"loss": total, <each term detached>}``."""
        g_a = self.gan.generator(pred_fake_b)
        g_b = self.gan.generator(pred_fake_a)
        cycle_a = F.l1_loss(rec_a, real_a) * self.lambda_a
        cycle_b = F.l1_loss(rec_b, real_b) * self.lambda_b
        total = g_a + g_b + cycle_a + cycle_b
        out = {"g_a": g_a, "g_b": g_b, "cycle_a": cycle_a, "cycle_b": cycle_b}
        if self.uses_identity:
            if idt_a is None or idt_b is None:
                raise ValueError("lambda_identity > 0: pass idt_a = G_A(B) and idt_b = G_B(A)")
            out["idt_a"] = F.l1_loss(idt_a, real_b) * self.lambda_b * self.lambda_identity
            out["idt_b"] = F.l1_loss(idt_b, real_a) * self.lambda_a * self.lambda_identity
            total = total + out["idt_a"] + out["idt_b"]
        return {"loss": total, **{k: v.detach() for k, v in out.items()}}

    def discriminator(self, pred_real, pred_fake) -> Tensor:
        """``backward_D_basic``: ``0.5 * (GAN(D(real), real) + GAN(D(fake), fake))``."""
        return 0.5 * (self.gan(pred_real, True) + self.gan(pred_fake, False))
