"""Engine pieces in-process: sampler sharding/resume, NaN skipping, accumulation, atomic saves."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from src.config.schema import TrainerConfig
from src.engine.checkpoint import CheckpointError, load, save_atomic
from src.engine.data import ResumableSampler
from src.engine.optim import NonFiniteLossError
from src.engine.seed import sample_rng, seed_everything
from src.engine.trainer import Trainer
from src.logging import RunLogger
from src.logging.metrics_file import read_metrics
from tests.toy.toy import ToyNet, ToyTask, blobs_splits


def test_sampler_shards_cover_the_epoch_and_resume_skips_consumed_batches():
    full = ResumableSampler(10, shuffle=True, seed=3, batch_size=2)
    full.set_epoch(4)
    order = [i for _, i in full]
    assert sorted(order) == list(range(10))
    again = ResumableSampler(10, shuffle=True, seed=3, batch_size=2)
    again.set_epoch(4)
    assert [i for _, i in again] == order  # a function of (seed, epoch) only
    again.set_epoch(5)
    assert [i for _, i in again] != order
    resumed = ResumableSampler(10, shuffle=True, seed=3, batch_size=2)
    resumed.set_epoch(4, start_batch=3)
    assert [i for _, i in resumed] == order[6:]
    shards = []
    for r in range(3):
        s = ResumableSampler(10, shuffle=True, seed=3, batch_size=2, rank=r, world_size=3)
        s.set_epoch(4)
        shards.append([i for _, i in s])
    assert {len(s) for s in shards} == {4}  # padded like DistributedSampler
    assert set(sum(shards, [])) == set(range(10))


def test_sample_rng_depends_on_seed_epoch_index_only():
    a = sample_rng(0, 1, 2).random(3)
    assert (a == sample_rng(0, 1, 2).random(3)).all()
    for other in (sample_rng(1, 1, 2), sample_rng(0, 2, 2), sample_rng(0, 1, 3)):
        assert not (a == other.random(3)).any()


def _trainer(tmp_path, data, **trainer_overrides):
    cfg = OmegaConf.structured(
        TrainerConfig(
            batch_size=8,
            num_workers=0,
            progress_bar=False,
            log_every_n_steps=1,
            **trainer_overrides,
        )
    )
    seed_everything(0)
    task = ToyTask(ToyNet(), torch.nn.CrossEntropyLoss(), data)
    opt = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1})
    return Trainer(task, cfg, tmp_path, RunLogger(tmp_path, None), seed=0, optimizer_cfg=opt)


def test_nonfinite_losses_are_skipped_and_counted(tmp_path):
    data = blobs_splits(n_train=64, nan_train_indices=range(0, 64, 9))
    trainer = _trainer(tmp_path, data, max_epochs=1)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["global_step"] == 8
    # each NaN sample poisons its whole batch's loss: count the poisoned batches independently
    sampler = ResumableSampler(64, shuffle=True, seed=0, batch_size=8, drop_last=True)
    order = [i for _, i in sampler]
    poisoned = sum(any(i % 9 == 0 for i in order[b * 8 : (b + 1) * 8]) for b in range(8))
    assert 0 < poisoned < 8
    assert summary["nonfinite_skipped"] == poisoned
    for p in trainer.task.parameters():
        assert torch.isfinite(p).all()


def test_many_nonfinite_losses_in_a_row_stop_with_a_clear_message(tmp_path):
    data = blobs_splits(n_train=64, nan_train_indices=range(64))
    trainer = _trainer(tmp_path, data, max_epochs=1, max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        trainer.fit()


def test_gradient_accumulation_matches_a_big_batch(tmp_path):
    # no BN/dropout effects: compare 2 x 4 accumulated with 1 x 8 on a linear model
    data = blobs_splits(n_train=64)

    def run(bs, acc, sub):
        cfg = OmegaConf.structured(
            TrainerConfig(
                batch_size=bs,
                accumulate_grad_batches=acc,
                max_steps=3,
                num_workers=0,
                progress_bar=False,
                eval_every_n_epochs=0,
            )
        )
        seed_everything(0)
        net = torch.nn.Linear(4, 3)
        task = ToyTask(net, torch.nn.CrossEntropyLoss(), data)
        opt = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.5})
        Trainer(
            task, cfg, tmp_path / sub, RunLogger(tmp_path / sub, None), seed=0, optimizer_cfg=opt
        ).fit()
        return net.weight.detach().clone()

    # sampler order is per (seed, epoch), so 3 steps of 8 == 3 windows of 2 x 4 on same samples
    torch.testing.assert_close(run(8, 1, "a"), run(4, 2, "b"), rtol=1e-5, atol=1e-6)


def test_metrics_file_and_best_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, blobs_splits(), max_epochs=3)
    summary = trainer.fit()
    trainer.logger.finish(summary)
    records = read_metrics(tmp_path)
    val = [r for r in records if "val/acc" in r]
    assert len(val) == 3 and all("train/loss" not in r for r in val)
    best = load(tmp_path / "checkpoints" / "best.ckpt")
    assert best["best"] == max(r["val/acc"] for r in val) == summary["best"]
    assert (tmp_path / "summary.json").is_file()


def test_atomic_save_keeps_the_previous_checkpoint_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomic({"step": 1}, path)

    def boom(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))


class TwoOptimizerTask(ToyTask):
    """GAN-shaped: two optimizers stepped in turn by the task, through the engine's helper."""

    automatic_optimization = False
    ddp_modules = ("net", "critic")

    def __init__(self, data):
        super().__init__(torch.nn.Linear(4, 3), torch.nn.CrossEntropyLoss(), data)
        self.critic = torch.nn.Linear(3, 1)
        self.calls = []

    def optimizer_groups(self):
        return {"D": list(self.critic.parameters()), "G": list(self.net.parameters())}

    def training_step(self, batch, opt):
        fake = self.net(batch["x"])
        d_loss = self.critic(fake.detach()).mean() ** 2
        opt.backward(d_loss, "D")
        self.calls.append(("D", opt.step("D")))
        g_loss = -self.critic(fake).mean()
        opt.backward(g_loss, "G")
        self.calls.append(("G", opt.step("G")))
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}


def test_manual_optimisation_steps_several_optimizers_in_one_loop(tmp_path):
    data = blobs_splits(n_train=32)
    cfg = OmegaConf.structured(
        TrainerConfig(
            batch_size=8,
            max_steps=4,
            num_workers=0,
            progress_bar=False,
            accumulate_grad_batches=2,
            eval_every_n_epochs=0,
        )
    )
    seed_everything(0)
    task = TwoOptimizerTask(data)
    g0 = task.net.weight.detach().clone()
    d0 = task.critic.weight.detach().clone()
    opt = OmegaConf.create({"_target_": "torch.optim.Adam", "lr": 0.01})
    trainer = Trainer(task, cfg, tmp_path, RunLogger(tmp_path, None), seed=0, optimizer_cfg=opt)
    summary = trainer.fit()
    assert summary["global_step"] == 4
    # accumulation 2: of the 8 micro-batches, every second one steps both optimizers, D first
    assert task.calls == [("D", False), ("G", False), ("D", True), ("G", True)] * 4
    assert not torch.equal(g0, task.net.weight) and not torch.equal(d0, task.critic.weight)
    ckpt = load(tmp_path / "checkpoints" / "last.ckpt")
    assert set(ckpt["optim"]["optimizers"]) == {"D", "G"}
    assert ckpt["optim"]["optimizers"]["G"]["state"][0]["step"] == 4


def test_seed_zero_is_a_seed():
    seed_everything(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(a, torch.rand(3))


def test_gradient_clipping_bounds_the_update(tmp_path):
    # one SGD step with lr 1 moves the weights by exactly the (clipped) gradient
    data = blobs_splits(n_train=16)

    def step(clip):
        cfg = OmegaConf.structured(
            TrainerConfig(
                batch_size=8,
                max_steps=1,
                num_workers=0,
                progress_bar=False,
                eval_every_n_epochs=0,
                grad_clip_norm=clip,
            )
        )
        seed_everything(0)
        net = torch.nn.Linear(4, 3)
        before = [p.detach().clone() for p in net.parameters()]
        task = ToyTask(net, torch.nn.CrossEntropyLoss(), data)
        opt = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 1.0})
        Trainer(
            task,
            cfg,
            tmp_path / str(clip),
            RunLogger(tmp_path / str(clip), None),
            seed=0,
            optimizer_cfg=opt,
        ).fit()
        return torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())])

    free = step(None)
    assert free.norm() > 0.05
    clipped = step(0.05)
    torch.testing.assert_close(clipped.norm(), torch.tensor(0.05), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        clipped / clipped.norm(), free / free.norm(), rtol=1e-4, atol=1e-6
    )  # same direction


def test_bf16_autocast_trains_on_cpu(tmp_path):
    trainer = _trainer(tmp_path, blobs_splits(), max_epochs=2, precision="bf16")
    seen = []
    step = trainer.task.training_step

    def spy(batch, opt):
        out = step(batch, opt)
        seen.append(trainer.task.net(batch["x"]).dtype)
        return out

    trainer.task.training_step = spy
    summary = trainer.fit()
    assert summary["status"] == "completed" and seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.task.parameters())


def test_load_weights_names_the_file_when_it_does_not_fit(tmp_path):
    trainer = _trainer(tmp_path, blobs_splits(), max_epochs=1)
    state = {f"net.{k}": v for k, v in ToyNet(hidden=8).state_dict().items()}
    wrong_shape = tmp_path / "narrow.ckpt"
    save_atomic({"task": state}, wrong_shape)
    with pytest.raises(CheckpointError, match="narrow.ckpt does not fit this model"):
        trainer.load_weights(wrong_shape)
    other = tmp_path / "other.ckpt"
    save_atomic({"task": {"net.head.weight": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="other.ckpt does not fit.*unexpected"):
        trainer.load_weights(other)
    # loss state may differ (e.g. WS-DAN centers trained with loss=center, evaluated with ce)
    good = {f"net.{k}": v for k, v in trainer.task.net.state_dict().items()}
    good["loss.center.centers"] = torch.zeros(3, 4)
    ok = tmp_path / "ok.ckpt"
    save_atomic({"task": good}, ok)
    trainer.load_weights(ok)
