"""The GAN trainers under real 2-process DDP (torchrun, gloo on the CPU): every network of the
Task gets its own wrapper, the run completes, and the checkpoint holds plain (unwrapped) keys
that load back into a single-process run."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from src.engine.checkpoint import load
from tests.conftest import REPO, cli_env, run_cli
from tests.test_tasks import SHRINK

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cyclegan", "pix2pix", "wgan_gp", "dpe"])
def test_two_process_ddp_trains_and_saves_plain_keys(tmp_path, model):
    run = tmp_path / "ddp"
    common = [
        f"model={model}",
        *SHRINK[model],
        "logger=none",
        "print_config=false",
        "trainer.progress_bar=false",
        "trainer.num_workers=0",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "trainer.batch_size=2",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    r = run_cli(
        *common,
        f"hydra.run.dir={run}",
        module=TORCHRUN + [str(REPO / "run.py")],
        env=cli_env(),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 3
    ckpt = load(run / "checkpoints" / "last.ckpt")
    assert not any(".module." in k or k.startswith("module.") for k in ckpt["task"])
    assert all(torch.isfinite(v).all() for v in ckpt["task"].values() if v.is_floating_point())
    # the DDP checkpoint evaluates in a plain single-process run
    ev = run_cli(
        *common,
        "mode=eval",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        timeout=600,
    )
    assert ev.returncode == 0, ev.stderr[-4000:]
