"""pix2pix trainer (Isola et al. 2017; junyanz/pytorch-CycleGAN-and-pix2pix ``pix2pix_model``):
how a U-Net generator, a conditional PatchGAN, the pix2pix loss, an aligned A|B dataset and
the image-quality metrics meet.

Training step (manual optimisation, the reference's order): ``fake_B = G(A)``; the
discriminator first, ``0.5 * (GAN(D(A, fake_B.detach()), fake) + GAN(D(A, B), real))`` with
D on ``cat(A, B)`` along channels, backward into D only, D steps; then the generator,
``GAN(D(A, fake_B), real) + lambda_L1 * L1(fake_B, B)`` through the *updated* D, backward
into G only (the engine restricts each backward to its own optimizer group, so D's
gradients are untouched; the reference freezes D with ``requires_grad=False`` instead), G
steps. D sees the fake and the real batch in two forwards, so its BatchNorm statistics are
those of each batch, as in the reference. ``pool_size > 0`` shows D fake pairs drawn from an
``ImagePool`` of earlier ``cat(A, G(A))`` (older versions of the reference did; its pix2pix
default is 0); the pool is in the Task's state dict, so a resumed run continues exactly.

Test time: the reference runs its generator with dropout on (its ``test.py`` does not call
``eval()``); here BatchNorm uses its running statistics (eval mode) and dropout stays on with
``test_dropout=True`` (the default), drawn from a fixed seed (``eval_seed``) so evaluation and
prediction are reproducible; ``test_dropout=false`` turns it off. Export is always in eval mode
(a deterministic graph).

Evaluation: PSNR, SSIM and L1 of G(A) against B, averaged over the val images, and a Frechet
distance on features of a local network file (``fd_weights``: ``fd_inception``) or of a fixed
random network (``fd_random``). ``monitor = val/psnr`` (max).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from src.data.cub import open_rgb
from src.data.image_translation import split_pair, to_uint8
from src.metrics.image_quality import ImageQuality, feature_network
from src.models.gan import ImagePool, check_input_size, export_generator_onnx
from src.tasks.base import Task, unwrap


class Pix2PixTask(Task):
    automatic_optimization = False
    accepts = {"loss": ("pix2pix",), "dataset": ("paired_images",)}
    ddp_modules = ("generator", "discriminator")
    ema_modules = ("generator",)
    monitor = "val/psnr"
    monitor_mode = "max"

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: nn.Module,
        data: dict[str, Any],
        test_dropout: bool = True,
        eval_seed: int = 0,
        fd_weights: str | None = None,
        fd_seed: int = 0,
        num_visualize: int = 4,
        predict_pair: bool = False,
        pool_size: int = 0,
    ):
        super().__init__(loss, data)
        self.generator, self.discriminator = generator, discriminator
        # history of fake (A, G(A)) pairs shown to D (0 = off, the reference's pix2pix default)
        self.fake_pool = ImagePool(pool_size)
        self.test_dropout, self.eval_seed = bool(test_dropout), int(eval_seed)
        self.num_visualize, self.predict_pair = int(num_visualize), bool(predict_pair)
        self.image_size = None
        for dataset in self.data.values():  # before any training: one clear line
            size = getattr(dataset, "crop_size", None)
            if size:
                check_input_size(generator, size, size, f" (dataset.image_size={size})")
                self.image_size = self.image_size or int(size)
        # the feature network of the Frechet distance: frozen, not part of checkpoints
        object.__setattr__(self, "features", feature_network(fd_weights, fd_seed))

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"G": list(self.generator.parameters()), "D": list(self.discriminator.parameters())}

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        real_a, real_b = batch["A"], batch["B"]
        fake_b = self.generator(real_a)

        # discriminator: fake (detached) and real pairs, conditioned on A
        pred_fake = self.discriminator(self.fake_pool(torch.cat([real_a, fake_b.detach()], 1)))
        pred_real = self.discriminator(torch.cat([real_a, real_b], 1))
        d_loss = self.loss.discriminator(pred_real, pred_fake)
        opt.backward(d_loss, "D")
        opt.step("D")

        # generator: fool the updated discriminator and stay close to B
        pred = unwrap(self.discriminator)(torch.cat([real_a, fake_b], 1))
        g = self.loss.generator(pred, fake_b, real_b)
        opt.backward(g["loss"], "G")
        opt.step("G")
        out = {k: v for k, v in g.items() if k != "loss"}
        return {"d_loss": d_loss.detach(), "g_loss": g["loss"].detach(), **out}

    # ---- test-time generator ----------------------------------------------------------
    @contextmanager
    def _test_mode(self, device: torch.device):
        """Dropout on (``test_dropout``) from a fixed seed, without touching the run's RNG."""
        generator = unwrap(self.generator)
        dropouts = [m for m in generator.modules() if isinstance(m, nn.Dropout)]
        states = [m.training for m in dropouts]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.eval_seed)
            for m in dropouts:
                m.train(self.test_dropout)
            try:
                yield generator
            finally:
                for m, state in zip(dropouts, states):
                    m.train(state)

    def _device(self) -> torch.device:
        return next(unwrap(self.generator).parameters()).device

    @torch.no_grad()
    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """G(A) as at test time (batch of images in [-1, 1])."""
        with self._test_mode(images.device) as generator:
            return generator(images)

    # ---- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        metric = ImageQuality(self.features)
        with self._test_mode(self._device()) as generator:
            for batch in loader:
                metric.update(generator(batch["A"]), batch["B"])
        return metric.compute()

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        a, b = batch["A"][: self.num_visualize], batch["B"][: self.num_visualize]
        fake = self.translate(a)
        pictures = [
            (np.concatenate([to_uint8(x), to_uint8(y), to_uint8(z)], axis=1), "A | fake B | B")
            for x, y, z in zip(a, fake, b)
        ]
        return {"translation": pictures}

    # ---- inference ------------------------------------------------------------------
    def _dataset(self):
        return self.data.get("val") or self.data.get("train")

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        """Translate one A image (``predict_pair=true``: an A|B file, its A half per the
        dataset's direction) at the network size; the picture is written back at the input's
        size as ``<stem>_translated.png``."""
        dataset = self._dataset()
        if dataset is None or not hasattr(dataset, "preprocess"):
            raise RuntimeError("pix2pix predict needs a dataset with preprocess()")
        image = open_rgb(path)
        if self.predict_pair:
            left, right = split_pair(image)
            image = right if getattr(dataset, "direction", "AtoB") == "BtoA" else left
        x = dataset.preprocess(image)[None].to(self._device())
        fake = Image.fromarray(to_uint8(self.translate(x)[0]))
        if fake.size != image.size:
            fake = fake.resize(image.size, Image.BICUBIC)
        picture = Path(out_dir) / f"{stem}_translated.png"
        fake.save(picture)
        return {"path": str(path), "translated": str(picture), "size": list(image.size)}

    def export(self, out_dir: Path) -> list[Path]:
        size = self.image_size or 256
        path = export_generator_onnx(
            unwrap(self.generator), Path(out_dir) / "generator.onnx", sample_size=(size, size)
        )
        return [path]
