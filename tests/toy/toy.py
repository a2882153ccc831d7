"""A tiny classification trainer for engine tests: it exercises every engine path (augmentation
randomness, torch RNG in the step, BN buffers, evaluation, visualisation, prediction) in
milliseconds. Also used through run.py with hydra.searchpath=[file://tests/toy/conf]."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.data.base import SampleDataset
from src.tasks.base import Task


class Blobs(SampleDataset):
    """Gaussian blobs, one per class; training samples get rng-driven jitter."""

    def __init__(self, n: int, num_classes: int, dim: int, seed: int, image_size: int = 8):
        g = np.random.default_rng(seed)
        self.centers = g.normal(0, 3, (num_classes, dim)).astype(np.float32)
        self.labels = g.integers(0, num_classes, n)
        self.x = (self.centers[self.labels] + g.normal(0, 1, (n, dim))).astype(np.float32)
        self.nan_indices: set[int] = set()

    def __len__(self):
        return len(self.labels)

    def load(self, index, rng):
        x = self.x[index].copy()
        if rng is not None:
            x += rng.normal(0, 0.1, x.shape).astype(np.float32)
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
):
    train = Blobs(n_train, num_classes, dim, seed, image_size)
    train.nan_indices = set(nan_train_indices)
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
