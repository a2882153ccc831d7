"""Deep Photo Enhancer trainer (Chen et al. 2018; the authors' TensorFlow code, ported): how two
global U-Net generators with individual batch normalisation, two critics, the two-way A-WGAN
objective (src/losses/dpe.py), FiveK-style data (src/data/fivek.py) and the image-quality
metrics meet.

Networks (the paper's names; dataset ``A`` = X, the input photos, ``B`` = Y, the retouched):
``generator_x`` (G_X: X -> Y, the enhancer), ``generator_y`` (G_Y: Y -> X), ``critic_y`` (D_Y:
real Y against G_X(x)), ``critic_x`` (D_X: real X against G_Y(y)). The config gives one
``generator`` and one ``critic`` factory (``_partial_: true``); the Task builds each twice, in
that order. Each generator is also the paper's G' of its direction: the cycle pass runs it on
the other generator's (clamped) output with ``domain=1``, i.e. the same weights with their own
batch normalisation (src/models/gan/dpe.py).

Training step (manual optimisation, the authors' loop; one batch per step):

1. the critics, every step: ``fake_y = G_X(x)``, ``fake_x = G_Y(y)`` (no gradient), each critic's
   ``mean(D(fake)) - mean(D(real)) + lambda * P`` with the one-sided penalty ``P`` (one sign
   convention for both: real high, fake low, see src/losses/dpe.py), one backward into group
   ``D`` (both critics) and one step; then each critic's ``AdaptiveLambda`` takes its ``P``;
2. the generators, on the steps where the critic counter ``critic_count`` (the authors'
   ``netD_times``; starts at ``-critic_init_steps``) is >= 0 and a multiple of
   ``critic_every`` (``critic_steps``, 50 as the authors: the generators step on the first
   batch and then after every 50 critic updates): the counter restarts at 0, ``fake_y``,
   ``fake_x`` again (now with gradient, through the updated critics, which run unwrapped),
   ``rec_x = G_Y(clamp(fake_y), domain=1)``, ``rec_y = G_X(clamp(fake_x), domain=1)``, the
   generator loss, one backward into group ``G`` (both generators) and one step. The counter
   then advances by one. ``critic_steps_grow`` (1 = off, the authors' value) multiplies
   ``critic_every`` whenever D_X's lambda grows, as the authors' ``netD_times_grow``.

State: the counters are buffers of the Task and the lambdas, their moving averages and
cool-downs buffers of the loss (``loss.lambda_x.*``, ``loss.lambda_y.*``), so all are in the
checkpoint and a resumed run continues exactly. The critic phase does not run the cycle
forwards the authors run there only for their batch-norm side effect (domain-1 statistics then
move on generator steps only).

Evaluation (val = the paired test split): ``psnr`` / ``ssim`` / ``l1`` of ``clamp(G_X(x))``
against the retouched target, the same for the untouched input (``psnr_input``, ...), their
differences ``psnr_gain`` / ``ssim_gain`` (what enhancement adds), and a Frechet distance
(``fd_random``, or ``fd_inception`` from a local weights file) between enhanced and retouched
images. ``monitor = val/psnr``. Grids: input | enhanced | target.

Inference: ``direction`` (``AtoB``: G_X enhances; ``BtoA``: G_Y) picks the generator. Predict
runs it on the whole photo (downscaled so its long side is at most ``predict_max_side``; null =
full size), edge-padded to a multiple of 16 and cropped back: ``<stem>_enhanced.png``. Export:
that generator to ONNX (``generator_<direction>.onnx``, domain 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from src.data.cub import open_rgb
from src.data.image_translation import DIRECTIONS, to_tensor, to_uint8
from src.metrics.image_quality import ImageQuality, feature_network
from src.models.gan import check_input_size, export_generator_onnx
from src.tasks.base import Task, build_twice, unwrap
from src.utils.errors import UserError


def critic_map_size(size: int, halvings: int = 5) -> int:
    """The side of the critic's last feature map for ``size`` px inputs ("same" stride 2)."""
    for _ in range(halvings):
        size = -(-size // 2)
    return size


class DPETask(Task):
    automatic_optimization = False
    accepts = {"loss": ("dpe",), "dataset": ("photo_enhancement",)}
    ddp_modules = ("generator_x", "generator_y", "critic_x", "critic_y")
    ema_modules = ("generator_x", "generator_y")
    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(
        self,
        generator: Callable[[], nn.Module],
        critic: Callable[[], nn.Module],
        loss: nn.Module,
        data: dict[str, Any],
        critic_steps: int = 50,
        critic_init_steps: int = 0,
        critic_steps_grow: float = 1.0,
        direction: str = "AtoB",
        fd_weights: str | None = None,
        fd_seed: int = 0,
        num_visualize: int = 4,
        predict_max_side: int | None = 512,
    ):
        super().__init__(loss, data)
        if direction not in DIRECTIONS:
            raise UserError(f"model.direction={direction!r}: use AtoB or BtoA")
        if critic_steps < 1 or critic_init_steps < 0 or critic_steps_grow < 1:
            raise UserError(
                f"model.critic_steps={critic_steps} must be >= 1, critic_init_steps="
                f"{critic_init_steps} >= 0, critic_steps_grow={critic_steps_grow} >= 1"
            )
        self.generator_x = build_twice(generator, "generator", "DPE")
        self.generator_y = build_twice(generator, "generator", "DPE")
        self.critic_y = build_twice(critic, "critic", "DPE")
        self.critic_x = build_twice(critic, "critic", "DPE")
        self.critic_steps_grow = float(critic_steps_grow)
        self.register_buffer("critic_count", torch.tensor(-int(critic_init_steps)))
        self.register_buffer("critic_every", torch.tensor(int(critic_steps)))
        self.register_buffer("generator_steps", torch.tensor(0))
        self._schedule: list[int] | None = None  # host copy of (count, every), read once
        self.direction, self.num_visualize = direction, int(num_visualize)
        self.predict_max_side = int(predict_max_side) if predict_max_side else None
        self.image_size = None
        head = int(getattr(self.critic_x, "head_kernel", 1))
        # instance norm needs more than one pixel in the critic's last maps
        if any(isinstance(m, nn.InstanceNorm2d) for m in self.critic_x.modules()):
            head = max(head, 2)
        for dataset in self.data.values():  # before any training: one clear line
            size = getattr(dataset, "crop_size", None)
            if size:
                check_input_size(self.generator_x, size, size, f" (dataset.image_size={size})")
                if critic_map_size(size) < head:
                    raise UserError(
                        f"dataset.image_size={size} is too small for the critic: its last maps "
                        f"are {critic_map_size(size)} px, its head (model.critic.head_kernel) and "
                        f"instance norm need {head}; use image_size >= {32 * head} or a smaller "
                        f"head_kernel (the authors: 16 at 512 px)"
                    )
                self.image_size = self.image_size or int(size)
        object.__setattr__(self, "features", feature_network(fd_weights, fd_seed))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._schedule = None
        return result

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """One Adam over both generators, one over both critics."""
        return {
            "G": [*self.generator_x.parameters(), *self.generator_y.parameters()],
            "D": [*self.critic_y.parameters(), *self.critic_x.parameters()],
        }

    def _counters(self) -> list[int]:
        if self._schedule is None:  # one host read after construction or loading
            self._schedule = [int(self.critic_count), int(self.critic_every)]
        return self._schedule

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        x, y = batch["A"], batch["B"]
        g_x, g_y = self.generator_x, self.generator_y
        loss = self.loss

        # critics: real high, fake low, both with their adaptive one-sided penalties
        with torch.no_grad():
            fake_y, fake_x = g_x(x), g_y(y)
        d_y = loss.critic(self.critic_y, y, fake_y, loss.lambda_y)
        d_x = loss.critic(self.critic_x, x, fake_x, loss.lambda_x)
        opt.backward(d_y["loss"] + d_x["loss"], "D")
        out = {
            "d_loss": (d_y["loss"] + d_x["loss"]).detach(),
            "w_y": d_y["w"].detach(),
            "w_x": d_x["w"].detach(),
            "gp_y": d_y["penalty"].detach(),
            "gp_x": d_x["penalty"].detach(),
        }
        if opt.step("D"):
            grew = loss.lambda_x.update(d_x["penalty"])
            loss.lambda_y.update(d_y["penalty"])
            if self.critic_steps_grow != 1 and bool(grew):  # a host read only when enabled
                every = self._counters()
                every[1] = max(1, int(round(every[1] * self.critic_steps_grow)))
                self.critic_every.fill_(every[1])
        out["lambda_y"], out["lambda_x"] = loss.lambda_y.value, loss.lambda_x.value

        # generators, every critic_every-th critic step (and on the first)
        counters = self._counters()
        if counters[0] >= 0 and counters[0] % counters[1] == 0:
            counters[0] = 0
            fake_y, fake_x = g_x(x), g_y(y)
            rec_x = g_y(fake_y.clamp(-1, 1), 1)
            rec_y = g_x(fake_x.clamp(-1, 1), 1)
            paired = bool(getattr(self.data.get("train"), "paired", False))
            g = loss.generator(
                unwrap(self.critic_y)(fake_y),
                unwrap(self.critic_x)(fake_x),
                x,
                y,
                fake_y,
                fake_x,
                rec_x,
                rec_y,
                paired=paired,
            )
            opt.backward(g["loss"], "G")
            if opt.step("G"):
                self.generator_steps += 1
            out.update(
                {"g_loss": g["loss"].detach(), **{k: v for k, v in g.items() if k != "loss"}}
            )
        counters[0] += 1
        self.critic_count.fill_(counters[0])
        return out

    # ---- evaluation -----------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(unwrap(self.generator_x).parameters()).device

    def _generator(self) -> nn.Module:
        """The generator ``direction`` picks (AtoB: G_X, BtoA: G_Y)."""
        return unwrap(self.generator_x if self.direction == "AtoB" else self.generator_y)

    @torch.no_grad()
    def enhance(self, images: torch.Tensor) -> torch.Tensor:
        """``clamp(G_X(x), -1, 1)`` of a batch of input photos in [-1, 1]."""
        return unwrap(self.generator_x)(images).clamp(-1, 1)

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        enhanced, untouched = ImageQuality(self.features), ImageQuality()
        for batch in loader:
            x, y = batch["A"], batch["B"]
            enhanced.update(self.enhance(x), y)
            untouched.update(x, y)
        metrics = dict(enhanced.compute())
        for key, value in untouched.compute().items():
            metrics[f"{key}_input"] = value
        metrics["psnr_gain"] = metrics["psnr"] - metrics["psnr_input"]
        metrics["ssim_gain"] = metrics["ssim"] - metrics["ssim_input"]
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        x, y = batch["A"][: self.num_visualize], batch["B"][: self.num_visualize]
        out = self.enhance(x)
        pictures = [
            (
                np.concatenate([to_uint8(a), to_uint8(b), to_uint8(c)], axis=1),
                "input | enhanced | target",
            )
            for a, b, c in zip(x, out, y)
        ]
        return {"enhancement": pictures}

    # ---- inference ------------------------------------------------------------------
    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        """Run the ``direction`` generator on one photo (see the module docstring)."""
        image = open_rgb(path)
        size = image.size
        side = self.predict_max_side
        if side and max(size) > side:
            scale = side / max(size)
            image = image.resize(
                (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), Image.BICUBIC
            )
        x = to_tensor(image)[None].to(self._device())
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 16, -w % 16
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        with torch.no_grad():
            out = self._generator()(x)[..., :h, :w].clamp(-1, 1)
        picture = Path(out_dir) / f"{stem}_enhanced.png"
        Image.fromarray(to_uint8(out[0])).save(picture)
        return {
            "path": str(path),
            "enhanced": str(picture),
            "direction": self.direction,
            "size": list(size),
            "processed_size": [int(w), int(h)],
        }

    def export(self, out_dir: Path) -> list[Path]:
        """``generator_<direction>.onnx`` of the generator ``direction`` picks."""
        size = self.image_size or 512
        path = Path(out_dir) / f"generator_{self.direction}.onnx"
        return [export_generator_onnx(self._generator(), path, sample_size=(size, size))]
