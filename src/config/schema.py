"""Structured-config schemas, registered in Hydra's ConfigStore.

Each group yaml (e.g. ``conf/optimizer/sgd.yaml``) starts from its schema through its defaults
list (``- sgd_schema``), so a typo'd key or a wrong type fails when the config is composed,
before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


# ---- trainer ---------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int = -1  # optimizer steps; -1 = run max_epochs
    batch_size: int = 16  # per process
    eval_batch_size: Optional[int] = None  # default: batch_size
    num_workers: int = 2
    num_threads: Optional[int] = None  # torch intra-op threads (None = torch's default)
    accelerator: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    grad_clip_norm: Optional[float] = None
    accumulate_grad_batches: int = 1
    eval_every_n_epochs: int = 1  # 0 = never at epoch end
    eval_every_n_steps: int = 0  # 0 = off
    checkpoint_every_n_steps: int = 0  # 0 = only at epoch end / stop
    log_every_n_steps: int = 10
    limit_train_batches: int = -1  # -1 = all
    limit_val_batches: int = -1
    save_last: bool = True
    save_best: bool = True
    max_consecutive_nonfinite: int = 10  # NaN/inf losses in a row before the run stops
    progress_bar: bool = True
    deterministic: bool = False
    ddp_backend: Optional[str] = None  # default: nccl on CUDA, gloo on CPU
    find_unused_parameters: bool = False
    ema_decay: Optional[float] = None  # e.g. 0.9999: evaluate/predict/export an EMA of the weights
    ema_ramp: Optional[float] = 2000.0  # decay * (1 - exp(-updates / ramp)); null = constant
    preempt_at_step: int = -1  # drill: send SIGTERM to this process after this optimizer step
    # speed (src/engine/trainer.py; benchmarks/train_step.py measures them)
    compile: Any = False  # false | true | a torch.compile mode (e.g. max-autotune): the networks
    compile_backend: str = "inductor"  # torch.compile backend (eager / aot_eager: for debugging)
    compile_dynamic: Optional[bool] = None  # torch.compile dynamic= (None: torch's automatic)
    channels_last: bool = False  # networks and 4-D batch tensors in NHWC memory order
    host_allocator: str = "keep"  # keep | system: freed CPU memory stays for reuse (no page
    # faults each step; src/engine/host_memory.py) or goes back to the OS (glibc's defaults)
    cpu_conv1x1: str = "onednn"  # onednn | aten: the 1x1 convolutions of channels_last CPU
    # training run oneDNN's kernels, not ATen's one-thread GEMM path (src/engine/pointwise_conv.py)


# ---- optimizers ------------------------------------------------------------------------------
# ``groups.<name>`` overrides any field for one of the Task's optimizer groups (open, so
# ``optimizer.groups.D.lr=4e-4`` needs no ``+``; src/engine/optim.py checks the names).
def _groups() -> Any:
    return field(default_factory=dict)


# ``foreach`` / ``fused``: torch's multi-tensor or fused implementations of the same update
# (both null = the engine's default: fused for SGD / Adam / AdamW where torch has the kernels,
# else foreach wherever the class has it; src/engine/optim.py).
@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    foreach: Optional[bool] = None
    fused: Optional[bool] = None
    groups: dict[str, Any] = _groups()


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    foreach: Optional[bool] = None
    fused: Optional[bool] = None
    groups: dict[str, Any] = _groups()


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 1e-2


@dataclass
class RMSpropConfig:
    _target_: str = "torch.optim.RMSprop"
    lr: float = 5e-5
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0
    foreach: Optional[bool] = None  # (RMSprop has no fused implementation)
    groups: dict[str, Any] = _groups()


# ---- schedulers ------------------------------------------------------------------------------
@dataclass
class SchedulerBase:
    _target_: Optional[str] = None  # None = constant learning rate
    interval: str = "epoch"  # epoch | step: when the engine calls scheduler.step()
    groups: dict[str, Any] = _groups()  # per optimizer group overrides, as optimizer.groups


@dataclass
class StepLRConfig(SchedulerBase):
    _target_: Optional[str] = "torch.optim.lr_scheduler.StepLR"
    step_size: int = 2
    gamma: float = 0.9


@dataclass
class MultiStepLRConfig(SchedulerBase):
    _target_: Optional[str] = "torch.optim.lr_scheduler.MultiStepLR"
    milestones: list[int] = field(default_factory=lambda: [190, 220])
    gamma: float = 0.1


@dataclass
class CosineConfig(SchedulerBase):
    _target_: Optional[str] = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = 100
    eta_min: float = 0.0


@dataclass
class LinearDecayConfig(SchedulerBase):
    _target_: Optional[str] = "src.engine.schedulers.LinearDecayLR"
    constant_epochs: int = 100  # pix2pix / CycleGAN: n_epochs
    decay_epochs: int = 100  # n_epochs_decay
    epoch_count: int = 1  # the reference's starting epoch count


# ---- loggers ---------------------------------------------------------------------------------
@dataclass
class WandbConfig:
    _target_: Optional[str] = "src.logging.wandb_logger.WandbLogger"
    project: str = "cv-experiments"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    name: Optional[str] = None
    group: Optional[str] = None  # default: the sweep's name in multirun
    tags: list[str] = field(default_factory=list)
    log_images: bool = True
    num_images: int = 4
    log_checkpoint: bool = False  # upload best/last checkpoints as an artifact at the end
    box_min_score: float = 0.0  # detection overlays: predictions below it are not sent
    max_boxes: int = 100  # detection overlays: boxes per picture, highest scores first


@dataclass
class NoLoggerConfig:
    _target_: Optional[str] = None


# ---- paths -----------------------------------------------------------------------------------
@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "data"
    log_dir: str = "outputs"
    output_dir: str = "."  # the run dir, set from hydra
    work_dir: str = "."


def _open_groups(schema: type) -> Any:
    """The schema as a config whose ``groups`` node takes new keys despite struct mode."""
    node = OmegaConf.structured(schema)
    if "groups" in node:
        OmegaConf.set_struct(node.groups, False)
    return node


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="optimizer", name="sgd_schema", node=_open_groups(SGDConfig))
    cs.store(group="optimizer", name="adam_schema", node=_open_groups(AdamConfig))
    cs.store(group="optimizer", name="adamw_schema", node=_open_groups(AdamWConfig))
    cs.store(group="optimizer", name="rmsprop_schema", node=_open_groups(RMSpropConfig))
    cs.store(group="scheduler", name="none_schema", node=_open_groups(SchedulerBase))
    cs.store(group="scheduler", name="step_schema", node=_open_groups(StepLRConfig))
    cs.store(group="scheduler", name="multistep_schema", node=_open_groups(MultiStepLRConfig))
    cs.store(group="scheduler", name="cosine_schema", node=_open_groups(CosineConfig))
    cs.store(group="scheduler", name="linear_decay_schema", node=_open_groups(LinearDecayConfig))
    cs.store(group="logger", name="wandb_schema", node=WandbConfig)
    cs.store(group="logger", name="none_schema", node=NoLoggerConfig)
    cs.store(group="paths", name="paths_schema", node=PathsConfig)
