"""Print the composed config as a rich tree and keep a copy in the run dir."""

from __future__ import annotations

from pathlib import Path

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

ORDER = (
    "task_name",
    "mode",
    "model",
    "loss",
    "dataset",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "paths",
    "seed",
    "ckpt_path",
    "resume",
    "tags",
)


def print_config_tree(cfg: DictConfig, save_dir: Path | None, print_it: bool = True) -> None:
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in ORDER if k in cfg] + [k for k in cfg if k not in ORDER]
    for key in keys:
        value = cfg[key]
        branch = tree.add(str(key), style="bold", guide_style="dim")
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml"))
    if print_it:
        rich.print(tree)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        with open(save_dir / "config_tree.log", "w") as f:
            rich.print(tree, file=f)
        (save_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
