"""The Deep Photo Enhancer objective (Chen et al. 2018; the authors' TensorFlow code, ported):
a two-way WGAN with the one-sided gradient penalty, adaptive penalty weights (A-WGAN),
identity and cycle-consistency terms.

Names as the paper: X the input photos (dataset ``A``), Y the retouched ones (``B``); ``G_X``:
X -> Y, ``G_Y``: Y -> X; the critic ``D_Y`` judges Y (real ``y`` against ``G_X(x)``), ``D_X``
judges X (real ``x`` against ``G_Y(y)``).

Sign convention (one for both critics): **a critic scores real images high and fakes low.**
Each critic minimises ``mean(D(fake)) - mean(D(real)) + lambda_D * P_D`` and the generators
minimise ``-mean(D_Y(G_X(x))) - mean(D_X(G_Y(y)))``. The authors' code gives its second critic
the opposite sign (it scores real images low and fakes high, and its generator follows), which
is the same game with that critic's output negated; here both read the same way, so their
logged Wasserstein estimates ``mean(D(real)) - mean(D(fake))`` are both positive when the
critic separates the two. Both critics' penalties and losses reach the critic parameters (the
widely copied PyTorch ports either multiply by lambda twice or build the penalty from
``.item()`` values, which sends no gradient at all).

One-sided penalty (the authors' ``wgan_gp`` with ``loss_wgan_use_g_to_one=False``):
``P = mean_i max(0, ||grad_x D(x_hat_i)|| - 1)`` -- not squared -- at ``x_hat = alpha * real +
(1 - alpha) * fake``, one ``alpha ~ U(0, 1)`` per sample, the norm over each flattened sample
(``penalty_power=2`` squares it instead). The authors' images are in [0, 1] and ours in
[-1, 1]: with ``unit_range=true`` (default) the gradient is taken with respect to the [0, 1]
image (``x = 2 x01 - 1``, so ``d/d(x01) = 2 d/dx``: twice the norm), and the identity and
cycle MSEs are taken on [0, 1] too (``/ 4``), so every weight and bound means what it means in
the authors' code. The interpolates and the penalty of the gradient are the shared ones
(``src.losses.gan.interpolates`` / ``penalty_of_gradient``, one-sided, power 1); what
``one_sided_penalty`` adds is that the critic sees real and fake in one forward and the
interpolates in a second (no batch-mixing layers, so this equals the authors' three forwards):
the penalty's double backward then runs through the interpolates' forward only. (One forward
of all three, as here before, made it run over three times the batch: the DPE step measured
0.79x of the authors' loop; ``benchmarks/gan.py --only dpe``.)

A-WGAN adaptive lambda (``AdaptiveLambda``, one per critic, buffers in the state dict): after
every critic update the moving average ``m = 0.99 m + 0.01 P`` (``P`` = the penalty without
its weight, i.e. the weighted penalty / lambda; the first ``ignore`` updates are left out, 1
as the authors); when ``m > 0.05`` and no change happened for the last ``cooldown`` (50)
updates, lambda doubles and ``m`` restarts at 0 (``grow``, the authors' code).
``grow_shrink`` also halves lambda when the (bias-corrected) average falls under
``lower_bound`` (the paper's text describes lowering; its value is not in the authors' code:
1e-3 here). ``off`` keeps lambda fixed. The update runs on the device (no host sync).

Generator: ``identity_weight`` (1e3) x (MSE(G_X(x), x) + MSE(G_Y(y), y)) (the authors' "data
term": the output stays close to its own input), ``cycle_weight`` (1e4) x (MSE(G_Y(G_X(x)),
x) + MSE(G_X(G_Y(y)), y)), and with ``paired_weight > 0`` (supervised DPE, paired data only)
``paired_weight`` x (MSE(G_X(x), y) + MSE(G_Y(y), x)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.losses.gan import interpolates, penalty_of_gradient
from src.utils.errors import UserError

ADAPTIVE_MODES = ("grow", "grow_shrink", "off")


def one_sided_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    *,
    alpha: Tensor | None = None,
    power: int = 1,
    grad_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(scores_real, scores_fake, P)`` from a critic forward on ``cat(real, fake)`` and one
    on ``x_hat``.

    ``P = mean(max(0, grad_scale * ||grad_x critic(x_hat)|| - 1) ** power)`` with ``x_hat =
    alpha * real + (1 - alpha) * fake.detach()`` (``alpha`` (B, 1, 1, 1), drawn from torch's
    global RNG when not given), the norm of each flattened sample's gradient. The gradient graph
    is kept, so ``P`` reaches the critic's parameters (a second-order gradient). ``fake`` is
    detached; the critic must score every sample on its own (no batch norm)."""
    b = real.shape[0]
    fake = fake.detach()
    x_hat = interpolates(real, fake, alpha, "sample").requires_grad_(True)
    scores, scores_hat = critic(torch.cat([real, fake], 0)), critic(x_hat)
    if scores.shape[0] != 2 * b or scores_hat.shape[0] != b:
        got = (tuple(scores.shape), tuple(scores_hat.shape))
        raise ValueError(f"the critic must give one score per image, got {got} for {2 * b} + {b}")
    (grad,) = torch.autograd.grad(scores_hat.sum(), x_hat, create_graph=True)
    penalty = penalty_of_gradient(grad, one_sided=True, power=power, scale=grad_scale)
    return scores[:b], scores[b:], penalty


class AdaptiveLambda(nn.Module):
    """A-WGAN's penalty weight for one critic (see the module docstring). ``value`` is the
    current lambda (a 0-d float64 buffer); ``update(P)`` feeds one critic update's unweighted
    penalty and returns whether lambda changed (a 0-d bool tensor, on the device)."""

    def __init__(
        self,
        init: float = 10.0,
        mode: str = "grow",
        decay: float = 0.99,
        bound: float = 0.05,
        lower_bound: float = 1e-3,
        factor: float = 2.0,
        cooldown: int = 50,
        ignore: int = 1,
    ):
        super().__init__()
        if mode not in ADAPTIVE_MODES:
            raise UserError(
                f"loss.adaptive_lambda={mode!r}: use one of {', '.join(ADAPTIVE_MODES)}"
            )
        if init <= 0 or factor <= 1 or not 0 <= decay < 1:
            raise UserError(
                f"loss: lambda_init={init} must be > 0, lambda_factor={factor} > 1, "
                f"gp_decay={decay} in [0, 1)"
            )
        self.mode, self.decay, self.bound, self.lower_bound = (
            mode,
            float(decay),
            float(bound),
            float(lower_bound),
        )
        self.factor, self.cooldown_updates, self.ignore = float(factor), int(cooldown), int(ignore)
        f64 = dict(dtype=torch.float64)
        self.register_buffer("value", torch.tensor(float(init), **f64))
        self.register_buffer("average", torch.zeros((), **f64))  # moving average of P
        self.register_buffer("fed", torch.zeros((), dtype=torch.long))  # P values in the average
        self.register_buffer("cooldown", torch.zeros((), dtype=torch.long))  # updates to wait
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # updates seen
        self.register_buffer("changes", torch.zeros((), dtype=torch.long))  # lambda changes made

    @torch.no_grad()
    def update(self, penalty: Tensor) -> Tensor:
        p = penalty.detach().to(self.average.device, torch.float64)
        if self.mode == "off":
            self.updates += 1
            return torch.zeros((), dtype=torch.bool, device=p.device)
        feed = self.updates >= self.ignore
        self.average.copy_(
            torch.where(feed, self.average * self.decay + p * (1 - self.decay), self.average)
        )
        self.fed += feed.long()
        ready = self.cooldown == 0
        grow = ready & (self.average > self.bound)
        change, scale = grow, torch.where(grow, self.factor, 1.0)
        if self.mode == "grow_shrink":
            # the average starts at 0: correct its bias before comparing with a lower bound
            weight = 1 - torch.pow(
                torch.tensor(self.decay, dtype=torch.float64, device=p.device), self.fed
            )
            corrected = self.average / weight.clamp(min=1e-12)
            shrink = (
                ready & ~grow & (self.fed >= self.cooldown_updates) & (corrected < self.lower_bound)
            )
            change = grow | shrink
            scale = torch.where(shrink, 1 / self.factor, scale)
        self.value.mul_(scale)
        self.average.masked_fill_(change, 0.0)
        self.fed.masked_fill_(change, 0)
        self.cooldown.copy_(torch.where(change, self.cooldown_updates, self.cooldown))
        self.cooldown.copy_((self.cooldown - 1).clamp(min=0))
        self.updates += 1
        self.changes += change.long()
        return change


class DPELoss(nn.Module):
    """The two-way DPE objective (see the module docstring); holds one ``AdaptiveLambda`` per
    critic (``lambda_x`` for D_X, ``lambda_y`` for D_Y)."""

    kind = "dpe"

    def __init__(
        self,
        identity_weight: float = 1e3,
        cycle_weight: float = 1e4,
        paired_weight: float = 0.0,
        lambda_init: float = 10.0,
        adaptive_lambda: str = "grow",
        gp_decay: float = 0.99,
        gp_bound: float = 0.05,
        gp_lower_bound: float = 1e-3,
        lambda_factor: float = 2.0,
        lambda_cooldown: int = 50,
        lambda_ignore: int = 1,
        penalty_power: int = 1,
        unit_range: bool = True,
    ):
        super().__init__()
        for key, value in (
            ("identity_weight", identity_weight),
            ("cycle_weight", cycle_weight),
            ("paired_weight", paired_weight),
        ):
            if value < 0:
                raise UserError(f"loss.{key}={value}: must be >= 0 (0 = off)")
        if penalty_power not in (1, 2):
            raise UserError(f"loss.penalty_power={penalty_power}: use 1 (the authors') or 2")
        self.identity_weight, self.cycle_weight = float(identity_weight), float(cycle_weight)
        self.paired_weight, self.penalty_power = float(paired_weight), int(penalty_power)
        self.unit_range = bool(unit_range)
        common = dict(
            init=lambda_init,
            mode=adaptive_lambda,
            decay=gp_decay,
            bound=gp_bound,
            lower_bound=gp_lower_bound,
            factor=lambda_factor,
            cooldown=lambda_cooldown,
            ignore=lambda_ignore,
        )
        self.lambda_x, self.lambda_y = AdaptiveLambda(**common), AdaptiveLambda(**common)

    # [-1, 1] images: d/d(x01) = 2 d/dx; MSE on [0, 1] = MSE / 4
    @property
    def grad_scale(self) -> float:
        return 2.0 if self.unit_range else 1.0

    def mse(self, a: Tensor, b: Tensor) -> Tensor:
        return F.mse_loss(a, b) * (0.25 if self.unit_range else 1.0)

    def critic(
        self,
        critic: Callable[[Tensor], Tensor],
        real: Tensor,
        fake: Tensor,
        weight: AdaptiveLambda,
        alpha=None,
    ) -> dict[str, Tensor]:
        """One critic's loss ``mean(D(fake)) - mean(D(real)) + lambda * P`` (real high, fake
        low) with its parts: ``w`` (the Wasserstein estimate ``mean(D(real)) -
        mean(D(fake))``) and ``penalty`` (P, unweighted)."""
        s_real, s_fake, p = one_sided_penalty(
            critic, real, fake, alpha=alpha, power=self.penalty_power, grad_scale=self.grad_scale
        )
        w = s_real.mean() - s_fake.mean()
        return {"loss": -w + weight.value.to(p.dtype) * p, "w": w, "penalty": p}

    def generator(
        self,
        score_fake_y: Tensor,
        score_fake_x: Tensor,
        real_x: Tensor,
        real_y: Tensor,
        fake_y: Tensor,
        fake_x: Tensor,
        rec_x: Tensor,
        rec_y: Tensor,
        paired: bool = False,
    ) -> dict[str, Tensor]:
        """``score_fake_y = D_Y(G_X(x))``, ``score_fake_x = D_X(G_Y(y))``, ``fake_y = G_X(x)``,
        ``fake_x = G_Y(y)``, ``rec_x = G'_Y(G_X(x))``, ``rec_y = G'_X(G_Y(y))``. Returns
        ``{"loss": total, <each term detached>}``."""
        g_adv = -score_fake_y.mean() - score_fake_x.mean()
        identity = self.mse(fake_y, real_x) + self.mse(fake_x, real_y)
        cycle = self.mse(rec_x, real_x) + self.mse(rec_y, real_y)
        total = g_adv + self.identity_weight * identity + self.cycle_weight * cycle
        out = {"g_adv": g_adv.detach(), "g_identity": identity.detach(), "g_cycle": cycle.detach()}
        if self.paired_weight > 0:
            if not paired:
                raise UserError(
                    "loss.paired_weight > 0 needs paired training data (dataset.mode=paired)"
                )
            supervised = self.mse(fake_y, real_y) + self.mse(fake_x, real_x)
            total = total + self.paired_weight * supervised
            out["g_paired"] = supervised.detach()
        return {"loss": total, **out}
