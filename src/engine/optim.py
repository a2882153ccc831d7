"""Optimizers, schedulers and the one optimisation path every Task goes through.

``Optimization.backward(loss, name)`` / ``.step(name)`` apply mixed-precision loss scaling,
gradient accumulation, clipping and NaN/inf skipping. Automatic Tasks never see it (the engine
calls it with ``"loss"``); manual Tasks (GANs) call it for each of their optimizers in turn.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


class NonFiniteLossError(RuntimeError):
    pass


def build_optimizers(
    groups: dict[str, list], opt_cfg: DictConfig
) -> dict[str, torch.optim.Optimizer]:
    return {name: instantiate(opt_cfg, params) for name, params in groups.items()}


def build_schedulers(optimizers: dict[str, torch.optim.Optimizer], sched_cfg: DictConfig | None):
    """Returns ({name: scheduler}, interval)."""
    if sched_cfg is None or sched_cfg.get("_target_") is None:
        return {}, "epoch"
    cfg = OmegaConf.to_container(sched_cfg, resolve=True)
    interval = cfg.pop("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise ValueError(f"scheduler.interval must be 'epoch' or 'step', got {interval!r}")
    return {name: instantiate(cfg, opt) for name, opt in optimizers.items()}, interval


class Optimization:
    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        *,
        device: torch.device,
        precision: str = "fp32",
        grad_clip_norm: float | None = None,
        accumulate: int = 1,
        max_consecutive_nonfinite: int = 10,
    ):
        self.optimizers = optimizers
        self.device = device
        self.grad_clip_norm = grad_clip_norm
        self.accumulate = max(1, accumulate)
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        use_scaler = precision == "fp16" and device.type == "cuda"
        self.scalers = {n: torch.amp.GradScaler("cuda", enabled=use_scaler) for n in optimizers}
        self.micro_step = 0  # micro-batches seen (advanced by the engine)
        self.nonfinite_total = 0
        self.nonfinite_consecutive = 0
        self._bad_window: set[str] = set()

    # -- called by the engine ------------------------------------------------------------
    @property
    def at_boundary(self) -> bool:
        """True on the micro-batch that completes an accumulation window."""
        return (self.micro_step + 1) % self.accumulate == 0

    def advance(self) -> None:
        self.micro_step += 1

    # -- called by Tasks (or the engine on their behalf) ---------------------------------
    def backward(self, loss: torch.Tensor, name: str = "main") -> bool:
        """Backward of ``loss`` for optimizer ``name``; a NaN/inf loss is skipped and counted
        (its accumulation window is then not stepped). Returns whether it was applied."""
        if not torch.isfinite(loss.detach()).all():  # one host sync per step, by design
            self.nonfinite_total += 1
            self.nonfinite_consecutive += 1
            self._bad_window.add(name)
            if self.nonfinite_consecutive >= self.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite_consecutive} non-finite losses in a row (optimizer "
                    f"'{name}'): lower optimizer.lr, set trainer.grad_clip_norm, or try "
                    "trainer.precision=fp32"
                )
            return False
        self.nonfinite_consecutive = 0
        self.scalers[name].scale(loss / self.accumulate).backward()
        return True

    def step(self, name: str = "main") -> bool:
        """Step optimizer ``name`` at the end of an accumulation window. Returns whether a
        parameter update happened."""
        if not self.at_boundary:
            return False
        opt, scaler = self.optimizers[name], self.scalers[name]
        stepped = False
        if name in self._bad_window:
            self._bad_window.discard(name)
        else:
            if self.grad_clip_norm:
                scaler.unscale_(opt)
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
            scaler.step(opt)
            scaler.update()
            stepped = True
        opt.zero_grad(set_to_none=True)
        return stepped

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "micro_step": self.micro_step,
            "nonfinite_total": self.nonfinite_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
        for n, s in self.scalers.items():
            if state["scalers"].get(n):
                s.load_state_dict(state["scalers"][n])
        self.micro_step = state["micro_step"]
        self.nonfinite_total = state.get("nonfinite_total", 0)
