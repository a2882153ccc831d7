"""WGAN (Arjovsky et al. 2017; martinarjovsky/WassersteinGAN ``main.py``) and WGAN-GP (Gulrajani
et al. 2017; igul222/improved_wgan_training) trainers: a DCGAN generator and critic
(``src.models.gan.dcgan``), the Wasserstein losses (``src.losses.wgan``), a folder of images
(``src.data.image_folder``) and the Frechet distance of ``src.metrics.image_quality``.

Training step (manual optimisation; one batch of real images per step): the critic steps on
every batch, ``mean(D(G(z))) - mean(D(x))`` with ``G(z)`` detached (real and fake in two
forwards, so a BatchNorm critic normalises each batch apart, as the reference), plus for
WGAN-GP the penalty at per-sample interpolates. After ``critic_iterations(g)`` critic updates
since the last generator update, the generator steps on the same batch, ``-mean(D(G(z')))`` on
fresh noise through the updated critic (the engine restricts that backward to G's parameters,
so the critic's gradients are untouched; the reference sets ``requires_grad=False`` instead).
The schedule is the reference's: 100 critic updates for each of the first 25 generator updates
and for every 500th (``g % 500 == 0``), else 5 (WGAN-GP: always 5; its reference has no
warm-up). The counters (``gen_iterations``: generator updates done; ``critic_iters``: critic
updates since the last one) are buffers of the Task, so they are in its state dict and a
resumed run continues the schedule exactly. Unlike the reference, the count does not restart at
an epoch boundary (its inner loop also ends, early, with the data loader's epoch).

Weight clipping (WGAN): after every critic update (``on_after_optimizer_step("D")``) and once at
construction, every critic parameter is clamped to ``[-clip_value, clip_value]``. The reference
clamps before each critic update, so its generator step sees the unclamped weights of the last
critic update; here the critic is inside the box whenever it is used.

WGAN-GP with a BatchNorm critic is refused (``allow_batchnorm=true`` runs it with a warning):
BatchNorm mixes the samples of a batch, so the critic's gradient at one interpolate depends on
the others and the per-sample penalty no longer constrains the per-sample critic. Use
``model.critic.norm=layer`` (the paper's layer normalisation) or ``none``.

Evaluation: ``fd_random`` (or ``fd_inception`` with ``fd_weights``, a local file) between
generated samples and the val images (as many samples as val images, from noise seeded by
``eval_seed``), and ``w_estimate`` = ``mean(D(x)) - mean(D(G(z)))`` over them (critic in eval
mode; the training loop logs the same estimate on each batch). The generator samples in eval
mode (BatchNorm running statistics); ``test_batch_stats=true`` samples with batch statistics
as the reference's ``main.py`` / ``generate.py`` do (they never call ``eval()``), the running
statistics left untouched. ``visualize``: a grid of G(fixed noise) for W&B. Predict: writes
``num_samples`` images (``predictions/samples/sample_NNNN.png`` and a grid) from noise seeded by
``predict_seed``; each input image is a query answered with its nearest generated sample in the
feature space of the Frechet distance (``<stem>_nearest.png``: input | nearest). Export: the
generator to ONNX, ``z`` (B, nz) -> ``images`` (B, 3, S, S).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from src.data.cub import open_rgb
from src.data.image_folder import resize_center_crop
from src.data.image_translation import to_tensor, to_uint8
from src.metrics.image_quality import FrechetDistance, feature_network
from src.models.gan.dcgan import export_dcgan_generator_onnx, has_batchnorm
from src.tasks.base import Task, unwrap
from src.utils.errors import UserError

log = logging.getLogger(__name__)


def critic_iterations(
    gen_iterations: int,
    n_critic: int = 5,
    warmup_critic_iters: int = 100,
    warmup_generator_steps: int = 25,
    warmup_every: int = 500,
) -> int:
    """Critic updates before generator update number ``gen_iterations`` (0-based): the WGAN
    reference's ``100 if g < 25 or g % 500 == 0 else 5``; ``warmup_critic_iters=0`` = always
    ``n_critic``."""
    g = int(gen_iterations)
    if warmup_critic_iters and (
        g < warmup_generator_steps or (warmup_every and g % warmup_every == 0)
    ):
        return int(warmup_critic_iters)
    return int(n_critic)


class WGANTask(Task):
    automatic_optimization = False
    accepts = {"loss": ("wgan",), "dataset": ("images",)}
    ddp_modules = ("generator", "critic")
    ema_modules = ("generator",)
    monitor = "val/fd_random"
    monitor_mode = "min"
    expected_optimizer = ("RMSprop", "optimizer=rmsprop (lr 5e-5), as the WGAN reference")
    predict_needs_input = False  # predict([]) writes num_samples images

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        loss: nn.Module,
        data: dict[str, Any],
        n_critic: int = 5,
        warmup_critic_iters: int = 100,
        warmup_generator_steps: int = 25,
        warmup_every: int = 500,
        clip_value: float = 0.01,
        fd_weights: str | None = None,
        fd_seed: int = 0,
        eval_seed: int = 0,
        test_batch_stats: bool = False,
        num_visualize: int = 64,
        num_samples: int = 64,
        predict_seed: int = 0,
    ):
        super().__init__(loss, data)
        self.generator, self.critic = generator, critic
        self.schedule = dict(
            n_critic=int(n_critic),
            warmup_critic_iters=int(warmup_critic_iters),
            warmup_generator_steps=int(warmup_generator_steps),
            warmup_every=int(warmup_every),
        )
        if self.schedule["n_critic"] < 1:
            raise UserError(f"model.n_critic={n_critic}: the critic needs >= 1 update per G step")
        self.clip_value = float(clip_value or 0.0)
        self.eval_seed, self.predict_seed = int(eval_seed), int(predict_seed)
        self.test_batch_stats = bool(test_batch_stats)
        self.num_visualize, self.num_samples = int(num_visualize), int(num_samples)
        self.nz = int(generator.nz)
        self.image_size = int(getattr(generator, "image_size", 0)) or None
        for split, dataset in self.data.items():  # before any training: one clear line
            size = getattr(dataset, "image_size", None)
            for name, net in (("generator", generator), ("critic", critic)):
                own = getattr(net, "image_size", None)
                if size and own and int(size) != int(own):
                    raise UserError(
                        f"model.{name}.image_size={own} but dataset.image_size={size} "
                        f"({split} split): set both to the same size"
                    )
        # counters of the critic schedule: buffers, so in the state dict (exact resume)
        self.register_buffer("gen_iterations", torch.zeros((), dtype=torch.long))
        self.register_buffer("critic_iters", torch.zeros((), dtype=torch.long))
        self._clip()  # the reference clamps before the first critic update too
        # the feature network of the Frechet distance: frozen, not part of checkpoints
        object.__setattr__(self, "features", feature_network(fd_weights, fd_seed))
        self.monitor = f"val/{self.features.name}"
        self._warned_optimizer = False

    # ---- optimisation ---------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"G": list(self.generator.parameters()), "D": list(self.critic.parameters())}

    def critic_target(self) -> int:
        """Critic updates due before the next generator update."""
        return critic_iterations(int(self.gen_iterations), **self.schedule)

    def _noise(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(n, self.nz, device=like.device, dtype=like.dtype)

    def _critic_loss(self, real, fake, real_scores, fake_scores) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.critic(real_scores, fake_scores)}

    def on_train_batch_start(self, batch: Any, step: int) -> Any:
        if not self._warned_optimizer:
            self._warned_optimizer = True
            want, how = self.expected_optimizer
            for name, opt in self.optimizers().items():
                if type(opt).__name__ != want:
                    log.warning(
                        "%s: optimizer %s is %s; the paper recipe uses %s (dataset=default "
                        "files and experiment= recipes set it)",
                        type(self).__name__,
                        name,
                        type(opt).__name__,
                        how,
                    )
        return batch

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        if opt.accumulate != 1:
            raise UserError(
                "WGAN counts critic updates per batch: trainer.accumulate_grad_batches must be 1 "
                "(raise trainer.batch_size instead)"
            )
        real = batch["image"]
        with torch.no_grad():
            fake = self.generator(self._noise(len(real), real))
        real_scores, fake_scores = self.critic(real), self.critic(fake)
        d = self._critic_loss(real, fake, real_scores, fake_scores)
        opt.backward(d["loss"], "D")
        if opt.step("D"):
            self.critic_iters += 1
        w = (real_scores.mean() - fake_scores.mean()).detach()
        out = {"d_loss": d["loss"].detach(), "w_estimate": w}
        out.update({k: v.detach() for k, v in d.items() if k != "loss"})
        if int(self.critic_iters) >= self.critic_target():
            fake = self.generator(self._noise(len(real), real))
            g_loss = self.loss.generator(unwrap(self.critic)(fake))
            opt.backward(g_loss, "G")
            if opt.step("G"):
                self.gen_iterations += 1
                self.critic_iters.zero_()
            out["g_loss"] = g_loss.detach()
        out["gen_iterations"] = self.gen_iterations.detach().float()
        return out

    def _clip(self) -> None:
        if self.clip_value > 0:
            with torch.no_grad():
                for p in unwrap(self.critic).parameters():
                    p.clamp_(-self.clip_value, self.clip_value)

    def on_after_optimizer_step(self, name: str) -> None:
        if name == "D":
            self._clip()

    # ---- sampling -------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(unwrap(self.generator).parameters()).device

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """(n, nz) standard normal noise from ``seed`` (CPU generator: the same on any device)."""
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(n, self.nz, generator=g).to(self._device())

    @contextmanager
    def _sampling(self):
        """The generator as it samples: eval mode, or BatchNorm on batch statistics
        (``test_batch_stats``) with its running statistics restored afterwards."""
        generator = unwrap(self.generator)
        norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        norms = norms if self.test_batch_stats else []
        saved = [(m.training, {k: b.clone() for k, b in m.named_buffers()}) for m in norms]
        for m in norms:
            m.train(True)
        try:
            yield generator
        finally:
            for m, (mode, buffers) in zip(norms, saved):
                m.train(mode)
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """G(z) as at test time, in chunks of ``chunk``."""
        with self._sampling() as generator:
            return torch.cat([generator(part) for part in z.split(chunk)])

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.features.parameters()).device
        if device != images.device:
            self.features.to(images.device)
        return self.features(images).double()

    # ---- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        fd = FrechetDistance(self.features)
        critic = unwrap(self.critic)
        g = torch.Generator().manual_seed(self.eval_seed)
        w_sum, count = 0.0, 0
        for batch in loader:
            real = batch["image"]
            z = torch.randn(len(real), self.nz, generator=g).to(real.device, real.dtype)
            fake = self.sample(z)
            fd.update(fake, real)
            w_sum += float(critic(real).double().sum() - critic(fake).double().sum())
            count += len(real)
        out = {"w_estimate": w_sum / max(count, 1)}
        value = fd.compute()
        if math.isfinite(value):
            out[fd.name] = value
        return out

    @staticmethod
    def grid(images: torch.Tensor) -> np.ndarray:
        """HxWx3 uint8 grid of images in [-1, 1] (rows of ceil(sqrt(n)), 2 px white gaps)."""
        nrow = max(1, math.ceil(math.sqrt(len(images))))
        return to_uint8(make_grid(images.float().clamp(-1, 1), nrow=nrow, pad_value=1.0))

    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        fake = self.sample(self.noise(self.num_visualize, self.eval_seed))
        real = batch["image"][: self.num_visualize]
        return {
            "samples": [(self.grid(fake), f"G(z), {len(fake)} fixed noise vectors")],
            "real": [(self.grid(real), "val images")],
        }

    # ---- inference ------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, paths: list[Path], out_dir: Path) -> list[dict]:
        """Writes ``num_samples`` generated images; then each input image (may be none) gets
        its nearest generated sample (see the module docstring)."""
        out_dir = Path(out_dir)
        folder = out_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        images = self.sample(self.noise(self.num_samples, self.predict_seed))
        files = []
        for i, image in enumerate(images):
            files.append(folder / f"sample_{i:04d}.png")
            Image.fromarray(to_uint8(image)).save(files[-1])
        Image.fromarray(self.grid(images)).save(out_dir / "samples_grid.png")
        if not paths:
            return [{"sample": str(f), "index": i} for i, f in enumerate(files)]
        self._predicted = (images, self._features(images), files)
        try:
            return super().predict(paths, out_dir)
        finally:
            del self._predicted

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        images, feats, files = self._predicted
        size = int(images.shape[-1])
        query = to_tensor(resize_center_crop(open_rgb(path), size))[None].to(images)
        dist = ((feats - self._features(query)) ** 2).sum(1)
        j = int(dist.argmin())
        picture = Path(out_dir) / f"{stem}_nearest.png"
        pair = np.concatenate([to_uint8(query[0]), to_uint8(images[j])], axis=1)
        Image.fromarray(pair).save(picture)
        return {
            "path": str(path),
            "nearest_sample": str(files[j]),
            "feature_distance": float(dist[j]),
            "picture": str(picture),
            "samples": str(files[0].parent),
            "num_samples": len(files),
        }

    def export(self, out_dir: Path) -> list[Path]:
        path = export_dcgan_generator_onnx(unwrap(self.generator), Path(out_dir) / "generator.onnx")
        return [path]


class WGANGPTask(WGANTask):
    """WGAN-GP: no clipping, the gradient penalty of ``loss`` (``src.losses.wgan.WGANGPLoss``)
    in the critic loss, 5 critic updates per generator update, Adam 1e-4 betas (0, 0.9) in the
    recipes."""

    accepts = {"loss": ("wgan_gp",), "dataset": ("images",)}
    expected_optimizer = ("Adam", "optimizer=adam lr 1e-4 betas (0, 0.9), as Gulrajani et al.")

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        loss: nn.Module,
        data: dict[str, Any],
        n_critic: int = 5,
        warmup_critic_iters: int = 0,
        warmup_generator_steps: int = 0,
        warmup_every: int = 0,
        clip_value: float = 0.0,
        allow_batchnorm: bool = False,
        **options: Any,
    ):
        if has_batchnorm(critic) and getattr(loss, "per_sample", True):
            message = (
                "model.critic.norm=batch with the gradient penalty: BatchNorm mixes the samples "
                "of a batch, so the critic's gradient at one interpolate depends on the others "
                "and the per-sample penalty no longer constrains the critic (Gulrajani et al. "
                "2017, sec. 4); use model.critic.norm=layer (the paper's) or none"
            )
            if not allow_batchnorm:
                raise UserError(message + ", or model.allow_batchnorm=true to run it anyway")
            log.warning("%s (allow_batchnorm=true: running anyway)", message)
        super().__init__(
            generator,
            critic,
            loss,
            data,
            n_critic=n_critic,
            warmup_critic_iters=warmup_critic_iters,
            warmup_generator_steps=warmup_generator_steps,
            warmup_every=warmup_every,
            clip_value=clip_value,
            **options,
        )

    def _critic_loss(self, real, fake, real_scores, fake_scores) -> dict[str, torch.Tensor]:
        wasserstein = self.loss.critic(real_scores, fake_scores)
        penalty = self.loss.penalty(unwrap(self.critic), real, fake)
        return {"loss": wasserstein + penalty, "gradient_penalty": penalty}
