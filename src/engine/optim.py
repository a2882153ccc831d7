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

Implementations: ``optimizer.foreach`` / ``optimizer.fused`` pass through to torch's optimizers.
Both null is the engine's default: ``fused=True`` for SGD, Adam and AdamW when every parameter
is a floating-point tensor on a device torch has the fused kernels for (CPU and CUDA among
them), else ``foreach=True`` wherever the class takes it (RMSprop), also on CPU, where torch
alone would pick its per-parameter loop. The fused kernels make one pass over each parameter,
its gradient and its state instead of one per arithmetic operation: on one CPU thread Adam's
step over 52M parameters took 34 ms against 106-115 ms for foreach / the loop (pix2pix's U-Net
+ PatchGAN: 0.14 s of a 1.3 s step). SGD's fused update is the loop's arithmetic (bit for bit
on the CPUs measured); Adam / AdamW's reorder float operations (within a few ulp a step,
tests/engine/test_speed_options.py). Setting either flag turns the default off
(``optimizer.foreach=false``: torch's per-parameter loop). They choose how the same update is
computed, not what it is, so they are not part of a checkpoint: a resumed run keeps the flags
of its own config.

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
import torch.optim.optimizer as torch_optimizer
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
# classes whose fused kernels the engine picks when neither flag is set (torch also has a fused
# Adagrad, on fewer devices; it stays on foreach unless asked)
FUSED_BY_DEFAULT = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def _fused_devices() -> set[str]:
    """Device types torch has fused optimizer kernels for (its private list; CPU and CUDA if
    this torch does not expose one)."""
    known = getattr(torch_optimizer, "_get_fused_kernels_supported_devices", None)
    return set(known()) if known is not None else {"cpu", "cuda"}


def _tensors(params: Iterable | None) -> list[torch.Tensor]:
    """The tensors of an optimizer's ``params`` argument (tensors or param-group dicts)."""
    out = []
    for item in params or ():
        out.extend(item["params"] if isinstance(item, dict) else [item])
    return out


def fused_by_default(target: str, params: Iterable | None) -> bool:
    """Whether the engine's default for ``target`` on these parameters is ``fused=True``."""
    if get_object(target) not in FUSED_BY_DEFAULT:
        return False
    tensors, devices = _tensors(params), _fused_devices()
    return bool(tensors) and all(
        torch.is_floating_point(p) and p.device.type in devices and not p.is_sparse for p in tensors
    )


def implementation_flags(
    cfg: dict, where: str = "optimizer", params: Iterable | None = None
) -> dict:
    """``cfg`` with ``foreach`` / ``fused`` resolved for its ``_target_``: null ones dropped where
    the class does not take them; with both null, ``fused`` where ``fused_by_default`` says so
    for ``params``, else ``foreach`` where the class takes it; a flag set true for a class
    without it, or both true, is a UserError."""
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
    if not target:
        return cfg
    unset = not any(key in cfg for key in IMPLEMENTATION_KEYS)
    if unset and _takes(accepted, "fused") and fused_by_default(target, params):
        cfg["fused"] = True
    elif "foreach" not in cfg and not cfg.get("fused") and _takes(accepted, "foreach"):
        cfg["foreach"] = True  # (also for fused=false alone: the multi-tensor path)
    return cfg


def _takes(accepted: set[str] | None, key: str) -> bool:
    return accepted is None or key in accepted


def build_optimizers(
    groups: dict[str, list], opt_cfg: DictConfig | dict
) -> dict[str, torch.optim.Optimizer]:
    cfgs = group_configs(opt_cfg, groups, "optimizer")
    out = {}
    for name, params in groups.items():
        where = "optimizer" if len(groups) == 1 else f"optimizer (group {name})"
        params = list(params)  # a generator would be used up by the check
        out[name] = instantiate(implementation_flags(cfgs[name], where, params), params)
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
                if group.get("fused"):  # a loop / foreach checkpoint keeps ``step`` on the host
                    for p in group["params"]:
                        step = o.state.get(p, {}).get("step")
                        if torch.is_tensor(step) and step.device != p.device:
                            o.state[p]["step"] = step.to(p.device, torch.float32)
        for n, s in self.scalers.items():
            if state["scalers"].get(n):
                s.load_state_dict(state["scalers"][n])
        self.micro_step = state["micro_step"]
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.updates.update(state.get("updates", {}))
