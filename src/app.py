"""What run.py hands over to: validate, build, and run the requested mode.

Data flows one way: config -> (model, loss, data) -> Task -> Trainer. Nothing here knows about
faces or birds.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from src.engine.host_memory import MODES as HOST_ALLOCATORS
from src.engine.host_memory import set_host_allocator
from src.engine.pointwise_conv import CHOICES as CPU_CONV1X1
from src.utils.errors import UserError, user_error_types

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODES = ("train", "eval", "predict", "export")
# values with a fixed set of choices, checked before anything is built
CHOICES = {
    "mode": MODES,
    "resume": (None, "auto"),
    "trainer.precision": ("fp32", "bf16", "fp16"),
    "trainer.accelerator": ("auto", "cpu", "cuda"),
    "trainer.host_allocator": HOST_ALLOCATORS,
    "trainer.cpu_conv1x1": CPU_CONV1X1,
    "scheduler.interval": ("epoch", "step"),
    "logger.mode": ("offline", "online", "disabled"),
    "dataset.on_missing": ("error", "skip"),
    "dataset.landmark_policy": ("drop", "clamp"),
}  # a key the composed config does not have (e.g. logger=none has no mode) is not checked
FAILED_JOBS: list[str] = []  # multirun jobs that failed (run.py's exit code reports them)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# ---- validation --------------------------------------------------------------------------------
def _config_repository():
    """Hydra's view of every config source of this run (conf/, hydra.searchpath, ...)."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    search_path = ConfigSearchPathImpl()
    try:
        for source in HydraConfig.get().runtime.config_sources:
            search_path.append(source.provider, f"{source.schema}://{source.path}")
    except ValueError:  # no Hydra context (tests composing by hand): conf/ alone
        search_path.append("main", f"file://{CONF_DIR}")
    from hydra.core.plugins import Plugins

    Plugins.instance()  # registers the config source types (file://, pkg://, structured://)
    return ConfigRepository(search_path)


def _target_object(target: Any):
    """The class or function a ``_target_`` names, imported but not called (None if absent or
    not importable)."""
    if not target:
        return None
    try:
        return get_object(str(target))
    except Exception:  # noqa: BLE001 - a broken option must not hide the others
        return None


def kind_of(node: Any) -> str | None:
    """The ``kind`` a loss or dataset config declares through its ``_target_``'s class or
    builder function."""
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    return getattr(_target_object(target), "kind", None)


def option_kind(group: str, option: str, repo: Any = None, _seen: tuple = ()) -> str | None:
    """The kind of ``group=option`` as its file declares it: its ``_target_``'s, or, for a file
    that only extends another option of the group (``defaults: [giou, _self_]``), that one's."""
    repo = repo or _config_repository()
    result = repo.load_config(f"{group}/{option}")
    if result is None:
        return None
    if result.config.get("_target_"):
        return kind_of(result.config)
    for entry in result.defaults_list or []:
        name = getattr(entry, "path", None) or getattr(entry, "name", None)
        if not name or name == "_self_" or "schema" in name:
            continue
        name = name.split("/")[-1] if name.startswith((f"{group}/", f"/{group}/")) else name
        if "/" not in name and name not in _seen:
            kind = option_kind(group, name, repo, (*_seen, option))
            if kind is not None:
                return kind
    return None


def extended_option(group: str, option: str, repo: Any = None) -> str:
    """The option a ``default/<model>`` file stands for (``optimizer=default/ws_dan`` -> ``sgd``:
    the first option of the group its defaults list names); other options unchanged."""
    if not str(option).startswith("default/"):
        return option
    result = (repo or _config_repository()).load_config(f"{group}/{option}")
    for entry in (result.defaults_list or []) if result is not None else []:
        name = getattr(entry, "path", None) or getattr(entry, "name", None) or ""
        for prefix in (f"/{group}/", f"{group}/"):
            if name.startswith(prefix) and "schema" not in name:
                return name[len(prefix) :]
    return option


def choices_of_kind(group: str, kinds: tuple[str, ...]) -> list[str]:
    """``group=option`` for every option on the config search path whose kind is in kinds."""
    repo = _config_repository()
    return [
        f"{group}={option}"
        for option in repo.get_group_options(group)
        if option_kind(group, option, repo) in kinds
    ]


def _choice(group: str) -> str:
    try:
        return str(HydraConfig.get().runtime.choices.get(group))
    except ValueError:  # no Hydra context (tests composing by hand)
        return "?"


def check_compatibility(cfg: DictConfig) -> None:
    """A Task declares the loss and dataset kinds it accepts (``accepts``), losses and datasets
    their ``kind``: read from the ``_target_``s without building anything, and stop, naming
    the valid choices, when a pick does not fit."""
    absent = object()
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=absent)
        if value is not absent and value not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise UserError(f"{key}={value} is not one of {shown}")
    task_cls = _target_object(cfg.model.get("_target_"))
    if task_cls is None:
        raise UserError(
            f"model={_choice('model')}: _target_ {cfg.model.get('_target_')!r} cannot be "
            "imported (conf/model/<name>.yaml names the Task class)"
        )
    accepts = getattr(task_cls, "accepts", {}) or {}
    for group in ("loss", "dataset"):
        kinds = tuple(accepts.get(group, ()))
        kind = kind_of(cfg.get(group))
        if kinds and kind not in kinds:
            valid = ", ".join(choices_of_kind(group, kinds)) or "none configured"
            raise UserError(
                f"{group}={_choice(group)} (kind '{kind}') does not fit "
                f"model={_choice('model')}; valid choices: {valid}"
            )
    if cfg.mode in ("eval", "export") and not cfg.get("ckpt_path"):
        raise UserError(f"mode={cfg.mode} needs ckpt_path=<checkpoint or weights file>")
    if cfg.mode == "predict" and not cfg.get("input") and task_cls.predict_needs_input:
        raise UserError("mode=predict needs input=<image file or folder of images>")
    if cfg.mode == "predict" and not cfg.get("ckpt_path") and not _weights_files(cfg.model):
        raise UserError(
            "mode=predict needs ckpt_path=<checkpoint> (or a weights file option such as "
            "model.net.weights=<file>): without one the network's weights are random"
        )


def _weights_files(node: Any) -> list[str]:
    """Non-null ``weights`` options anywhere in the model config."""
    found = []
    if isinstance(node, DictConfig):
        for key in node:
            value = node.get(key)
            if key == "weights" and isinstance(value, str) and value:
                found.append(value)
            found += _weights_files(value)
    return found


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Training never silently replaces an earlier run's checkpoints or metrics."""
    if cfg.mode != "train" or cfg.get("resume") == "auto":
        return
    used = [
        p
        for p in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "metrics.jsonl")
        if (run_dir / p).exists()
    ]
    if not used:
        return
    if not cfg.get("overwrite"):
        raise UserError(
            f"{run_dir} already holds a run ({used[0]}): continue it with resume=auto, replace "
            "it with overwrite=true, or pick another hydra.run.dir"
        )
    for p in used:
        (run_dir / p).unlink()
    log.warning("overwrite=true: removed %s of the earlier run in %s", ", ".join(used), run_dir)


# ---- building ------------------------------------------------------------------------------
def _instantiate(node: Any, group: str, **kwargs):
    """hydra.utils.instantiate, but a user error raised inside a constructor (missing data,
    missing weights file, ...) surfaces as itself rather than wrapped by Hydra."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (*user_error_types(), FileNotFoundError)):
            raise UserError(f"{group}: {cause}") from cause
        raise


def build_task(cfg: DictConfig):
    """``model`` (the Task, its networks nested) + the ``loss`` and ``dataset`` built apart.
    The networks are built first, then the loss and the data."""
    task_factory = _instantiate(cfg.model, "model", _partial_=True)
    loss = _instantiate(cfg.loss, "loss") if cfg.get("loss") else None
    data = _instantiate(cfg.dataset, "dataset")
    return task_factory(loss=loss, data=data)


def build_logger(cfg: DictConfig, run_dir: Path, enabled: bool):
    from src.logging import RunLogger

    backend = None
    if enabled and cfg.logger.get("_target_"):
        backend = instantiate(cfg.logger)
    return RunLogger(run_dir, backend, enabled=enabled)


def _run_names(cfg: DictConfig, run_dir: Path) -> tuple[str, str | None]:
    try:
        hc = HydraConfig.get()
    except ValueError:
        return run_dir.name, None
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir).name
        return f"{cfg.task_name}-{sweep}-{hc.job.num}", f"{cfg.task_name}-{sweep}"
    return f"{cfg.task_name}-{run_dir.name}", None


def _git_state() -> dict[str, Any]:
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git/commit": commit, "git/dirty": dirty} if commit else {}


def run_keys(cfg: DictConfig) -> dict[str, Any]:
    """Flat keys a runs table groups and filters by: the option chosen in every group
    (``choices/model``), the job's command-line overrides (one string and one key each), the
    git commit and whether the tree was dirty, the sweep and job number, the mode."""
    keys: dict[str, Any] = {"mode": cfg.mode, **_git_state()}
    try:
        hc = HydraConfig.get()
    except ValueError:
        return keys
    for group, option in hc.runtime.choices.items():
        if not str(group).startswith("hydra"):
            # a model's default (optimizer=default/ws_dan) is recorded as what it is (sgd)
            keys[f"choices/{group}"] = (
                option if option is None else extended_option(str(group), str(option))
            )
    overrides = list(hc.overrides.task)
    keys["overrides"] = " ".join(overrides)
    for item in overrides:
        key, _, value = item.partition("=")
        keys[f"override/{key.lstrip('+~')}"] = value
    if hc.mode == RunMode.MULTIRUN:
        keys["sweep/id"] = Path(hc.sweep.dir).name
        keys["sweep/job"] = hc.job.num
    return keys


def _image_paths(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_file():
        return [p]
    if p.is_dir():
        paths = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        if paths:
            return paths
        raise UserError(f"input={spec}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    raise UserError(f"input={spec}: no such file or folder")


# ---- running -------------------------------------------------------------------------------
def run(cfg: DictConfig) -> float | None:
    """Runs one job; returns ``cfg.optimized_metric``'s value (for sweepers) if set."""
    from src.engine import distributed as D
    from src.engine.seed import seed_everything
    from src.engine.trainer import Trainer

    check_compatibility(cfg)
    run_dir = Path(cfg.paths.output_dir)
    check_run_dir(cfg, run_dir)
    if cfg.trainer.get("num_threads"):
        import torch

        torch.set_num_threads(cfg.trainer.num_threads)
    set_host_allocator(cfg.trainer.get("host_allocator", "keep"))
    seed_everything(cfg.get("seed"))
    task = build_task(cfg)
    trainer = Trainer(
        task,
        cfg.trainer,
        run_dir,
        logger=None,
        seed=cfg.get("seed"),
        optimizer_cfg=cfg.optimizer,
        scheduler_cfg=cfg.get("scheduler"),
    )
    if D.broadcast_object(str(run_dir)) != str(run_dir):
        raise UserError(
            "torchrun ranks resolved different run dirs; start torchrun with "
            "--standalone or --rdzv-id=<id>, or pin hydra.run.dir"
        )
    rank_zero = D.is_rank_zero()
    if rank_zero:
        from src.utils.config_tree import print_config_tree

        print_config_tree(cfg, run_dir, print_it=cfg.get("print_config", True))
    logger = build_logger(cfg, run_dir, enabled=rank_zero)
    trainer.logger = logger
    name, group = _run_names(cfg, run_dir)
    logger.start(
        {**OmegaConf.to_container(cfg, resolve=True), **run_keys(cfg)},
        name,
        group,
        job_type=cfg.mode,
        tags=list(cfg.get("tags") or []),
        monitor=task.monitor,
        monitor_mode=task.monitor_mode,
    )
    summary: dict[str, Any] = {"status": "failed", "mode": cfg.mode}
    exit_code = 1
    try:
        if cfg.mode == "train":
            ckpt = cfg.get("ckpt_path")
            if cfg.get("resume") == "auto" and not ckpt:
                last = run_dir / "checkpoints" / "last.ckpt"
                ckpt = str(last) if last.is_file() else None
                log.info("resume=auto: %s", ckpt or "no last.ckpt in the run dir, starting fresh")
            summary = trainer.fit(ckpt_path=ckpt)
        elif cfg.mode == "eval":
            trainer.load_weights(cfg.ckpt_path)
            metrics = trainer.evaluate()
            logger.log_metrics(metrics, step=0)
            summary = {"status": "completed", **metrics}
        elif cfg.mode == "predict":
            if cfg.get("ckpt_path"):
                trainer.load_weights(cfg.ckpt_path)
            task.eval()
            out_dir = run_dir / "predictions"
            out_dir.mkdir(parents=True, exist_ok=True)
            import torch

            with torch.no_grad():
                preds = task.predict(_image_paths(cfg.input) if cfg.get("input") else [], out_dir)
            if rank_zero:
                (run_dir / "predictions.json").write_text(json.dumps(preds, indent=2))
            unreadable = [p for p in preds if "error" in p]
            if preds and len(unreadable) == len(preds):
                raise UserError(f"input={cfg.input}: none of the {len(preds)} images could be read")
            summary = {
                "status": "completed",
                "num_images": len(preds) - len(unreadable),
                "unreadable": [p["path"] for p in unreadable],
                "predictions": str(run_dir / "predictions.json"),
            }
        elif cfg.mode == "export":
            trainer.load_weights(cfg.ckpt_path)
            task.eval()
            paths = task.export(run_dir / "export")
            summary = {"status": "completed", "exported": [str(p) for p in paths]}
        summary["mode"] = cfg.mode
        exit_code = 0
    except BaseException as e:
        summary["error"] = error_line(e)
        raise
    finally:
        best = sorted((run_dir / "checkpoints").glob("*.ckpt")) if exit_code == 0 else []
        logger.finish(summary, exit_code=exit_code, artifacts=best)
    metric_name = cfg.get("optimized_metric")
    if metric_name:
        value = summary.get(metric_name)
        return None if value is None else float(value)
    return None


def error_line(e: BaseException) -> str:
    """One line for an error. An error raised in a DataLoader worker arrives re-raised with the
    worker's traceback in its message: take the original message back out of it."""
    text = str(e)
    if "DataLoader worker process" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        # the traceback's last line: "[module.]ErrorName: message"
        text = re.sub(rf"^[\w.]*\b{type(e).__name__}: ", "", last)
    return " ".join(text.split()) if "\n" in text else text


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def main(cfg: DictConfig) -> float | None:
    """run() with user errors reported as one line (exit code 2), not a traceback. In a
    multirun a failed job is reported (its summary.json says failed and why) and the sweep
    goes on: the sweeper gets no value (Optuna records a failed trial) and run.py's exit code
    says that some jobs failed."""
    from src.engine import distributed as D
    from src.logging.metrics_file import write_summary

    try:
        return run(cfg)
    except BaseException as e:
        user = isinstance(e, user_error_types())
        message = error_line(e) if user else f"{type(e).__name__}: {e}"
        if not _in_multirun() or isinstance(e, KeyboardInterrupt):
            if user:
                print(f"error: {message}", file=sys.stderr, flush=True)
                sys.exit(2)
            raise
        if not user:
            log.exception("job failed")  # the traceback goes to the job's log
        print(f"error: {message}", file=sys.stderr, flush=True)
        run_dir = Path(cfg.paths.output_dir)
        summary_file = run_dir / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        if summary.get("status") != "failed" or "error" not in summary:
            write_summary(
                run_dir, {**summary, "status": "failed", "mode": cfg.mode, "error": message}
            )
        FAILED_JOBS.append(f"{run_dir.name}: {message}")
        return None  # Optuna: a failed trial (hparams_search/optuna.yaml tolerates failures)
    finally:
        D.destroy()
