"""Optuna search over the monitored metric, and the SLURM launcher config composing."""

from __future__ import annotations

import yaml

from tests.conftest import TOY, run_cli


def test_optuna_search_runs_trials_and_reports_the_best(tmp_path):
    sweep = tmp_path / "optuna"
    r = run_cli(
        *TOY,
        "hparams_search=optuna",
        "optimized_metric=val/acc",
        "logger=none",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "trainer.max_steps=4",
        "trainer.batch_size=8",
        f"hydra.sweep.dir={sweep}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay"}
    jobs = sorted(p.name for p in sweep.iterdir() if p.name.isdigit())
    assert jobs == ["0", "1", "2"]
    import json

    values = [json.loads((sweep / j / "summary.json").read_text())["val/acc"] for j in jobs]
    assert best["best_value"] == max(values)


def test_slurm_launcher_config_composes():
    r = run_cli("--cfg", "hydra", "--package", "hydra.launcher", *TOY, "hydra/launcher=slurm")
    assert r.returncode == 0, r.stderr[-2000:]
    launcher = yaml.safe_load(r.stdout)
    node = launcher.get("hydra", {}).get("launcher", launcher)
    assert node["_target_"].endswith("SlurmLauncher")
    assert node["timeout_min"] == 1440 and node["gpus_per_node"] == 1
