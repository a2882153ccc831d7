"""DeblurGAN v1 (Kupyn et al. 2018; KupynOrest/DeblurGAN ``conditional_gan_model``) and
DeblurGAN-v2 (Kupyn et al. 2019; VITA-Group/DeblurGANv2 ``train.py``) trainers: how a residual
deblurring generator, unconditional critics, the DeblurGAN losses (src/losses/deblurgan.py) and
blurred / sharp pairs (src/data/gopro.py) meet.

v1 training step (the reference's ``optimize_parameters``): ``fake = G(blurred)`` once; then
``critic_updates`` critic updates on that batch (default: 5 with ``wgan_gp``, 1 otherwise, as
the reference), each ``loss.critic(D, sharp, fake.detach())`` (WGAN-GP: Wasserstein term +
gradient penalty), backward into D only, D steps; then the generator through the updated D,
``adv + 100 x content``, backward into G only, G steps. ``opt.updates`` counts both (5 D
updates per G update), and is restored on resume.

v2 training step (the reference's ``_run_epoch``): ``fake = G(blurred)``; one update of the two
critics (a PatchGAN with ``n_layers=3`` and a full-image D with ``n_layers=5``, one optimizer
``D`` over both, as the reference), ``adv_lambda x mean(critic losses)``; then G on
``content + adv_lambda x mean(generator losses)``. The backbone is frozen for the first
``warmup_epochs`` epochs (``on_train_epoch_start``, so a resumed run freezes it the same way);
the reference then builds a new G optimizer and scheduler (its Adam moments and its decay start
afresh), here the same optimizer continues with the frozen parameters joining it.

Test time: the generators run in eval mode (the engine sets it): Dropout off and BatchNorm on
running statistics (the v1 reference never calls ``eval()``, so its dropout stays on). A frame
is padded (reflect, right / bottom) to the generator's size multiple and the output cropped
back, so evaluation and prediction take whole frames (the GoPro protocol). Evaluation: PSNR and
SSIM (11x11 Gaussian, sigma 1.5; src/metrics/image_quality.py) of the restored against the
sharp frame, per image and averaged, on outputs rounded to 8 bits (``quantize_eval``: the
protocol scores saved PNGs), the same of the blurred input, and the gains
``psnr_gain = psnr - psnr_blurred`` and ``ssim_gain``. ``monitor = val/psnr`` (max).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from src.data.cub import open_rgb
from src.data.image_translation import to_uint8
from src.metrics.image_quality import ImageQuality
from src.models.gan import check_input_size, export_generator_onnx
from src.tasks.base import Task, unwrap
from src.utils.errors import UserError


def pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x`` padded right / bottom to multiples of ``m`` (reflect; replicate where the pad is
    not smaller than the side), and its original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] rounded to the 8-bit levels ``to_uint8`` writes."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


class DeblurTask(Task):
    """What v1 and v2 share: data, test-time restoration, metrics, pictures, predict, export."""

    automatic_optimization = False
    accepts = {"dataset": ("blur_sharp", "paired_images")}
    ema_modules = ("generator",)
    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(
        self,
        generator: nn.Module,
        loss: nn.Module,
        data: dict[str, Any],
        num_visualize: int = 4,
        quantize_eval: bool = True,
    ):
        super().__init__(loss, data)
        self.generator = generator
        self.num_visualize, self.quantize_eval = int(num_visualize), bool(quantize_eval)
        self.size_multiple = int(getattr(generator, "size_multiple", 1))
        self.image_size = None
        for split, dataset in self.data.items():  # before any training: one clear line
            size = getattr(dataset, "crop_size", None)
            if size and split == "train":
                check_input_size(generator, size, size, f" (dataset.image_size={size})")
            self.image_size = self.image_size or (int(size) if size else None)

    def _device(self) -> torch.device:
        return next(unwrap(self.generator).parameters()).device

    @torch.no_grad()
    def restore(self, blurred: torch.Tensor) -> torch.Tensor:
        """G(blurred) on whole frames: padded to the size multiple, cropped back."""
        x, (h, w) = pad_to_multiple(blurred, self.size_multiple)
        return unwrap(self.generator)(x)[..., :h, :w]

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        restored, blurred = ImageQuality(), ImageQuality()
        for batch in loader:
            out = self.restore(batch["A"])
            restored.update(quantize(out) if self.quantize_eval else out, batch["B"])
            blurred.update(batch["A"], batch["B"])
        out = restored.compute()
        base = blurred.compute()
        out.update(psnr_blurred=base["psnr"], ssim_blurred=base["ssim"])
        out.update(psnr_gain=out["psnr"] - base["psnr"], ssim_gain=out["ssim"] - base["ssim"])
        return out

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        a, b = batch["A"][: self.num_visualize], batch["B"][: self.num_visualize]
        fake = self.restore(a)
        pictures = [
            (
                np.concatenate([to_uint8(x), to_uint8(y), to_uint8(z)], 1),
                "blurred | restored | sharp",
            )
            for x, y, z in zip(a, fake, b)
        ]
        return {"deblurring": pictures}

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        """Deblur one image file (whole frame); written as ``<stem>_deblurred.png`` at the
        input's size."""
        dataset = self.data.get("val") or self.data.get("train")
        if dataset is None or not hasattr(dataset, "preprocess"):
            raise RuntimeError(f"{type(self).__name__} predict needs a dataset with preprocess()")
        image = open_rgb(path)
        x = dataset.preprocess(image)[None].to(self._device())
        out = Image.fromarray(to_uint8(self.restore(x)[0]))
        if out.size != image.size:
            out = out.resize(image.size, Image.BICUBIC)
        picture = Path(out_dir) / f"{stem}_deblurred.png"
        out.save(picture)
        return {"path": str(path), "deblurred": str(picture), "size": list(image.size)}

    def export(self, out_dir: Path) -> list[Path]:
        size = self.image_size or 256
        size = -(-size // self.size_multiple) * self.size_multiple
        path = export_generator_onnx(
            unwrap(self.generator), Path(out_dir) / "generator.onnx", sample_size=(size, size)
        )
        return [path]


def _one_window(opt: Any, model: str) -> None:
    if opt.accumulate != 1:
        raise UserError(
            f"model={model} steps its critic several times per batch: it needs "
            f"trainer.accumulate_grad_batches=1 (got {opt.accumulate})"
        )


class DeblurGANTask(DeblurTask):
    """DeblurGAN v1 (see the module docstring)."""

    accepts = {"loss": ("deblurgan",), "dataset": ("blur_sharp", "paired_images")}
    ddp_modules = ("generator", "discriminator")

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: nn.Module,
        data: dict[str, Any],
        critic_updates: int | None = None,
        num_visualize: int = 4,
        quantize_eval: bool = True,
    ):
        super().__init__(generator, loss, data, num_visualize, quantize_eval)
        self.discriminator = discriminator
        if critic_updates is None:
            critic_updates = 5 if getattr(loss, "gan_mode", None) == "wgan_gp" else 1
        if int(critic_updates) < 1:
            raise UserError(f"model.critic_updates={critic_updates}: use 1 or more")
        self.critic_updates = int(critic_updates)

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"G": list(self.generator.parameters()), "D": list(self.discriminator.parameters())}

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        if self.critic_updates > 1:
            _one_window(opt, "deblurgan")
        blurred, sharp = batch["A"], batch["B"]
        fake = self.generator(blurred)
        for _ in range(self.critic_updates):
            d = self.loss.critic(self.discriminator, sharp, fake)
            opt.backward(d["loss"], "D")
            opt.step("D")
        g = self.loss.generator(unwrap(self.discriminator), fake, sharp)
        opt.backward(g["loss"], "G")
        opt.step("G")
        logs = {f"d_{k}" if k != "loss" else "d_loss": v.detach() for k, v in d.items()}
        logs.update({k: v for k, v in g.items() if k != "loss"}, g_loss=g["loss"].detach())
        return logs


class DeblurGANv2Task(DeblurTask):
    """DeblurGAN-v2 (see the module docstring)."""

    accepts = {"loss": ("deblurgan_v2",), "dataset": ("blur_sharp", "paired_images")}
    ddp_modules = ("generator", "patch_discriminator", "full_discriminator")

    def __init__(
        self,
        generator: nn.Module,
        patch_discriminator: nn.Module,
        full_discriminator: nn.Module | None,
        loss: nn.Module,
        data: dict[str, Any],
        warmup_epochs: int = 3,
        num_visualize: int = 4,
        quantize_eval: bool = True,
    ):
        super().__init__(generator, loss, data, num_visualize, quantize_eval)
        self.patch_discriminator = patch_discriminator
        self.full_discriminator = full_discriminator
        if full_discriminator is None:  # d_name=patch_gan
            self.ddp_modules = ("generator", "patch_discriminator")
        self.warmup_epochs = int(warmup_epochs)

    def _critics(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self.ddp_modules[1:]]

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        critics = [p for c in self._critics() for p in c.parameters()]
        return {"G": list(self.generator.parameters()), "D": critics}

    def on_train_epoch_start(self, epoch: int) -> None:
        generator = unwrap(self.generator)
        if hasattr(generator, "freeze_backbone"):
            generator.freeze_backbone(epoch < self.warmup_epochs)

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        blurred, sharp = batch["A"], batch["B"]
        fake = self.generator(blurred)
        d = self.loss.critic(self._critics(), sharp, fake)
        opt.backward(d["loss"], "D")
        opt.step("D")
        g = self.loss.generator([unwrap(c) for c in self._critics()], fake, sharp)
        opt.backward(g["loss"], "G")
        opt.step("G")
        logs = {f"d_{k}" if k != "loss" else "d_loss": v.detach() for k, v in d.items()}
        logs.update({k: v for k, v in g.items() if k != "loss"}, g_loss=g["loss"].detach())
        return logs
