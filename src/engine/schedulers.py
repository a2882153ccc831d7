"""Learning-rate schedules torch does not ship under a config-friendly name."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler


class LinearDecayLR(LRScheduler):
    """Constant, then linear decay: pix2pix / CycleGAN's ``lr_policy=linear``
    (junyanz/pytorch-CycleGAN-and-pix2pix ``networks.get_scheduler``). After ``e`` scheduler
    steps (epochs) the learning rate is ``base_lr * f(e)`` with
    ``f(e) = 1 - max(0, e + epoch_count - constant_epochs) / (decay_epochs + 1)``: the base
    rate for the first ``constant_epochs`` epochs (with ``epoch_count=1``), then falling by
    ``1 / (decay_epochs + 1)`` an epoch, to ``1 / (decay_epochs + 1)`` of it in the last one.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        constant_epochs: int,
        decay_epochs: int,
        epoch_count: int = 1,
        last_epoch: int = -1,
    ):
        if constant_epochs < 0 or decay_epochs < 0:
            raise ValueError("LinearDecayLR: constant_epochs and decay_epochs must be >= 0")
        self.constant_epochs, self.decay_epochs = int(constant_epochs), int(decay_epochs)
        self.epoch_count = int(epoch_count)
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        over = max(0, epoch + self.epoch_count - self.constant_epochs)
        return max(0.0, 1.0 - over / float(self.decay_epochs + 1))

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


class LinearDecayToMinLR(LRScheduler):
    """DeblurGAN-v2's ``LinearDecay`` (its ``schedulers.py``): the base rate before
    ``start_epoch``, then linearly down to ``min_lr``. The reference's slope is
    ``(base - min_lr) / num_epochs`` per epoch, so over ``num_epochs`` epochs it never reaches
    ``min_lr`` (at epoch 199 of 200 with start 50 it is still ~25 % of the base rate);
    by default the slope is ``(base - min_lr) / (num_epochs - 1 - start_epoch)``, reaching
    ``min_lr`` in the last epoch; ``reference_slope=true`` is the reference's.
    Stepped once an epoch."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        start_epoch: int = 50,
        num_epochs: int = 200,
        min_lr: float = 1e-7,
        reference_slope: bool = False,
        last_epoch: int = -1,
    ):
        self.start_epoch, self.num_epochs = int(start_epoch), int(num_epochs)
        self.min_lr, self.reference_slope = float(min_lr), bool(reference_slope)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        e = self.last_epoch
        if e < self.start_epoch:
            return list(self.base_lrs)
        span = self.num_epochs if self.reference_slope else self.num_epochs - 1 - self.start_epoch
        t = (e - self.start_epoch) / max(span, 1)
        return [max(self.min_lr, base - (base - self.min_lr) * t) for base in self.base_lrs]
