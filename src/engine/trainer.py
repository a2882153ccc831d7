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

from . import distributed as D
from .checkpoint import CheckpointError, load, save_atomic, task_weights
from .data import DeviceLoader, batch_size_of, make_loader, to_device
from .optim import Optimization, build_optimizers, build_schedulers
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
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.detach().float().item()
        if isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


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
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.start_time = time.time()

    # ---- checkpoints ---------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        with D.unwrapped(self.task, self.task.ddp_modules):
            task_state = self.task.state_dict()
        return {
            "task": task_state,
            "optim": self.opt.state_dict(),
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
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
        if not D.is_rank_zero():
            return None
        path = save_atomic(self._state(), self.ckpt_dir / name)
        log.info("saved %s (step %d)", path, self.global_step)
        return path

    def restore(self, path: str | os.PathLike) -> None:
        ckpt = load(path)
        missing = [k for k in ("task", "optim", "progress", "rng") if k not in ckpt]
        if missing:
            raise RuntimeError(
                f"{path} is a weights file, not a training checkpoint "
                f"(missing {missing}); to start from its weights use "
                "mode=eval/predict, or pass it as the model's weights option"
            )
        self.task.load_state_dict(ckpt["task"])
        self.opt.load_state_dict(ckpt["optim"])
        for n, s in self.schedulers.items():
            s.load_state_dict(ckpt["schedulers"][n])
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
        WS-DAN's class centers) may differ, since evaluation can use another loss config."""
        state = task_weights(load(path))
        try:
            missing, unexpected = self.task.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(
                f"{path} does not fit this model: {str(e).splitlines()[-1].strip()}"
            ) from e
        bad = [k for k in [*missing, *unexpected] if not k.startswith("loss.")]
        if bad:
            raise CheckpointError(
                f"{path} does not fit this model: {len(missing)} missing and {len(unexpected)} "
                f"unexpected keys (e.g. {', '.join(bad[:3])}); was it trained with another "
                "model= or model options?"
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
                    torch.no_grad(),
                    autocast_context(self.device, self.cfg.precision),
                ):
                    metrics = {
                        f"val/{k}": float(v)
                        for k, v in self.task.evaluate(DeviceLoader(loader, self.device)).items()
                    }
                    images = {}
                    if getattr(self.logger.backend, "log_images_enabled", False):
                        first = next(iter(loader))
                        images = self.task.visualize(to_device(first, self.device))
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
    def fit(self, ckpt_path: str | None = None) -> dict[str, Any]:
        c, task = self.cfg, self.task
        self.opt = Optimization(
            build_optimizers(task.optimizer_groups(), self.optimizer_cfg),
            device=self.device,
            precision=c.precision,
            grad_clip_norm=c.grad_clip_norm,
            accumulate=c.accumulate_grad_batches,
            max_consecutive_nonfinite=c.max_consecutive_nonfinite,
        )
        self.schedulers, interval = build_schedulers(self.opt.optimizers, self.scheduler_cfg)
        if ckpt_path:
            self.restore(ckpt_path)
        if self.ddp:
            D.wrap_ddp(task, task.ddp_modules, self.device, c.find_unused_parameters)
        loader = self._loader("train", train=True)
        if loader is None:
            raise RuntimeError(f"{type(task).__name__}.datasets() has no 'train' split")
        sampler = loader.sampler
        steps_per_epoch = sampler.num_batches() // c.accumulate_grad_batches
        if steps_per_epoch == 0:
            raise RuntimeError(
                f"the train split gives no full batch of {c.batch_size} per process "
                f"({len(task.datasets()['train'])} samples, {self.world} processes): lower "
                "trainer.batch_size or add data"
            )
        max_steps = c.max_steps if c.max_steps > 0 else c.max_epochs * steps_per_epoch
        stop = "completed"
        task.train()
        with StopRequest() as stop_request:
            while self.global_step < max_steps and self.epoch < c.max_epochs:
                sampler.set_epoch(self.epoch, self.batch_in_epoch)
                task.on_train_epoch_start(self.epoch)
                bar = tqdm(
                    total=sampler.num_batches(),
                    initial=self.batch_in_epoch,
                    desc=f"epoch {self.epoch}",
                    dynamic_ncols=True,
                    leave=False,
                    disable=not (c.progress_bar and D.is_rank_zero()),
                )
                t0 = time.time()
                for batch in loader:
                    n_images = batch_size_of(batch) * self.world
                    batch = to_device(batch, self.device)
                    with autocast_context(self.device, c.precision):
                        out = task.training_step(batch, self.opt)
                    if task.automatic_optimization:
                        self.opt.backward(out["loss"], "main")
                        self.opt.step("main")
                    boundary = self.opt.at_boundary
                    self.opt.advance()
                    self.batch_in_epoch += 1
                    bar.update(1)
                    if not boundary:
                        continue
                    self.global_step += 1
                    if interval == "step":
                        for s in self.schedulers.values():
                            s.step()
                    dt, t0 = time.time() - t0, time.time()
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
                    if (
                        c.checkpoint_every_n_steps
                        and self.global_step % c.checkpoint_every_n_steps == 0
                    ):
                        self.save("last.ckpt")
                    if c.preempt_at_step == self.global_step:
                        os.kill(os.getpid(), signal.SIGTERM)
                    if D.broadcast_object(stop_request.requested):
                        stop = f"stopped by {D.broadcast_object(stop_request.requested)}"
                        break
                    if self.global_step >= max_steps:
                        break
                bar.close()
                if stop != "completed":
                    break
                if self.batch_in_epoch >= sampler.num_batches():  # the epoch is complete
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if interval == "epoch":
                        for s in self.schedulers.values():
                            s.step()
                    if c.eval_every_n_epochs and self.epoch % c.eval_every_n_epochs == 0:
                        self._after_eval(self.evaluate())
                if c.save_last:
                    self.save("last.ckpt")
        if stop != "completed":
            self.save("last.ckpt")  # resume point, whatever save_last says
        elif self._last_eval_step != self.global_step and (
            c.eval_every_n_epochs or c.eval_every_n_steps
        ):
            self._after_eval(self.evaluate())  # the final weights are always evaluated
        D.barrier()
        return self.summary(stop)

    def summary(self, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "monitor": self.task.monitor,
            "best": self.best,
            **self.last_metrics,
            "nonfinite_skipped": getattr(getattr(self, "opt", None), "nonfinite_total", 0),
            "seconds": round(time.time() - self.start_time, 2),
            "checkpoint_dir": str(self.ckpt_dir),
        }
