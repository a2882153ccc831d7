"""No lost work, no poisoned checkpoints, no sweep killed by one bad job — run.py as a user meets
it (issue 10): group-wide preemption signals with data workers, reruns into a used run dir,
NaN, sweeps with a bad job, errors in data workers, predict on a messy folder, and the rest of
what a user can get wrong."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from src.config.schema import TrainerConfig
from src.engine.checkpoint import load, nonfinite_entries
from src.engine.seed import seed_everything
from src.engine.trainer import Trainer
from src.logging import RunLogger
from tests.conftest import REPO, TOY, cli_env, run_cli
from tests.toy.toy import ToyNet, ToyTask, blobs_splits

QUIET = [*TOY, "logger=none", "trainer.batch_size=8", "seed=0"]


def _last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def _one_line_error(r, *needles: str) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    last = _last_line(r.stderr)
    assert last.startswith("error: ") and all(n in last for n in needles), last
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return last


# ---- 1. preemption: the whole process group signalled, data workers included ---------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_group_signal_with_workers_saves_and_exits_cleanly(tmp_path, sig):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "run.py"),
        *QUIET,
        "trainer.num_workers=2",
        "trainer.max_epochs=100000",
        "trainer.log_every_n_steps=1",
        "trainer.save_last=false",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        metrics = run / "metrics.jsonl"
        while time.time() < deadline and proc.poll() is None:  # until it is well into training
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 20:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, sig)  # as SLURM, docker stop and Ctrl-C do: the whole group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == f"stopped by {sig.name}"
    ckpt = load(run / "checkpoints" / "last.ckpt")  # saved although save_last=false
    assert ckpt["progress"]["global_step"] == summary["global_step"] >= 10


# ---- 2. a rerun into a used run dir ---------------------------------------------------------
def test_rerun_into_a_used_run_dir_is_refused_unless_asked(tmp_path):
    run = tmp_path / "pinned"
    common = [*QUIET, "trainer.max_steps=3", f"hydra.run.dir={run}"]
    assert run_cli(*common).returncode == 0
    before = {p: (run / p).read_bytes() for p in ("checkpoints/last.ckpt", "metrics.jsonl")}
    again = run_cli(*common)
    _one_line_error(again, str(run), "resume=auto", "overwrite=true", "hydra.run.dir")
    assert {p: (run / p).read_bytes() for p in before} == before  # nothing touched
    resumed = run_cli(*common, "resume=auto", "trainer.max_steps=5")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load(run / "checkpoints" / "last.ckpt")["progress"]["global_step"] == 5
    replaced = run_cli(*common, "overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert load(run / "checkpoints" / "last.ckpt")["progress"]["global_step"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[0] == 1  # one run's metrics, not two appended


# ---- 3. NaN never poisons a checkpoint ------------------------------------------------------
def test_diverging_run_keeps_finite_checkpoints_and_names_the_last_good(tmp_path):
    run = tmp_path / "nan"
    r = run_cli(*QUIET, "optimizer.lr=1e12", "trainer.max_epochs=20", f"hydra.run.dir={run}")
    last = _one_line_error(r, "10 non-finite losses in a row", "the last good checkpoint is")
    assert str(run / "checkpoints" / "last.ckpt") in last
    for name in ("last.ckpt", "best.ckpt"):  # before the fix BN running_var was NaN in both
        assert nonfinite_entries(load(run / "checkpoints" / name)["task"]) == [], name


def test_a_skipped_step_leaves_no_trace_in_the_buffers(tmp_path):
    seed_everything(0)
    data = blobs_splits(n_train=16, nan_train_indices=range(16))  # every sample is NaN
    cfg = OmegaConf.structured(
        TrainerConfig(
            batch_size=8,
            max_steps=1,
            num_workers=0,
            progress_bar=False,
            max_consecutive_nonfinite=100,
        )
    )
    task = ToyTask(ToyNet(), torch.nn.CrossEntropyLoss(), data)
    trainer = Trainer(
        task,
        cfg,
        tmp_path,
        RunLogger(tmp_path, None),
        seed=0,
        optimizer_cfg=OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1}),
    )
    before = {k: v.clone() for k, v in task.state_dict().items()}
    summary = trainer.fit()
    assert summary["nonfinite_skipped"] == 1
    after = task.state_dict()
    for k, v in before.items():  # weights and BN running mean/var/count all as they were
        assert torch.equal(after[k], v), k


# ---- 4. one bad job never ends a sweep ------------------------------------------------------
def test_a_failing_job_is_reported_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli(
        "-m",
        *QUIET,
        "trainer.max_steps=2",
        "ckpt_path=null,missing.ckpt,null",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 1, r.stderr[-3000:]
    status = {j: json.loads((sweep / j / "summary.json").read_text()) for j in ("0", "1", "2")}
    assert status["0"]["status"] == status["2"]["status"] == "completed"
    assert status["1"]["status"] == "failed" and "missing.ckpt" in status["1"]["error"]
    assert "1 job(s) of the sweep failed" in r.stderr and "missing.ckpt" in r.stderr


def test_optuna_records_a_diverging_trial_as_failed_and_goes_on(tmp_path):
    sweep = tmp_path / "optuna"
    r = run_cli(
        *QUIET,
        "hparams_search=optuna",
        "optimized_metric=val/acc",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.n_startup_trials=4",
        "hydra.sweeper.params={optimizer.lr: 'choice(0.1,1e12)'}",
        "trainer.max_epochs=3",
        f"hydra.sweep.dir={sweep}",
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.name.isdigit())
    assert jobs == ["0", "1", "2", "3"], r.stderr[-3000:]  # the study lived through failures
    summaries = [json.loads((sweep / j / "summary.json").read_text()) for j in jobs]
    failed = [s for s in summaries if s["status"] == "failed"]
    done = [s for s in summaries if s["status"] == "completed"]
    assert failed and done, summaries  # seed 0 draws both values
    assert all("non-finite" in s["error"] for s in failed)
    assert r.returncode == 1 and f"{len(failed)} job(s) of the sweep failed" in r.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] == 0.1
    assert best["best_value"] == max(s["val/acc"] for s in done)


# ---- 5. errors inside data workers ----------------------------------------------------------
def test_an_error_in_a_data_worker_is_the_same_one_line(tmp_path):
    lines = []
    for workers in (0, 2):
        r = run_cli(
            *QUIET,
            f"trainer.num_workers={workers}",
            "trainer.max_steps=4",
            f"+dataset.bad_train_indices=[{','.join(map(str, range(64)))}]",
            f"hydra.run.dir={tmp_path / str(workers)}",
        )
        lines.append(_one_line_error(r, "cannot read it (corrupt)"))
        assert "DataLoader worker" not in r.stderr
    assert lines[0] == lines[1]


# ---- 6. predict on a messy folder -----------------------------------------------------------
def test_predict_skips_unreadable_files_and_refuses_random_weights(tmp_path, data_dir):
    train = tmp_path / "train"
    common = [
        "debug=fast",
        "print_config=false",
        "logger=none",
        f"paths.data_dir={data_dir}",
        "model.net.backbone=resnet18",
        "model.net.feature_index=1",
        "model.net.num_attentions=2",
        "dataset.image_size=32",
    ]
    assert run_cli(*common, f"hydra.run.dir={train}").returncode == 0
    ckpt = train / "checkpoints" / "last.ckpt"
    folder = tmp_path / "messy"
    folder.mkdir()
    good = sorted(data_dir.rglob("*.jpg"))[0]
    (folder / "good.jpg").write_bytes(good.read_bytes())
    (folder / "broken.jpg").write_bytes(good.read_bytes()[:100])
    (folder / "text.png").write_text("not an image")
    r = run_cli(
        *common,
        "mode=predict",
        f"ckpt_path={ckpt}",
        f"input={folder}",
        f"hydra.run.dir={tmp_path / 'pred'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    preds = {
        Path(p["path"]).name: p
        for p in json.loads((tmp_path / "pred" / "predictions.json").read_text())
    }
    assert set(preds) == {"good.jpg", "broken.jpg", "text.png"}
    assert "top5" in preds["good.jpg"] and "error" in preds["broken.jpg"]
    assert "text.png" in preds["text.png"]["error"]
    assert (r.stdout + r.stderr).count("skipped ") == 2  # one warning each
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["num_images"] == 1 and len(summary["unreadable"]) == 2

    (folder / "good.jpg").unlink()
    nothing = run_cli(
        *common,
        "mode=predict",
        f"ckpt_path={ckpt}",
        f"input={folder}",
        f"hydra.run.dir={tmp_path / 'pred2'}",
    )
    _one_line_error(nothing, "none of the 2 images could be read")
    assert (tmp_path / "pred2" / "predictions.json").is_file()  # still says which and why

    random = run_cli(
        *common, "mode=predict", f"input={folder}", f"hydra.run.dir={tmp_path / 'pred3'}"
    )
    _one_line_error(random, "mode=predict needs ckpt_path=", "random")


# ---- 7. the rest of what a user can get wrong -----------------------------------------------
@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.precision=fp64", "trainer.precision=fp64 is not one of fp32, bf16, fp16"),
        ("trainer.accelerator=tpu", "trainer.accelerator=tpu is not one of auto, cpu, cuda"),
        ("scheduler.interval=batch", "scheduler.interval=batch is not one of epoch, step"),
        ("trainer.host_allocator=tcmalloc", "trainer.host_allocator=tcmalloc is not one of keep"),
        ("trainer.cpu_conv1x1=mkl", "trainer.cpu_conv1x1=mkl is not one of onednn, aten"),
        ("resume=yes", "resume=yes is not one of null, auto"),
        ("logger=wandb logger.mode=live", "logger.mode=live is not one of offline, online"),
        ("model=retinaface dataset.landmark_policy=keep", "dataset.landmark_policy=keep is not"),
    ],
)
def test_fixed_choices_fail_before_anything_is_built(tmp_path, override, needle):
    data = tmp_path / "data"
    r = run_cli(
        "print_config=false",
        f"paths.data_dir={data}",
        *override.split(),
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    _one_line_error(r, needle)
    assert not data.exists()  # no synthetic dataset was written, no model built


def test_wrong_checkpoints_are_one_line(tmp_path):
    toy = tmp_path / "toy"
    assert run_cli(*QUIET, "trainer.max_steps=2", f"hydra.run.dir={toy}").returncode == 0
    ckpt = toy / "checkpoints" / "last.ckpt"
    gan = [a for a in QUIET if not a.startswith(("model=", "loss="))] + [
        "model=toy_gan",
        "loss=toy_gan",
    ]
    other = run_cli(*gan, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'a'}")
    _one_line_error(other, "last.ckpt does not fit this model")

    bare = tmp_path / "bare.pth"
    torch.save(load(ckpt)["task"], bare)
    r = run_cli(*QUIET, f"ckpt_path={bare}", f"hydra.run.dir={tmp_path / 'b'}")
    _one_line_error(r, "bare.pth is a weights file, not a training checkpoint", "model.net.")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"task": Evil()}, evil)
    for mode in ("train", "eval"):
        r = run_cli(*QUIET, f"mode={mode}", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / mode}")
        last = _one_line_error(r, "cannot read checkpoint", "evil.ckpt")
        assert "weights_only" not in last and "pwned" not in r.stdout


def test_checkpoints_follow_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        r = run_cli(*QUIET, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("last.ckpt", "best.ckpt"):
        mode = stat.S_IMODE((tmp_path / "checkpoints" / name).stat().st_mode)
        assert mode == 0o644, oct(mode)
