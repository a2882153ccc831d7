"""Resumable, seeded data loading.

The sampler's order is a function of (seed, epoch); each rank takes its own shard; a resumed
run skips the batches already consumed in the current epoch. The sampler yields
``(epoch, index)`` pairs, and ``SeededDataset`` turns them into ``load(index, rng)`` calls with
``rng = sample_rng(seed, epoch, index)``, so augmentation does not depend on workers or resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .seed import sample_rng
from .signals import ignore_in_worker, stop_signals_blocked


class SeededDataset(Dataset):
    def __init__(self, base: Any, seed: int, train: bool):
        self.base, self.seed, self.train = base, seed, train

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        rng = sample_rng(self.seed, epoch, index) if self.train else None
        return self.base.load(index, rng)


class ResumableSampler(Sampler):
    """Shuffled (train) or sequential (eval) order, sharded over ``world_size`` ranks like
    DistributedSampler (padding by repetition so every rank gets the same count), truncated to
    ``limit`` batches, starting at batch ``start_batch`` of the epoch."""

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        limit: int = -1,
    ):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.drop_last, self.limit = drop_last, limit
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _per_rank(self) -> int:
        n = math.ceil(self.length / self.world_size)
        if self.drop_last:
            n = (n // self.batch_size) * self.batch_size
        if self.limit >= 0:
            n = min(n, self.limit * self.batch_size)
        return n

    def num_batches(self) -> int:
        return math.ceil(self._per_rank() / self.batch_size)

    def __len__(self) -> int:
        return max(self._per_rank() - self.start_batch * self.batch_size, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
            order = torch.randperm(self.length, generator=g)
        else:
            order = torch.arange(self.length)
        total = math.ceil(self.length / self.world_size) * self.world_size
        if total > self.length:  # pad by repeating, as DistributedSampler does
            order = torch.cat([order, order[: total - self.length]])
        shard = order[self.rank :: self.world_size][: self._per_rank()]
        for index in shard[self.start_batch * self.batch_size :].tolist():
            yield self.epoch, index


def make_loader(
    dataset: Any,
    *,
    train: bool,
    batch_size: int,
    seed: int,
    collate,
    num_workers: int,
    rank: int,
    world_size: int,
    limit: int,
    pin_memory: bool = False,
) -> DataLoader:
    sampler = ResumableSampler(
        len(dataset),
        shuffle=train,
        seed=seed,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        drop_last=train,
        limit=limit,
    )
    return DataLoader(
        SeededDataset(dataset, seed, train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=False,
        worker_init_fn=ignore_in_worker if num_workers > 0 else None,
        # a private generator: creating an iterator must not consume the global torch RNG,
        # or a resumed run would diverge from a straight one
        generator=torch.Generator().manual_seed(seed),
    )


@contextmanager
def batches(loader: DataLoader) -> Iterator[Any]:
    """An iterator over ``loader`` whose data workers (started with the stop signals held, so
    none reaches a worker before it ignores them) are shut down when the block ends, however it
    ends: workers ignore SIGTERM, so they must never be left for exit-time termination."""
    if not loader.num_workers:
        yield iter(loader)
        return
    with stop_signals_blocked():
        it = iter(loader)
    try:
        yield it
    finally:
        it._shutdown_workers()  # torch's own orderly shutdown (the iterator's __del__ uses it)


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``batch`` with every tensor on ``device``; with ``channels_last`` the 4-D ones (image
    batches) in NHWC memory order (same values, the layout the networks' weights then have)."""
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.dim() == 4:
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device, channels_last) for v in batch))
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, Mapping):
        for v in batch.values():
            n = batch_size_of(v)
            if n:
                return n
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for v in batch:
            n = batch_size_of(v)
            if n:
                return n
    return 0


class DeviceLoader:
    """Iterates a DataLoader, moving batches to the device (what Task.evaluate receives).
    Each pass shuts its workers down when it ends or is abandoned."""

    def __init__(self, loader: DataLoader, device: torch.device, channels_last: bool = False):
        self.loader, self.device, self.channels_last = loader, device, channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        passes = self.__dict__.setdefault("_passes", [])
        gen = self._pass()
        passes.append(gen)
        return gen

    def _pass(self):
        with batches(self.loader) as it:
            for batch in it:
                yield to_device(batch, self.device, self.channels_last)

    def close(self) -> None:
        """End every pass still open (an evaluation that stopped early or raised)."""
        for gen in self.__dict__.pop("_passes", []):
            gen.close()
