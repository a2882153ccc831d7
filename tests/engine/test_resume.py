"""Resume exactness: N steps straight == N/2 steps + SIGTERM (checkpoint) + resume=auto."""

from __future__ import annotations

import torch

from src.engine.checkpoint import load
from tests.conftest import TOY, run_cli


def _weights(run_dir):
    return load(run_dir / "checkpoints" / "last.ckpt")["task"]


def test_resume_mid_epoch_gives_identical_weights(tmp_path):
    # 64 samples / batch 8 = 8 batches per epoch; 12 steps ends mid-epoch 1; stop at step 5
    # (mid-epoch 0) then resume. Dropout, BN buffers, per-sample augmentation and the StepLR
    # schedule all have to line up for the weights to match.
    common = TOY + [
        "logger=none",
        "trainer.batch_size=8",
        "trainer.max_steps=12",
        "trainer.max_epochs=5",
        "scheduler.step_size=1",
        "optimizer.lr=0.1",
        "seed=0",
    ]
    straight = run_cli(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-2000:]

    first = run_cli(*common, f"hydra.run.dir={tmp_path / 'b'}", "trainer.preempt_at_step=5")
    assert first.returncode == 0, first.stderr[-2000:]
    stopped = load(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert stopped["progress"] == {"global_step": 5, "epoch": 0, "batch_in_epoch": 5}
    resumed = run_cli(*common, f"hydra.run.dir={tmp_path / 'b'}", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the run really trained and stopped where asked
    assert load(tmp_path / "b" / "checkpoints" / "last.ckpt")["progress"]["global_step"] == 12


def test_resume_from_explicit_ckpt_path_and_bad_paths(tmp_path):
    common = TOY + ["logger=none", "trainer.batch_size=8", "trainer.max_steps=4", "seed=1"]
    r = run_cli(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    r = run_cli(
        *common, "trainer.max_steps=6", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'b'}"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert load(tmp_path / "b" / "checkpoints" / "last.ckpt")["progress"]["global_step"] == 6

    missing = run_cli(
        *common, f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path / 'c'}"
    )
    assert missing.returncode == 2
    assert "checkpoint not found" in missing.stderr and "nope.ckpt" in missing.stderr
    assert "Traceback" not in missing.stderr

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    bad = run_cli(*common, f"ckpt_path={garbage}", f"hydra.run.dir={tmp_path / 'd'}")
    assert bad.returncode == 2 and "cannot read checkpoint" in bad.stderr
