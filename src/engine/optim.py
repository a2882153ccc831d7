"""Optimizers, schedulers and the one optimisation path every Task goes through.

``Optimization.backward(loss, name)`` / ``.step(name)`` apply mixed-precision loss scaling,
gradient accumulation, clipping and NaN/inf skipping. Automatic Tasks never see it (the engine
calls it with ``"main"``); manual Tasks (GANs) call it for each of their optimizers in turn.

Per-group configuration: a Task names its optimizer groups (``Task.optimizer_groups()``); the
``optimizer`` and ``scheduler`` configs apply to every group, and ``<cfg>.groups.<name>``
overrides any field for one group. A group that changes ``_target_`` starts from that class's
defaults and keeps only the base ``lr`` (``optimizer=adam optimizer.groups.D._target_=
torch.optim.RMSprop`` gives D RMSprop's own alpha, eps and momentum at Adam's lr); every field
a group sets must be one its class takes.

Implementations: ``optimizer.foreach`` / ``optimizer.fused`` pass through to torch's optimizers
(null = the engine's default: ``foreach=True`` wherever the class takes it and ``fused`` is not
set, also on CPU, where torch alone would pick its per-parameter loop). They choose how the
same update is computed, not what it is, so they are not part of a checkpoint: a resumed run
keeps the flags of its own config.

Non-finite losses and host syncs: ``backward`` never reads the loss on the host. It queues
"is this loss finite" as a one-element device tensor (copied to pinned host memory without
blocking) and runs the backward pass; ``step`` (or the engine's ``resolve`` after a
micro-batch) reads the flags then. On CUDA that read waits only for the forward pass, while
the backward kernels are already queued, so the GPU never runs dry (the old check before the
backward pass drained the queue every step). The decision is still made on the host, once per
step, on purpose: listeners (WGAN weight clipping), EMA, update counters, schedulers, the
"N non-finite losses in a row" stop and ``step``'s return value all need it, and a
device-masked update would need a copy of every parameter and optimizer state for each
optimizer that does not take torch's ``found_inf`` (all but the fused ones). A skipped step
leaves parameters, optimizer state and (the engine restores them) buffers untouched, exactly
as before; the only difference is that the gradients of a non-finite loss are computed and
then dropped. Under DDP the flag is all-reduced (max) so every rank skips the same steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from src.utils.errors import UserError


class NonFiniteLossError(UserError):
    pass


def _accepted(target: str) -> set[str] | None:
    """Keyword names the callable ``target`` takes (None: it takes any keyword)."""
    params = inspect.signature(get_object(target)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def group_configs(cfg: DictConfig | dict | None, names: Iterable[str], what: str) -> dict:
    """``{group: plain config dict}``: the base config with ``groups.<group>`` merged in. A
    group that names another ``_target_`` starts afresh from that class's defaults and keeps
    only the base ``lr`` (and, for schedulers, ``interval``)."""
    names = list(names)
    if cfg is None:
        return {n: {} for n in names}
    base = dict(cfg) if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    overrides = base.pop("groups", None) or {}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UserError(
            f"{what}.groups.{unknown[0]}: this model has no such optimizer group "
            f"(its groups: {', '.join(names)})"
        )
    out = {}
    for name in names:
        own = dict(overrides.get(name) or {})
        merged = dict(base)
        if own.get("_target_") and own["_target_"] != base.get("_target_"):
            merged = {k: v for k, v in base.items() if k in ("lr", "interval")}
        merged.update(own)
        if own and merged.get("_target_"):
            accepted = _accepted(merged["_target_"])
            bad = [
                k
                for k in own
                if accepted is not None
                and not k.startswith("_")
                and k != "interval"
                and k not in accepted
            ]
            if bad:
                raise UserError(
                    f"{what}.groups.{name}.{bad[0]}: {merged['_target_']} takes no such argument"
                )
        out[name] = merged
    return out


IMPLEMENTATION_KEYS = ("foreach", "fused")


def implementation_flags(cfg: dict, where: str = "optimizer") -> dict:
    """``cfg`` with ``foreach`` / ``fused`` resolved for its ``_target_``: null ones dropped where
    the class does not take them, ``foreach`` defaulting to True where it does (unless
    ``fused``); a flag set true for a class without it, or both true, is a UserError."""
    cfg = dict(cfg)
    target = cfg.get("_target_")
    accepted = _accepted(target) if target else set()
    for key in IMPLEMENTATION_KEYS:
        if key in cfg and cfg[key] is None:
            del cfg[key]
        elif key in cfg and accepted is not None and key not in accepted:
            if cfg[key]:
                raise UserError(
                    f"{where}.{key}=true: {target} has no {key} implementation "
                    f"(set {where}.{key}=null)"
                )
            del cfg[key]
    if cfg.get("foreach") and cfg.get("fused"):
        raise UserError(f"{where}: foreach and fused cannot both be true; pick one")
    takes_foreach = accepted is None or "foreach" in accepted
    if target and "foreach" not in cfg and not cfg.get("fused") and takes_foreach:
        cfg["foreach"] = True
    return cfg


def build_optimizers(
    groups: dict[str, list], opt_cfg: DictConfig | dict
) -> dict[str, torch.optim.Optimizer]:
    cfgs = group_configs(opt_cfg, groups, "optimizer")
    out = {}
    for name, params in groups.items():
        where = "optimizer" if len(groups) == 1 else f"optimizer (group {name})"
        out[name] = instantiate(implementation_flags(cfgs[name], where), params)
    return out


def build_schedulers(
    optimizers: dict[str, torch.optim.Optimizer], sched_cfg: DictConfig | dict | None
) -> dict[str, tuple[Any, str]]:
    """``{name: (scheduler, interval)}`` for the groups that have a scheduler ``_target_``."""
    out = {}
    for name, cfg in group_configs(sched_cfg, optimizers, "scheduler").items():
        interval = cfg.pop("interval", "epoch")
        if cfg.get("_target_") is None:
            continue
        if interval not in ("epoch", "step"):
            raise UserError(f"scheduler.interval must be 'epoch' or 'step', got {interval!r}")
        out[name] = (instantiate(cfg, optimizers[name]), interval)
    return out


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
        # with several optimizers a backward reaches only its own group's parameters, so a
        # generator loss leaves the discriminator's gradients alone (and the reverse)
        self._inputs = (
            {n: [p for g in o.param_groups for p in g["params"]] for n, o in optimizers.items()}
            if len(optimizers) > 1
            else {}
        )
        self.micro_step = 0  # micro-batches seen (advanced by the engine)
        self.nonfinite_total = 0
        self.nonfinite_consecutive = 0
        self.updates = {n: 0 for n in optimizers}  # parameter updates done, per optimizer
        self._bad_window: set[str] = set()
        self._pending: list[tuple[str, torch.Tensor, Any]] = []  # (name, flag, event)
        self.listeners: list[Callable[[str], None]] = []  # called after each update

    # -- called by the engine ------------------------------------------------------------
    @property
    def at_boundary(self) -> bool:
        """True on the micro-batch that completes an accumulation window."""
        return (self.micro_step + 1) % self.accumulate == 0

    @property
    def num_steps(self) -> int:
        """Accumulation windows completed (= the engine's global step)."""
        return self.micro_step // self.accumulate

    def advance(self) -> None:
        self.micro_step += 1

    # -- called by Tasks (or the engine on their behalf) ---------------------------------
    def backward(self, loss: torch.Tensor, name: str = "main") -> None:
        """Backward of ``loss`` for optimizer ``name``. Whether the loss is finite is queued on
        the device, not read here (no host sync); a NaN/inf loss is counted, and its
        accumulation window not stepped, when ``step`` / ``resolve`` reads the flag."""
        if not loss.requires_grad:  # nothing to differentiate (e.g. a constant NaN): decide now
            if torch.isfinite(loss.detach()).all():
                raise RuntimeError(
                    f"optimizer '{name}': the loss does not depend on any trainable parameter"
                )
            self._pending.append((name, torch.ones((), dtype=torch.bool), None))
            self.resolve()
            return
        bad = ~torch.isfinite(loss.detach()).all()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            bad = bad.to(torch.int32)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank skips the same steps
        self._pending.append((name, *self._to_host(bad)))
        scaled = self.scalers[name].scale(loss / self.accumulate)
        inputs = self._inputs.get(name)
        if inputs is None:
            scaled.backward()
        else:
            scaled.backward(inputs=[p for p in inputs if p.requires_grad])

    def _to_host(self, flag: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(host tensor, CUDA event or None): a non-blocking copy to pinned memory on CUDA."""
        if flag.device.type != "cuda":
            return flag, None
        host = flag.to("cpu", non_blocking=True)  # pinned: non_blocking from CUDA pins
        event = torch.cuda.Event()
        event.record()
        return host, event

    def resolve(self) -> None:
        """Read the queued finite-loss flags (the one host sync of a step) and count them: a
        non-finite loss marks its optimizer's accumulation window as not to be stepped."""
        pending, self._pending = self._pending, []
        for name, host, event in pending:
            if event is not None:
                event.synchronize()
            if not bool(host):
                self.nonfinite_consecutive = 0
                continue
            self.nonfinite_total += 1
            self.nonfinite_consecutive += 1
            self._bad_window.add(name)
            if self.nonfinite_consecutive >= self.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite_consecutive} non-finite losses in a row (optimizer "
                    f"'{name}'): lower optimizer.lr, set trainer.grad_clip_norm, or try "
                    "trainer.precision=fp32"
                )

    def step(self, name: str = "main") -> bool:
        """Step optimizer ``name`` at the end of an accumulation window. Returns whether a
        parameter update happened (then the listeners, e.g. Task.on_after_optimizer_step,
        are called with ``name``)."""
        if not self.at_boundary:
            return False
        self.resolve()
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
        if stepped:
            self.updates[name] += 1
            for listener in self.listeners:
                listener(name)
        return stepped

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "micro_step": self.micro_step,
            "nonfinite_total": self.nonfinite_total,
            "updates": dict(self.updates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, o in self.optimizers.items():
            # foreach / fused are this run's choice of implementation, not saved state
            flags = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in o.param_groups]
            o.load_state_dict(state["optimizers"][n])
            for group, own in zip(o.param_groups, flags):
                group.update(own)
        for n, s in self.scalers.items():
            if state["scalers"].get(n):
                s.load_state_dict(state["scalers"][n])
        self.micro_step = state["micro_step"]
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.updates.update(state.get("updates", {}))
