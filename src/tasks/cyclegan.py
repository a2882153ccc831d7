"""CycleGAN trainer (Zhu et al. 2017; junyanz/pytorch-CycleGAN-and-pix2pix ``cycle_gan_model``):
how two ResNet generators, two unconditional PatchGANs, the CycleGAN loss, an unaligned
trainA/trainB dataset and the translation metrics meet.

Networks, named as the reference: ``generator_a`` (G_A: A -> B), ``generator_b`` (G_B:
B -> A), ``discriminator_a`` (D_A: real B against G_A(A)), ``discriminator_b`` (D_B: real A
against G_B(B)). The config gives one ``generator`` and one ``discriminator`` as factories
(``_partial_: true``, like the reference's single ``--netG`` / ``--netD``); the Task calls
each twice, in the reference's order (G_A, G_B, D_A, D_B), so each network has its own
initialisation. Each of the four is wrapped in DDP on its own (``ddp_modules``).

Training step (manual optimisation, the reference's ``optimize_parameters``): forward
``fake_B = G_A(A)``, ``rec_A = G_B(fake_B)``, ``fake_A = G_B(B)``, ``rec_B = G_A(fake_A)``;
the generators first (GAN through the not yet updated discriminators + cycle + identity, see
src/losses/cyclegan.py), one backward into optimizer group ``G`` (both generators) and one
step: the engine restricts the backward to G's parameters, so the discriminators' gradients
stay untouched (the reference sets their ``requires_grad=False`` instead). Then the
discriminators, each on real images and on fakes drawn from its own ``ImagePool`` (``pool_size``,
50 as the reference: D_A's pool holds fake B, D_B's fake A), one backward of
``loss_D_A + loss_D_B`` into group ``D`` (both discriminators) and one step (the reference's two
backwards accumulate into the same gradients). The pools draw from torch's global RNG, which
the engine seeds and checkpoints, and their images are buffers of this module: a resumed run
continues exactly.

Evaluation (val = testA / testB): per direction the Frechet distance between translated and
real images of the target domain on features of a local network file (``fd_weights``:
``fd_inception_AtoB``, ...) or of a fixed random network (``fd_random_AtoB`` = G_A(A) against
B, ``fd_random_BtoA`` = G_B(B) against A; ``fd_random`` their mean, the monitor, lower is
better), and the cycle reconstructions against their inputs: ``cycle_psnr_A`` / ``cycle_l1_A``
(G_B(G_A(A)) against A), ``cycle_psnr_B`` / ``cycle_l1_B``. Image grids: A | fake B | rec A and
B | fake A | rec B.

Inference: ``direction`` (``AtoB`` uses G_A, ``BtoA`` G_B) picks the generator that
``mode=predict`` runs on each image and that ``mode=export`` writes to ONNX.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from src.data.cub import open_rgb
from src.data.image_translation import DIRECTIONS, to_uint8
from src.metrics.image_quality import FrechetDistance, ImageQuality, feature_network
from src.models.gan import ImagePool, check_input_size, export_generator_onnx
from src.tasks.base import Task, build_twice, unwrap
from src.utils.errors import UserError


class CycleGANTask(Task):
    automatic_optimization = False
    accepts = {"loss": ("cyclegan",), "dataset": ("unpaired_images",)}
    ddp_modules = ("generator_a", "generator_b", "discriminator_a", "discriminator_b")
    ema_modules = ("generator_a", "generator_b")
    monitor = "val/fd_random"
    monitor_mode = "min"

    def __init__(
        self,
        generator: Callable[[], nn.Module],
        discriminator: Callable[[], nn.Module],
        loss: nn.Module,
        data: dict[str, Any],
        pool_size: int = 50,
        direction: str = "AtoB",
        fd_weights: str | None = None,
        fd_seed: int = 0,
        num_visualize: int = 4,
    ):
        super().__init__(loss, data)
        if direction not in DIRECTIONS:
            raise UserError(f"model.direction={direction!r}: use AtoB or BtoA")
        # the reference's construction order: G_A, G_B, D_A, D_B
        self.generator_a = build_twice(generator, "generator", "CycleGAN")
        self.generator_b = build_twice(generator, "generator", "CycleGAN")
        self.discriminator_a = build_twice(discriminator, "discriminator", "CycleGAN")
        self.discriminator_b = build_twice(discriminator, "discriminator", "CycleGAN")
        self.fake_b_pool, self.fake_a_pool = ImagePool(pool_size), ImagePool(pool_size)
        self.direction, self.num_visualize = direction, int(num_visualize)
        self.image_size = None
        for dataset in self.data.values():  # before any training: one clear line
            size = getattr(dataset, "crop_size", None)
            if size:
                check_input_size(self.generator_a, size, size, f" (dataset.image_size={size})")
                self.image_size = self.image_size or int(size)
        # the feature network of the Frechet distance: frozen, not part of checkpoints
        object.__setattr__(self, "features", feature_network(fd_weights, fd_seed))
        self.monitor = f"val/{self.features.name}"

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """One Adam over both generators, one over both discriminators (the reference's
        ``itertools.chain``)."""
        return {
            "G": [*self.generator_a.parameters(), *self.generator_b.parameters()],
            "D": [*self.discriminator_a.parameters(), *self.discriminator_b.parameters()],
        }

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        real_a, real_b = batch["A"], batch["B"]
        g_a, g_b = self.generator_a, self.generator_b
        fake_b = g_a(real_a)
        rec_a = g_b(fake_b)
        fake_a = g_b(real_b)
        rec_b = g_a(fake_a)

        # generators, through the discriminators as they are (not yet updated); the backward
        # reaches G's parameters only. The discriminators run unwrapped here: their DDP
        # wrappers would wait for gradients this backward never gives them.
        idt_a = g_a(real_b) if self.loss.uses_identity else None
        idt_b = g_b(real_a) if self.loss.uses_identity else None
        g = self.loss.generator(
            unwrap(self.discriminator_a)(fake_b),
            unwrap(self.discriminator_b)(fake_a),
            real_a,
            real_b,
            rec_a,
            rec_b,
            idt_a,
            idt_b,
        )
        opt.backward(g["loss"], "G")
        opt.step("G")

        # discriminators on real images and pooled (detached) fakes
        pooled_b, pooled_a = self.fake_b_pool(fake_b), self.fake_a_pool(fake_a)
        d_a = self.loss.discriminator(self.discriminator_a(real_b), self.discriminator_a(pooled_b))
        d_b = self.loss.discriminator(self.discriminator_b(real_a), self.discriminator_b(pooled_a))
        opt.backward(d_a + d_b, "D")
        opt.step("D")
        out = {k: v for k, v in g.items() if k != "loss"}
        return {"g_loss": g["loss"].detach(), "d_a": d_a.detach(), "d_b": d_b.detach(), **out}

    # ---- evaluation -----------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(unwrap(self.generator_a).parameters()).device

    def _generators(self) -> tuple[nn.Module, nn.Module]:
        return unwrap(self.generator_a), unwrap(self.generator_b)

    @torch.no_grad()
    def cycle(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """``fake_B``, ``rec_A``, ``fake_A``, ``rec_B`` of a batch (images in [-1, 1])."""
        g_a, g_b = self._generators()
        fake_b, fake_a = g_a(real_a), g_b(real_b)
        return {"fake_B": fake_b, "rec_A": g_b(fake_b), "fake_A": fake_a, "rec_B": g_a(fake_a)}

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        fd = {d: FrechetDistance(self.features) for d in DIRECTIONS}
        rec = {"A": ImageQuality(), "B": ImageQuality()}
        for batch in loader:
            a, b = batch["A"], batch["B"]
            out = self.cycle(a, b)
            fd["AtoB"].update(out["fake_B"], b)
            fd["BtoA"].update(out["fake_A"], a)
            rec["A"].update(out["rec_A"], a)
            rec["B"].update(out["rec_B"], b)
        metrics: dict[str, float] = {}
        name = self.features.name
        values = {d: fd[d].compute() for d in DIRECTIONS}
        if all(math.isfinite(v) for v in values.values()):
            metrics.update({f"{name}_{d}": v for d, v in values.items()})
            metrics[name] = sum(values.values()) / len(values)
        for domain, metric in rec.items():
            for key, value in metric.compute().items():
                metrics[f"cycle_{key}_{domain}"] = value
        return metrics

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        n = self.num_visualize
        a, b = batch["A"][:n], batch["B"][:n]
        out = self.cycle(a, b)

        def rows(real, fake, rec, caption):
            return [
                (np.concatenate([to_uint8(x), to_uint8(y), to_uint8(z)], axis=1), caption)
                for x, y, z in zip(real, fake, rec)
            ]

        return {
            "AtoB": rows(a, out["fake_B"], out["rec_A"], "A | fake B | rec A"),
            "BtoA": rows(b, out["fake_A"], out["rec_B"], "B | fake A | rec B"),
        }

    # ---- inference ------------------------------------------------------------------
    def _generator(self) -> nn.Module:
        """The generator ``direction`` picks (AtoB: G_A, BtoA: G_B)."""
        g_a, g_b = self._generators()
        return g_a if self.direction == "AtoB" else g_b

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        """Translate one image of the source domain (``direction``) at the network size; the
        picture is written back at the input's size as ``<stem>_translated.png``."""
        dataset = self.data.get("val") or self.data.get("train")
        if dataset is None or not hasattr(dataset, "preprocess"):
            raise RuntimeError("CycleGAN predict needs a dataset with preprocess()")
        image = open_rgb(path)
        x = dataset.preprocess(image)[None].to(self._device())
        with torch.no_grad():
            fake = Image.fromarray(to_uint8(self._generator()(x)[0]))
        if fake.size != image.size:
            fake = fake.resize(image.size, Image.BICUBIC)
        picture = Path(out_dir) / f"{stem}_translated.png"
        fake.save(picture)
        return {
            "path": str(path),
            "translated": str(picture),
            "direction": self.direction,
            "size": list(image.size),
        }

    def export(self, out_dir: Path) -> list[Path]:
        """``generator_<direction>.onnx`` of the generator ``direction`` picks."""
        size = self.image_size or 256
        path = Path(out_dir) / f"generator_{self.direction}.onnx"
        return [export_generator_onnx(self._generator(), path, sample_size=(size, size))]
