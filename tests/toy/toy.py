"""A tiny classification trainer for engine tests: it exercises every engine path (augmentation
randomness, torch RNG in the step, BN buffers, evaluation, visualisation, prediction) in
milliseconds. Also used through run.py with hydra.searchpath=[file://tests/toy/conf]."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.data.base import DataError, SampleDataset
from src.tasks.base import Task, unwrap


class Blobs(SampleDataset):
    """Gaussian blobs, one per class; training samples get rng-driven jitter."""

    def __init__(self, n: int, num_classes: int, dim: int, seed: int, image_size: int = 8):
        g = np.random.default_rng(seed)
        self.centers = g.normal(0, 3, (num_classes, dim)).astype(np.float32)
        self.labels = g.integers(0, num_classes, n)
        self.x = (self.centers[self.labels] + g.normal(0, 1, (n, dim))).astype(np.float32)
        self.nan_indices: set[int] = set()
        self.bad_indices: set[int] = set()  # load() raises DataError, as a corrupt file does

    def __len__(self):
        return len(self.labels)

    def load(self, index, rng):
        x = self.x[index].copy()
        if rng is not None:
            x += rng.normal(0, 0.1, x.shape).astype(np.float32)
        if index in self.bad_indices:
            raise DataError(f"toy sample {index}: cannot read it (corrupt)")
        if index in self.nan_indices:
            x[:] = np.nan
        return {"x": torch.from_numpy(x), "label": int(self.labels[index]), "index": index}


def blobs_splits(
    n_train: int = 64,
    n_val: int = 32,
    num_classes: int = 3,
    dim: int = 4,
    seed: int = 0,
    image_size: int = 8,
    nan_train_indices=(),
    bad_train_indices=(),
):
    train = Blobs(n_train, num_classes, dim, seed, image_size)
    train.nan_indices = set(nan_train_indices)
    train.bad_indices = set(bad_train_indices)
    val = Blobs(n_val, num_classes, dim, seed, image_size)
    val.centers = train.centers
    return {"train": train, "val": val}


blobs_splits.kind = "toy"


class ToyNet(nn.Module):
    def __init__(self, dim: int = 4, num_classes: int = 3, hidden: int = 16, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.body(x)


class ToyTask(Task):
    accepts = {"dataset": ("toy",)}
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, net, loss, data):
        super().__init__(loss, data)
        self.net = net

    def training_step(self, batch, opt):
        logits = self.net(batch["x"])
        loss = self.loss(logits, batch["label"])
        return {"loss": loss, "ce": loss.detach()}

    def evaluate(self, loader):
        correct = total = 0
        loss_sum = 0.0
        for batch in loader:
            logits = self.net(batch["x"])
            loss_sum += float(self.loss(logits, batch["label"])) * len(logits)
            correct += int((logits.argmax(1) == batch["label"]).sum())
            total += len(logits)
        return {"acc": correct / total, "loss": loss_sum / total}

    def visualize(self, batch):
        img = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
        return {"examples": [(img, "toy")]}

    def predict(self, paths, out_dir):
        out = []
        for p in paths:
            (Path(out_dir) / (Path(p).stem + ".json")).write_text(json.dumps({"path": str(p)}))
            out.append({"path": str(p), "label": 0})
        return out


# ---- a GAN-shaped toy: two networks, two optimizers, a critic stepped n times per generator step
class ToyGenerator(nn.Module):
    def __init__(self, noise_dim: int = 2, dim: int = 4, hidden: int = 16):
        super().__init__()
        self.noise_dim = noise_dim
        self.body = nn.Sequential(nn.Linear(noise_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, z):
        return self.body(z)


class ToyCritic(nn.Module):
    def __init__(self, dim: int = 4, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.body(x)[:, 0]


class ToyWGANLoss(nn.Module):
    """Wasserstein critic and generator losses (Arjovsky et al. 2017)."""

    kind = "toy_gan"

    def critic(self, real_scores, fake_scores):
        return fake_scores.mean() - real_scores.mean()

    def generator(self, fake_scores):
        return -fake_scores.mean()


class ToyGANTask(Task):
    """WGAN-shaped: the critic steps on every batch and clips its weights after each of its
    optimizer steps (``on_after_optimizer_step``); the generator steps on every n-th batch."""

    automatic_optimization = False
    accepts = {"loss": ("toy_gan",), "dataset": ("toy",)}
    ddp_modules = ("generator", "critic")
    ema_modules = ("generator",)
    monitor = "val/mean_gap"
    monitor_mode = "min"

    def __init__(self, generator, critic, loss, data, n_critic: int = 5, clip_value: float = 0.01):
        super().__init__(loss, data)
        self.generator, self.critic = generator, critic
        self.n_critic, self.clip_value = int(n_critic), float(clip_value)

    def optimizer_groups(self):
        return {"G": list(self.generator.parameters()), "D": list(self.critic.parameters())}

    def _noise(self, n, device):
        return torch.randn(n, unwrap(self.generator).noise_dim, device=device)

    def training_step(self, batch, opt):
        real = batch["x"]
        with torch.no_grad():
            fake = self.generator(self._noise(len(real), real.device))
        # one critic forward over real and fake (DDP: one forward per backward)
        scores = self.critic(torch.cat([real, fake]))
        d_loss = self.loss.critic(scores[: len(real)], scores[len(real) :])
        opt.backward(d_loss, "D")
        opt.step("D")
        out = {
            "d_loss": d_loss.detach(),
            "ddp_wrapped": float(
                sum(
                    isinstance(getattr(self, n), nn.parallel.DistributedDataParallel)
                    for n in self.ddp_modules
                )
            ),
        }
        if (opt.num_steps + 1) % self.n_critic == 0:
            fake = self.generator(self._noise(len(real), real.device))
            g_loss = self.loss.generator(unwrap(self.critic)(fake))
            opt.backward(g_loss, "G")
            opt.step("G")
            out["g_loss"] = g_loss.detach()
        return out

    def on_after_optimizer_step(self, name):
        if name == "D":
            with torch.no_grad():
                for p in self.critic.parameters():
                    p.clamp_(-self.clip_value, self.clip_value)

    def evaluate(self, loader):
        real = torch.cat([b["x"] for b in loader])
        fake = self.generator(self._noise(len(real), real.device))
        gap = (real.mean(0) - fake.mean(0)).norm()
        w = self.critic(real).mean() - self.critic(fake).mean()
        return {"mean_gap": float(gap), "w_distance": float(w)}
