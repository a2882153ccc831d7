"""Shared test fixtures. Tests never touch the network: W&B runs `disabled` unless a test asks
for `offline` explicitly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env.update({"WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run_cli(
    *overrides: str,
    cwd: Path = REPO,
    env: dict | None = None,
    timeout: int = 300,
    module: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """`python run.py <overrides>` as a user would type it; returns the finished process."""
    cmd = (module or [sys.executable, str(REPO / "run.py")]) + list(overrides)
    return subprocess.run(
        cmd, cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def compose_config(*overrides: str, check: bool = False):
    """The config ``run.py <overrides>`` would compose, in process (paths under /tmp); with
    ``check`` also the compatibility check run.py does before building anything."""
    from hydra import compose, initialize_config_dir

    from src.app import CONF_DIR, check_compatibility
    from src.config import register_configs
    from src.utils.resolvers import register_resolvers

    register_resolvers()
    register_configs()
    paths = ["paths.output_dir=/tmp/r", "paths.work_dir=/tmp"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*paths, *overrides])
    if check:
        check_compatibility(cfg)
    return cfg


TOY = [
    "hydra.searchpath=[file://" + str(REPO / "tests/toy/conf") + "]",
    "model=toy",
    "loss=toy",
    "dataset=toy",
    "print_config=false",
    "trainer.num_workers=0",
    "trainer.progress_bar=false",
]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data dir per test session: synthetic datasets are generated once and shared."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (a user's clone has none)")
    return SHARED
