"""Several networks and optimizers per Task, per-group optimizer overrides, loop hooks, EMA and
the linear-decay schedule — on the toy trainers, through run.py as a user would type it."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

from src.config.schema import TrainerConfig
from src.engine.checkpoint import load
from src.engine.ema import EMA
from src.engine.optim import Optimization, build_optimizers, build_schedulers, group_configs
from src.engine.schedulers import LinearDecayLR
from src.engine.seed import seed_everything
from src.engine.trainer import Trainer
from src.logging import RunLogger
from src.logging.metrics_file import read_metrics
from src.utils.errors import UserError
from tests.conftest import REPO, TOY, cli_env, run_cli
from tests.toy.toy import ToyNet, ToyTask, blobs_splits

GAN = [a for a in TOY if not a.startswith(("model=", "loss="))] + [
    "model=toy_gan",
    "loss=toy_gan",
    "logger=none",
    "seed=0",
    "trainer.batch_size=8",
    "optimizer=adam",
    "optimizer.lr=1e-3",
    "optimizer.groups.D._target_=torch.optim.RMSprop",
    "optimizer.groups.D.lr=5e-3",
    "scheduler=none",
]


def _ckpt(run):
    return load(run / "checkpoints" / "last.ckpt")


# ---- per-group optimizer and scheduler configs -------------------------------------------------
def test_group_overrides_merge_and_a_new_target_starts_afresh():
    base = {
        "_target_": "torch.optim.SGD",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "groups": {"D": {"_target_": "torch.optim.RMSprop", "alpha": 0.9}, "G": {"lr": 0.01}},
    }
    cfgs = group_configs(base, ["G", "D", "E"], "optimizer")
    assert cfgs["E"] == {
        "_target_": "torch.optim.SGD",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
    }
    assert cfgs["G"] == {**cfgs["E"], "lr": 0.01}
    # RMSprop takes `momentum` too, but SGD's 0.9 must not leak into it
    assert cfgs["D"] == {"_target_": "torch.optim.RMSprop", "lr": 0.1, "alpha": 0.9}
    params = {n: [torch.nn.Parameter(torch.zeros(2))] for n in ("G", "D", "E")}
    opts = build_optimizers(params, OmegaConf.create(base))
    assert type(opts["D"]) is torch.optim.RMSprop and opts["D"].defaults["momentum"] == 0
    assert opts["G"].defaults["lr"] == 0.01 and opts["G"].defaults["momentum"] == 0.9

    with pytest.raises(UserError, match=r"optimizer.groups.X: .*its groups: G, D"):
        group_configs({"lr": 1, "groups": {"X": {"lr": 2}}}, ["G", "D"], "optimizer")
    with pytest.raises(UserError, match=r"optimizer.groups.D.betaz: torch.optim.Adam takes no"):
        group_configs(
            {"_target_": "torch.optim.Adam", "groups": {"D": {"betaz": 1}}}, ["D"], "optimizer"
        )


def test_scheduler_groups_and_the_linear_decay_policy():
    opts = build_optimizers(
        {n: [torch.nn.Parameter(torch.zeros(1))] for n in ("G", "D")},
        {"_target_": "torch.optim.SGD", "lr": 1.0},
    )
    scheds = build_schedulers(
        opts,
        {
            "_target_": None,
            "interval": "epoch",
            "groups": {
                "D": {
                    "_target_": "src.engine.schedulers.LinearDecayLR",
                    "constant_epochs": 3,
                    "decay_epochs": 4,
                }
            },
        },
    )
    assert set(scheds) == {"D"} and scheds["D"][1] == "epoch"
    lrs = []
    for _ in range(9):
        lrs.append(opts["D"].param_groups[0]["lr"])
        opts["D"].step()
        scheds["D"][0].step()
    # junyanz's formula written out: 1 - max(0, e + 1 - 3) / (4 + 1)
    assert lrs == pytest.approx([1 - max(0, e + 1 - 3) / 5 for e in range(9)][:7] + [0, 0])
    assert opts["G"].param_groups[0]["lr"] == 1.0
    state = scheds["D"][0].state_dict()
    fresh = LinearDecayLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 3, 4)
    fresh.load_state_dict(state)
    assert fresh.get_last_lr() == scheds["D"][0].get_last_lr()


def test_with_several_optimizers_a_backward_reaches_only_its_own_group():
    g, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opts = {"G": torch.optim.SGD(g.parameters(), lr=1), "D": torch.optim.SGD(d.parameters(), lr=1)}
    o = Optimization(opts, device=torch.device("cpu"))
    o.backward(d(g(torch.ones(3, 2))).sum(), "G")  # a generator loss through the critic
    assert all(p.grad is None for p in d.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    o.step("G")
    assert o.updates == {"G": 1, "D": 0}


# ---- hooks ----------------------------------------------------------------------------------
class HookedToy(ToyTask):
    def __init__(self, data):
        super().__init__(ToyNet(), torch.nn.CrossEntropyLoss(), data)
        self.calls, self.lrs = [], []

    def on_train_epoch_start(self, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_train_batch_start(self, batch, step):
        self.calls.append(("batch", step))
        self.lrs.append(self.optimizers()["main"].param_groups[0]["lr"])
        return {**batch, "x": batch["x"] * 0}  # what a hook returns is what the step sees

    def on_after_optimizer_step(self, name):
        self.calls.append(("stepped", name))

    def on_train_epoch_end(self, epoch):
        self.calls.append(("epoch_end", epoch))


def test_hooks_run_in_order_and_the_batch_hook_feeds_the_step(tmp_path):
    seed_everything(0)
    task = HookedToy(blobs_splits(n_train=32))
    cfg = OmegaConf.structured(
        TrainerConfig(
            batch_size=8,
            max_epochs=2,
            num_workers=0,
            progress_bar=False,
            accumulate_grad_batches=2,
            eval_every_n_epochs=0,
        )
    )
    trainer = Trainer(
        task,
        cfg,
        tmp_path,
        RunLogger(tmp_path, None),
        seed=0,
        optimizer_cfg=OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1}),
    )
    trainer.fit()
    # 4 micro-batches an epoch, accumulation 2: 2 optimizer steps an epoch
    epoch = lambda e, s: [
        ("epoch_start", e),
        ("batch", s),
        ("batch", s),
        ("stepped", "main"),  # noqa: E731
        ("batch", s + 1),
        ("batch", s + 1),
        ("stepped", "main"),
        ("epoch_end", e),
    ]
    assert task.calls == epoch(0, 0) + epoch(1, 2)
    assert task.lrs == [0.1] * 8  # the hook reaches the engine's optimizer (warm-up)
    # inputs zeroed by the hook: the first layer's weight gets no gradient and keeps its init
    seed_everything(0)
    fresh = ToyNet()
    torch.testing.assert_close(task.net.body[0].weight, fresh.body[0].weight, rtol=0, atol=0)


# ---- EMA ------------------------------------------------------------------------------------
def test_ema_equals_the_plain_recursion_in_float64():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).double()
    holder = torch.nn.Module()
    holder.net = net
    ema = EMA(holder, ("net",), decay=0.99, ramp=5.0)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for t in range(1, 8):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(4, 3, dtype=torch.float64))  # BN statistics move
        ema.update(holder)
        d = 0.99 * (1 - math.exp(-t / 5.0))
        for k, v in net.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    for k, v in ema.modules["net"].state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)
    assert ema.modules["net"].state_dict()["1.num_batches_tracked"] == 7


def test_eval_with_ema_uses_the_averaged_weights(tmp_path):
    seed_everything(0)
    data = blobs_splits()
    cfg = OmegaConf.structured(
        TrainerConfig(
            batch_size=8,
            max_steps=6,
            num_workers=0,
            progress_bar=False,
            ema_decay=0.5,
            ema_ramp=None,
        )
    )
    opt = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.5})
    task = ToyTask(ToyNet(), torch.nn.CrossEntropyLoss(), data)
    trainer = Trainer(task, cfg, tmp_path, RunLogger(tmp_path, None), seed=0, optimizer_cfg=opt)
    trainer.fit()
    averaged = trainer.ema.modules["net"].state_dict()
    assert any(not torch.equal(v, task.net.state_dict()[k]) for k, v in averaged.items())
    got = trainer.evaluate()
    # the oracle: a plain task holding the averaged weights, evaluated by hand
    plain = ToyTask(ToyNet(), torch.nn.CrossEntropyLoss(), data)
    plain.net.load_state_dict(averaged)
    plain.eval()
    from src.engine.data import make_loader

    loader = make_loader(
        data["val"],
        train=False,
        batch_size=8,
        seed=0,
        collate=plain.collate,
        num_workers=0,
        rank=0,
        world_size=1,
        limit=-1,
    )
    with torch.no_grad():
        want = plain.evaluate(loader)
    assert got["val/acc"] == want["acc"] and got["val/loss"] == pytest.approx(want["loss"])
    # eval / predict / export: load_weights puts the checkpoint's EMA into the live network
    other = Trainer(
        ToyTask(ToyNet(), torch.nn.CrossEntropyLoss(), data),
        cfg,
        tmp_path / "e",
        RunLogger(tmp_path / "e", None),
        seed=0,
        optimizer_cfg=opt,
    )
    other.load_weights(tmp_path / "checkpoints" / "last.ckpt")
    for k, v in averaged.items():
        assert torch.equal(other.task.net.state_dict()[k], v), k


# ---- a GAN through run.py: two networks, two optimizer classes, critic steps, clipping, EMA ----
def test_toy_gan_trains_with_per_group_optimizers_and_clipping(tmp_path):
    run = tmp_path / "gan"
    r = run_cli(*GAN, "trainer.max_steps=20", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = _ckpt(run)
    optim = ckpt["optim"]["optimizers"]
    assert optim["G"]["param_groups"][0]["lr"] == 1e-3 and "exp_avg" in optim["G"]["state"][0]
    assert optim["D"]["param_groups"][0]["lr"] == 5e-3 and "square_avg" in optim["D"]["state"][0]
    assert ckpt["optim"]["updates"] == {"G": 4, "D": 20}  # 5 critic steps per generator step
    critic = [v for k, v in ckpt["task"].items() if k.startswith("critic.")]
    assert critic and max(float(v.abs().max()) for v in critic) <= 0.01  # clipped after each step
    g_steps = [rec["step"] for rec in read_metrics(run) if "train/g_loss" in rec]
    assert g_steps and all(s % 5 == 0 for s in g_steps)


def test_toy_gan_resumes_exactly_after_sigterm_with_ema(tmp_path):
    common = [*GAN, "trainer.max_steps=17", "trainer.ema_decay=0.8", "trainer.ema_ramp=3"]
    a = run_cli(*common, f"hydra.run.dir={tmp_path / 'a'}")
    assert a.returncode == 0, a.stderr[-3000:]
    b1 = run_cli(*common, "trainer.preempt_at_step=7", f"hydra.run.dir={tmp_path / 'b'}")
    assert b1.returncode == 0, b1.stderr[-3000:]
    assert _ckpt(tmp_path / "b")["progress"]["global_step"] == 7
    b2 = run_cli(*common, "resume=auto", f"hydra.run.dir={tmp_path / 'b'}")
    assert b2.returncode == 0, b2.stderr[-3000:]
    ca, cb = _ckpt(tmp_path / "a"), _ckpt(tmp_path / "b")
    assert ca["progress"] == cb["progress"] and ca["optim"]["updates"] == cb["optim"]["updates"]
    for k in ca["task"]:
        assert torch.equal(ca["task"][k], cb["task"][k]), k
    ema_a, ema_b = ca["ema"]["modules"]["generator"], cb["ema"]["modules"]["generator"]
    assert ca["ema"]["updates"] == cb["ema"]["updates"] == 17
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    assert any(not torch.equal(ema_a[k], ca["task"][f"generator.{k}"]) for k in ema_a)
    for name in ("G", "D"):
        sa, sb = ca["optim"]["optimizers"][name]["state"], cb["optim"]["optimizers"][name]["state"]
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (name, k)


def test_toy_gan_under_two_process_ddp_wraps_each_network(tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "run.py"),
    ]
    r = run_cli(
        *GAN,
        "trainer.max_steps=10",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run}",
        module=cmd,
        env=cli_env(),
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 10
    logged = [rec for rec in read_metrics(run) if "train/ddp_wrapped" in rec]
    assert logged and all(rec["train/ddp_wrapped"] == 2.0 for rec in logged)
    assert any("train/g_loss" in rec for rec in logged)
    ckpt = _ckpt(run)
    assert not any(".module." in k for k in ckpt["task"]) and ckpt["optim"]["updates"]["G"] == 2


def test_incompatible_pick_lists_choices_from_the_search_path(tmp_path):
    r = run_cli(*GAN, "dataset=cub", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2, r.stderr[-2000:]
    last = [line for line in r.stderr.splitlines() if line.strip()][-1]
    assert last == (
        "error: dataset=cub (kind 'classification') does not fit model=toy_gan; "
        "valid choices: dataset=toy"
    )
