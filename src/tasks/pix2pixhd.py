"""pix2pixHD trainer (Wang et al. 2018; NVIDIA/pix2pixHD ``pix2pixHD_model.py`` + ``train.py``):
how the global generator / local enhancer, the multi-scale discriminator, the pix2pixHD loss,
a label-map dataset and the image-quality metrics meet.

Networks: the generator input ``A`` is the dataset's encoding (one-hot labels + instance
edges, or RGB), its channel count taken from the dataset: ``generator`` / ``discriminator``
may be given built, or as factories (Hydra ``_partial_: true``, the configs' way) that the Task
calls with ``input_nc`` (the discriminator sees ``cat(A, image)``: ``input_nc + 3``) unless the
config sets it, when it must agree.

Training step, in the reference's order: ``fake = G(A)``; one forward pass for all terms, D as
it is before this step's updates: ``D(A, fake.detach())`` (through the image pool when
``pool_size`` > 0; the reference's default is 0), ``D(A, B)`` and ``D(A, fake)``; then the
generator's backward + step (GAN + feature matching against the real pass's features + VGG),
then the discriminator's (``0.5 * (fake + real)``). The engine restricts each backward to its
own optimizer group, as the reference's ``zero_grad`` before each backward does.

``niter_fix_global`` (local enhancer only): for the first N epochs only the outermost enhancer
learns (the reference builds its G optimizer over those parameters alone): ``on_train_epoch_start``
switches it on and off, so a resumed run does the same; the global part's gradients are then
dropped before G's step (computed, as in the reference, so DDP sees a fixed graph). At the end
of epoch N the reference makes a fresh Adam over all of G (``update_fixed_params``); here the
G optimizer's state is cleared at that point, the same restart of the moments.

Evaluation: PSNR, SSIM, L1 of G(A) against B over the val images and a Frechet distance on a
local feature network (``fd_weights``: ``fd_inception``) or a fixed random one (``fd_random``,
never called FID); ``monitor = val/psnr`` (max). W&B grids: labels | G(A) | B. ``predict_one``
synthesises a photo from a label map file (see ``LabelToImageDataset.encode_file``); export
writes the generator to ONNX (input ``images``: the encoded (B, input_nc, H, W) map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from src.data.image_translation import to_uint8
from src.metrics.image_quality import ImageQuality, feature_network
from src.models.gan.export import export_generator_onnx
from src.models.gan.generators import GeneratorSizeError, check_input_size
from src.models.gan.pool import ImagePool
from src.tasks.base import Task, unwrap
from src.utils.errors import UserError


def _build(factory, input_nc: int, what: str) -> nn.Module:
    """A network given built, or built from its factory with ``input_nc``."""
    if isinstance(factory, nn.Module):
        got = _first_in_channels(factory)
        if got is not None and got != input_nc:
            raise UserError(f"model.{what} takes {got} input channels, the data gives {input_nc}")
        return factory
    given = getattr(factory, "keywords", {}).get("input_nc")
    if given is not None and int(given) != input_nc:
        raise UserError(
            f"model.{what}.input_nc={given}, but the dataset gives {input_nc} channels "
            "(label_nc one-hot + 1 instance-edge channel, or 3 for label_nc 0; the discriminator "
            "adds the 3 image channels); set it to null to follow the dataset"
        )
    return factory(input_nc=input_nc)


def _check_size(generator: nn.Module, size: tuple[int, int], where: str) -> None:
    """Sides that are multiples of the generator's downsampling (one line otherwise), and at
    least twice that: the innermost residual blocks pad by reflection, which needs 2 px."""
    w, h = size
    check_input_size(generator, h, w, where)
    m = int(getattr(generator, "size_multiple", 1))
    if min(w, h) < 2 * m:
        name = getattr(generator, "name", type(generator).__name__)
        raise GeneratorSizeError(
            f"generator {name} cannot take {h}x{w} images{where}: its sides must be multiples "
            f"of {m} and at least {2 * m} (its innermost feature map is reflection-padded); use "
            "larger images (dataset.load_size) or fewer downsamplings"
        )


def _first_in_channels(net: nn.Module) -> int | None:
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


class Pix2PixHDTask(Task):
    automatic_optimization = False
    accepts = {"loss": ("pix2pixhd",), "dataset": ("label_to_image",)}
    ddp_modules = ("generator", "discriminator")
    ema_modules = ("generator",)
    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(
        self,
        generator,
        discriminator,
        loss: nn.Module,
        data: dict[str, Any],
        niter_fix_global: int = 0,
        pool_size: int = 0,
        output_nc: int = 3,
        fd_weights: str | None = None,
        fd_seed: int = 0,
        num_visualize: int = 4,
    ):
        super().__init__(loss, data)
        dataset = self._dataset()
        self.input_nc = int(getattr(dataset, "input_nc", 0) or 0)
        if not self.input_nc:
            raise UserError("pix2pixHD needs a label-map dataset (dataset=cityscapes_hd, ...)")
        self.generator = _build(generator, self.input_nc, "generator")
        self.discriminator = _build(discriminator, self.input_nc + output_nc, "discriminator")
        self.niter_fix_global = int(niter_fix_global)
        if self.niter_fix_global > 0 and not self._local_parameters():
            raise UserError(
                f"model.niter_fix_global={niter_fix_global} trains a local enhancer alone first; "
                "it needs model.generator.name=local (or set niter_fix_global=0)"
            )
        self.fix_global = False
        self.fake_pool = ImagePool(pool_size)
        self.num_visualize = int(num_visualize)
        self.image_size: tuple[int, int] | None = None  # (w, h) of the evaluation inputs
        for split, ds in self.data.items():  # before any training: one clear line
            size = ds.output_size()
            _check_size(self.generator, size, f" (dataset {split} inputs are {size[0]}x{size[1]})")
            if split == "val" or self.image_size is None:
                self.image_size = size
        object.__setattr__(self, "features", feature_network(fd_weights, fd_seed))

    def _dataset(self):
        return self.data.get("val") or self.data.get("train")

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"G": list(self.generator.parameters()), "D": list(self.discriminator.parameters())}

    def on_train_epoch_start(self, epoch: int) -> None:
        self.fix_global = epoch < self.niter_fix_global

    def on_train_epoch_end(self, epoch: int) -> None:
        if self.niter_fix_global and epoch + 1 == self.niter_fix_global:
            g = self.optimizers().get("G")
            if g is not None:  # the reference's update_fixed_params: a fresh Adam over all of G
                g.state.clear()

    def _local_parameters(self) -> list[nn.Parameter]:
        return list(getattr(unwrap(self.generator), "local_parameters", list)())

    def _drop_global_grads(self) -> None:
        local = {id(p) for p in self._local_parameters()}
        for p in self.generator.parameters():
            if id(p) not in local:
                p.grad = None

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        real_a, real_b = batch["A"], batch["B"]
        fake_b = self.generator(real_a)
        # every discriminator pass before any update, as the reference's single forward
        pred_fake_pool = self.discriminator(self.fake_pool(torch.cat([real_a, fake_b.detach()], 1)))
        pred_real = self.discriminator(torch.cat([real_a, real_b], 1))
        pred_fake = unwrap(self.discriminator)(torch.cat([real_a, fake_b], 1))
        d_loss = self.loss.discriminator(pred_real, pred_fake_pool)
        g = self.loss.generator(pred_fake, pred_real, fake_b, real_b)

        opt.backward(g["loss"], "G")
        if self.fix_global:
            self._drop_global_grads()
        opt.step("G")
        opt.backward(d_loss, "D")
        opt.step("D")
        out = {k: v for k, v in g.items() if k != "loss"}
        return {"d_loss": d_loss.detach(), "g_loss": g["loss"].detach(), **out}

    # ---- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        metric = ImageQuality(self.features)
        generator = unwrap(self.generator)
        for batch in loader:
            metric.update(generator(batch["A"]), batch["B"])
        return metric.compute()

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        a, b = batch["A"][: self.num_visualize], batch["B"][: self.num_visualize]
        fake = unwrap(self.generator)(a)
        labels = self._dataset().label_pictures(a)
        pictures = [
            (np.concatenate([x, to_uint8(y), to_uint8(z)], axis=1), "labels | G(labels) | photo")
            for x, y, z in zip(labels, fake, b)
        ]
        return {"synthesis": pictures}

    # ---- inference ------------------------------------------------------------------
    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        """A photo synthesised from one label map (ids, or palette colours; its instance map
        found beside it, see ``encode_file``), written at the input's size as
        ``<stem>_synthesized.png``."""
        dataset = self._dataset()
        a, size, record = dataset.encode_file(path)
        generator = unwrap(self.generator)
        device = next(generator.parameters()).device
        _check_size(generator, (a.shape[2], a.shape[1]), f" (the input {path})")
        fake = Image.fromarray(to_uint8(generator(a[None].to(device))[0]))
        if fake.size != tuple(size):
            fake = fake.resize(tuple(size), Image.BICUBIC)
        picture = Path(out_dir) / f"{stem}_synthesized.png"
        fake.save(picture)
        return {"path": str(path), "synthesized": str(picture), "size": list(size), **record}

    def export(self, out_dir: Path) -> list[Path]:
        w, h = self.image_size or (256, 256)
        path = export_generator_onnx(
            unwrap(self.generator),
            Path(out_dir) / "generator.onnx",
            sample_size=(h, w),
            input_nc=self.input_nc,
        )
        return [path]
