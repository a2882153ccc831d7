"""DDP under torchrun: process group from the environment, rank helpers, DDP wrapping."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_rank_zero() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device, backend: str | None = None) -> bool:
    """Initialise the default process group when started by torchrun with WORLD_SIZE > 1."""
    if not launched_by_torchrun() or dist.is_initialized():
        return dist.is_initialized()
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj):
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world_size()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(
    task: nn.Module,
    names: tuple[str, ...],
    device: torch.device,
    find_unused_parameters: bool = False,
) -> None:
    """Replace the named submodules of ``task`` by DDP wrappers, in place."""
    for name in names:
        module = getattr(task, name)
        if isinstance(module, DistributedDataParallel) or not any(
            p.requires_grad for p in module.parameters()
        ):
            continue
        ids = [device.index] if device.type == "cuda" else None
        setattr(
            task,
            name,
            DistributedDataParallel(
                module, device_ids=ids, find_unused_parameters=find_unused_parameters
            ),
        )


@contextlib.contextmanager
def unwrapped(task: nn.Module, names: tuple[str, ...]) -> Iterator[nn.Module]:
    """Temporarily put the raw modules back (evaluation, saving, visualisation)."""
    wrapped = {}
    for name in names:
        module = getattr(task, name, None)
        if isinstance(module, DistributedDataParallel):
            wrapped[name] = module
            setattr(task, name, module.module)
    try:
        yield task
    finally:
        for name, module in wrapped.items():
            setattr(task, name, module)
