"""The one training loop, for every Task (see src/tasks/base.py for the contract)."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from src.utils.errors import UserError

from . import distributed as D
from .checkpoint import CheckpointError, load, nonfinite_entries, save_atomic, task_weights
from .data import DeviceLoader, batch_size_of, batches, make_loader, to_device
from .ema import EMA
from .optim import NonFiniteLossError, Optimization, build_optimizers, build_schedulers
from .pointwise_conv import check as check_cpu_conv1x1
from .pointwise_conv import onednn_pointwise_convs
from .seed import rng_state, set_rng_state
from .signals import StopRequest

log = logging.getLogger(__name__)


def resolve_device(accelerator: str) -> torch.device:
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "trainer.accelerator=cuda but no CUDA device is visible; "
            "use trainer.accelerator=auto or cpu"
        )
    if accelerator not in ("auto", "cuda"):
        raise ValueError(f"trainer.accelerator must be auto|cpu|cuda, got {accelerator!r}")
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"trainer.precision must be fp32|bf16|fp16, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _scalars(d: dict[str, Any], prefix: str) -> dict[str, float]:
    """The one-element entries of ``d`` as floats, the tensors fetched in one host transfer
    (called only on logged steps)."""
    out, keys, tensors = {}, [], []
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            if v.numel() == 1:
                keys.append(f"{prefix}{k}")
                tensors.append(v.detach().reshape(()).float())
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    if tensors:
        devices = {t.device for t in tensors}
        values = (
            torch.stack(tensors).tolist()
            if len(devices) == 1
            else [t.cpu().item() for t in tensors]
        )
        out.update(zip(keys, values))
    return out


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(value: Any, backend: str, dynamic: bool | None) -> dict[str, Any] | None:
    """``trainer.compile`` (false | true | a mode) -> ``nn.Module.compile`` kwargs, or None."""
    text = str(value).lower()
    if value is None or text == "false":
        return None
    kwargs: dict[str, Any] = {"backend": backend, "dynamic": dynamic}
    if text == "true":
        return kwargs
    if value in COMPILE_MODES:
        return {**kwargs, "mode": value}
    raise UserError(
        f"trainer.compile={value!r}: use false, true or one of {', '.join(COMPILE_MODES)}"
    )


def compile_networks(task, names: tuple[str, ...], kwargs: dict[str, Any]) -> None:
    """torch.compile each network in place (``nn.Module.compile``: the module stays itself, so
    state-dict keys, checkpoints, DDP wrapping and EMA copies are unchanged)."""
    for name in names:
        getattr(task, name).compile(**kwargs)


class Trainer:
    def __init__(
        self,
        task,
        cfg,
        run_dir: Path,
        logger,
        *,
        seed: int | None,
        optimizer_cfg: Any = None,
        scheduler_cfg: Any = None,
    ):
        self.task, self.cfg, self.run_dir, self.logger = task, cfg, Path(run_dir), logger
        self.optimizer_cfg, self.scheduler_cfg = optimizer_cfg, scheduler_cfg
        self._last_eval_step = -1
        self.seed = 0 if seed is None else seed
        self.device = resolve_device(cfg.accelerator)
        self.ddp = D.init_distributed(self.device, cfg.ddp_backend)
        self.rank, self.world = D.rank(), D.world_size()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.task.to(self.device)
        self.channels_last = bool(cfg.get("channels_last", False))
        if self.channels_last:  # 4-D weights NHWC; 4-D batch tensors follow in to_device
            self.task.to(memory_format=torch.channels_last)
        self.cpu_conv1x1 = check_cpu_conv1x1(cfg.get("cpu_conv1x1", "onednn"))
        self.compile_kwargs = compile_options(
            cfg.get("compile", False),
            cfg.get("compile_backend", "inductor"),
            cfg.get("compile_dynamic", None),
        )
        self.ema = (
            EMA(task, task.ema_modules or task.ddp_modules, cfg.ema_decay, cfg.ema_ramp)
            if cfg.ema_decay
            else None
        )
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.last_good: tuple[Path, int] | None = None  # the newest finite checkpoint written
        self.last_metrics: dict[str, float] = {}
        self.start_time = time.time()

    # ---- checkpoints ---------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        with D.unwrapped(self.task, self.task.ddp_modules):
            task_state = self.task.state_dict()
        return {
            "task": task_state,
            "optim": self.opt.state_dict(),
            "schedulers": {n: s.state_dict() for n, (s, _) in self.schedulers.items()},
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "rng": rng_state(),
            "progress": {
                "global_step": self.global_step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
            },
            "best": self.best,
            "monitor": self.task.monitor,
        }

    def save(self, name: str) -> Path | None:
        """Write ``name`` (rank 0), unless a weight or buffer is NaN/inf: a checkpoint never
        replaces a good one with a poisoned state."""
        if not D.is_rank_zero():
            return None
        state = self._state()
        bad = nonfinite_entries({"task": state["task"], "ema": state.get("ema", {})})
        if bad:
            log.error(
                "not saving %s: %d non-finite tensors (e.g. %s); %s",
                name,
                len(bad),
                ", ".join(bad[:3]),
                self._last_good_text(),
            )
            return None
        path = save_atomic(state, self.ckpt_dir / name)
        self.last_good = (path, self.global_step)
        log.info("saved %s (step %d)", path, self.global_step)
        return path

    def _last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint was written by this run"
        return f"the last good checkpoint is {self.last_good[0]} (step {self.last_good[1]})"

    def _load_task_state(self, path, state: dict, strict: bool) -> None:
        """``task.load_state_dict`` with a mismatch reported as one line naming the file
        (loss state, e.g. WS-DAN's centers, may differ when not strict)."""
        try:
            missing, unexpected = self.task.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(
                f"{path} does not fit this model: {str(e).splitlines()[-1].strip()}"
            ) from None
        bad = [k for k in [*missing, *unexpected] if strict or not k.startswith("loss.")]
        if bad:
            raise CheckpointError(
                f"{path} does not fit this model: {len(missing)} missing and {len(unexpected)} "
                f"unexpected keys (e.g. {', '.join(bad[:3])}); was it trained with another "
                "model= or model options?"
            )

    def restore(self, path: str | os.PathLike) -> None:
        ckpt = load(path)
        missing = [k for k in ("task", "optim", "progress", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path} is a weights file, not a training checkpoint (it has no "
                f"{', '.join(missing)}): to train from its weights pass it as the network's "
                "weights option (e.g. model.net.weights=...); ckpt_path= continues a run"
            )
        self._load_task_state(path, ckpt["task"], strict=True)
        self.opt.load_state_dict(ckpt["optim"])
        for n, (s, _) in self.schedulers.items():
            s.load_state_dict(ckpt["schedulers"][n])
        if self.ema is not None:
            if "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                log.warning("%s has no EMA weights: the average starts from its weights", path)
                self.ema = EMA(self.task, self.ema.names, self.ema.decay, self.ema.ramp)
        set_rng_state(ckpt["rng"])
        p = ckpt["progress"]
        self.global_step, self.epoch, self.batch_in_epoch = (
            p["global_step"],
            p["epoch"],
            p["batch_in_epoch"],
        )
        self.best = ckpt.get("best")
        log.info(
            "resumed from %s at epoch %d, batch %d, step %d",
            path,
            self.epoch,
            self.batch_in_epoch,
            self.global_step,
        )

    def load_weights(self, path: str | os.PathLike) -> None:
        """Weights for eval/predict/export. Model keys must match exactly; loss state (e.g.
        WS-DAN's class centers) may differ, since evaluation can use another loss config.
        With ``trainer.ema_decay`` set, the checkpoint's averaged weights are used."""
        ckpt = load(path)
        self._load_task_state(path, task_weights(ckpt), strict=False)
        if self.ema is not None:
            if "ema" in ckpt:
                self.ema.load_state_dict(ckpt["ema"])
                self.ema.copy_to(self.task)
                log.info("using the EMA weights of %s (%d updates)", path, self.ema.updates)
            else:
                log.warning(
                    "trainer.ema_decay is set but %s has no EMA weights: using its raw weights",
                    path,
                )

    # ---- loaders -------------------------------------------------------------------
    def _loader(self, split: str, train: bool):
        data = self.task.datasets()
        if split not in data:
            return None
        c = self.cfg
        bs = c.batch_size if train else (c.eval_batch_size or c.batch_size)
        return make_loader(
            data[split],
            train=train,
            batch_size=bs,
            seed=self.seed,
            collate=self.task.collate,
            num_workers=c.num_workers,
            rank=self.rank if train else 0,
            world_size=self.world if train else 1,
            limit=c.limit_train_batches if train else c.limit_val_batches,
            pin_memory=self.device.type == "cuda",
        )

    # ---- evaluation ----------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Rank 0 evaluates the unwrapped modules on the whole val split; others wait."""
        metrics: dict[str, float] = {}
        if D.is_rank_zero():
            loader = self._loader("val", train=False)
            if loader is not None:
                was_training = self.task.training
                self.task.eval()
                with (
                    torch.random.fork_rng(
                        devices=[] if self.device.type == "cpu" else [self.device]
                    ),
                    D.unwrapped(self.task, self.task.ddp_modules),
                    self.ema.swapped_in(self.task) if self.ema is not None else nullcontext(),
                    torch.no_grad(),
                    autocast_context(self.device, self.cfg.precision),
                ):
                    device_loader = DeviceLoader(loader, self.device, self.channels_last)
                    try:
                        found = self.task.evaluate(device_loader)
                    finally:
                        device_loader.close()
                    metrics = {f"val/{k}": float(v) for k, v in found.items()}
                    images = {}
                    if getattr(self.logger.backend, "log_images_enabled", False):
                        with batches(loader) as it:
                            first = next(it)
                        images = self.task.visualize(
                            to_device(first, self.device, self.channels_last)
                        )
                self.logger.log_images(images, self.global_step)
                self.task.train(was_training)
        metrics = D.broadcast_object(metrics)
        self.last_metrics = metrics
        self._last_eval_step = self.global_step
        return metrics

    def _update_best(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.task.monitor)
        if value is None or not math.isfinite(value):
            return False
        better = self.best is None or (
            value > self.best if self.task.monitor_mode == "max" else value < self.best
        )
        if better:
            self.best = value
        return better

    def _after_eval(self, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        self.logger.log_metrics(metrics, self.global_step, self.epoch)
        if self._update_best(metrics) and self.cfg.save_best:
            self.save("best.ckpt")

    # ---- training ------------------------------------------------------------------
    def _setup_fit(self, ckpt_path: str | None) -> None:
        c, task = self.cfg, self.task
        groups = task.optimizer_groups()
        if task.automatic_optimization and len(groups) != 1:
            raise RuntimeError(
                f"{type(task).__name__} has {len(groups)} optimizer groups but automatic "
                "optimization steps one: set automatic_optimization = False and step each "
                "group in training_step"
            )
        self.opt = Optimization(
            build_optimizers(groups, self.optimizer_cfg),
            device=self.device,
            precision=c.precision,
            grad_clip_norm=c.grad_clip_norm,
            accumulate=c.accumulate_grad_batches,
            max_consecutive_nonfinite=c.max_consecutive_nonfinite,
        )
        self.opt.listeners.append(task.on_after_optimizer_step)
        task.__dict__["_optimizers"] = self.opt.optimizers  # Task.optimizers() (warm-up hooks)
        self.schedulers = build_schedulers(self.opt.optimizers, self.scheduler_cfg)
        if ckpt_path:
            self.restore(ckpt_path)
        if self.compile_kwargs is not None:  # training (and its evaluations) only
            compile_networks(task, task.ddp_modules, self.compile_kwargs)
        if self.ddp:
            D.wrap_ddp(task, task.ddp_modules, self.device, c.find_unused_parameters)
        self.loader = self._loader("train", train=True)
        if self.loader is None:
            raise RuntimeError(f"{type(task).__name__}.datasets() has no 'train' split")
        self.steps_per_epoch = self.loader.sampler.num_batches() // c.accumulate_grad_batches
        if self.steps_per_epoch == 0:
            raise RuntimeError(
                f"the train split gives no full batch of {c.batch_size} per process "
                f"({len(task.datasets()['train'])} samples, {self.world} processes): lower "
                "trainer.batch_size or add data"
            )
        self.max_steps = c.max_steps if c.max_steps > 0 else c.max_epochs * self.steps_per_epoch
        self._updates_seen = sum(self.opt.updates.values())
        self._buffers = list(task.buffers())
        self._buffer_copy = [b.detach().clone() for b in self._buffers]

    def _step_schedulers(self, interval: str) -> None:
        for scheduler, when in self.schedulers.values():
            if when == interval:
                scheduler.step()

    def cpu_kernels(self):
        """The context training runs in: with ``trainer.cpu_conv1x1=onednn`` (the default) a
        channels_last network's 1x1 convolutions run oneDNN's kernels on the CPU, not ATen's
        single-thread GEMM path (src/engine/pointwise_conv.py); the modules are as configured
        again after it."""
        if self.device.type == "cpu" and self.channels_last and self.cpu_conv1x1 == "onednn":
            return onednn_pointwise_convs(self.task)
        return nullcontext()

    def fit(self, ckpt_path: str | None = None) -> dict[str, Any]:
        """Train until ``max_steps`` / ``max_epochs`` or a stop signal; returns the summary."""
        with self.cpu_kernels():
            return self._fit(ckpt_path)

    def _fit(self, ckpt_path: str | None) -> dict[str, Any]:
        self._setup_fit(ckpt_path)
        stop = "completed"
        self.task.train()
        with StopRequest() as stop_request:
            while self.global_step < self.max_steps and self.epoch < self.cfg.max_epochs:
                try:
                    stop = self._train_epoch(stop_request)
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(f"{e}; {self._last_good_text()}") from None
                if self.cfg.save_last or stop != "completed":
                    self.save("last.ckpt")  # a stopped run always leaves its resume point
                if stop != "completed":
                    break
        if (
            stop == "completed"
            and self._last_eval_step != self.global_step
            and (self.cfg.eval_every_n_epochs or self.cfg.eval_every_n_steps)
        ):
            self._after_eval(self.evaluate())  # the final weights are always evaluated
        D.barrier()
        return self.summary(stop)

    def _train_epoch(self, stop_request: StopRequest) -> str:
        """One epoch (or its rest, after a resume); returns "completed" or why it stopped."""
        sampler = self.loader.sampler
        sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.task.on_train_epoch_start(self.epoch)  # also when resuming mid-epoch
        bar = tqdm(
            total=sampler.num_batches(),
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch}",
            dynamic_ncols=True,
            leave=False,
            disable=not (self.cfg.progress_bar and D.is_rank_zero()),
        )
        stop = "completed"
        self._t0 = time.time()
        with batches(self.loader) as it:
            for batch in it:
                out, n_images, boundary = self._train_batch(batch)
                bar.update(1)
                if not boundary:
                    continue
                self._after_step(out, n_images, bar)
                requested = D.broadcast_object(stop_request.requested)
                if requested:
                    stop = f"stopped by {requested}"
                    break
                if self.global_step >= self.max_steps:
                    break
        bar.close()
        if stop == "completed" and self.batch_in_epoch >= sampler.num_batches():
            self._end_epoch()
        return stop

    def _train_batch(self, batch: Any) -> tuple[dict, int, bool]:
        """One micro-batch: hooks, forward, (automatic) backward and step."""
        task = self.task
        n_images = batch_size_of(batch) * self.world
        batch = task.on_train_batch_start(
            to_device(batch, self.device, self.channels_last), self.global_step
        )
        skipped = self.opt.nonfinite_total
        if self._buffers:
            torch._foreach_copy_(self._buffer_copy, self._buffers)
        with autocast_context(self.device, self.cfg.precision):
            out = task.training_step(batch, self.opt)
        if task.automatic_optimization:
            name = next(iter(self.opt.optimizers))
            self.opt.backward(out["loss"], name)
            self.opt.step(name)
        self.opt.resolve()  # flags of a micro-batch inside an accumulation window
        if self.opt.nonfinite_total != skipped and self._buffers:
            # a skipped step leaves no trace: its forward already moved e.g. BN statistics
            torch._foreach_copy_(self._buffers, self._buffer_copy)
        boundary = self.opt.at_boundary
        self.opt.advance()
        self.batch_in_epoch += 1
        return out, n_images, boundary

    def _after_step(self, out: dict, n_images: int, bar) -> None:
        """After the micro-batch that completes an optimizer step: EMA, schedulers, logging,
        evaluation, checkpoints."""
        c = self.cfg
        self.global_step += 1
        updates = sum(self.opt.updates.values())
        if self.ema is not None and updates > self._updates_seen:  # not after a skipped step
            self.ema.update(self.task)
        self._updates_seen = updates
        self._step_schedulers("step")
        dt, self._t0 = time.time() - self._t0, time.time()
        if self.global_step % c.log_every_n_steps == 0 or self.global_step == 1:
            logs = _scalars(out, "train/")
            logs["train/images_per_s"] = n_images * c.accumulate_grad_batches / dt
            logs["train/nonfinite_skipped"] = self.opt.nonfinite_total
            for n, o in self.opt.optimizers.items():
                logs[f"lr/{n}"] = o.param_groups[0]["lr"]
            self.logger.log_metrics(logs, self.global_step, self.epoch)
            bar.set_postfix(
                loss=f"{logs.get('train/loss', float('nan')):.4f}",
                img_s=f"{logs['train/images_per_s']:.1f}",
            )
        if c.eval_every_n_steps and self.global_step % c.eval_every_n_steps == 0:
            self._after_eval(self.evaluate())
        if c.checkpoint_every_n_steps and self.global_step % c.checkpoint_every_n_steps == 0:
            self.save("last.ckpt")
        if c.preempt_at_step == self.global_step:
            os.kill(os.getpid(), signal.SIGTERM)

    def _end_epoch(self) -> None:
        self.task.on_train_epoch_end(self.epoch)
        self.epoch += 1
        self.batch_in_epoch = 0
        self._step_schedulers("epoch")
        if self.cfg.eval_every_n_epochs and self.epoch % self.cfg.eval_every_n_epochs == 0:
            self._after_eval(self.evaluate())

    def summary(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "monitor": self.task.monitor,
            "monitor_mode": self.task.monitor_mode,
            "best": self.best,
            **self.last_metrics,
            "nonfinite_skipped": getattr(getattr(self, "opt", None), "nonfinite_total", 0),
            "seconds": round(time.time() - self.start_time, 2),
            "checkpoint_dir": str(self.ckpt_dir),
        }
