"""``trainer.cpu_conv1x1``: a channels_last network's 1x1 convolutions run oneDNN's kernels on
the CPU (src/engine/pointwise_conv.py) by giving them dilation 2, which for a 1x1 kernel is the
same function. Checked: that identity in float64 against the undilated convolution (values and
gradients, strides, padding modes, groups); that the steered convolutions really leave ATen's
GEMM path (the profiler's op names) and give its float32 values to rounding; that the Trainer
applies it only to channels_last CPU training, for the span of ``fit``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.profiler import profile

from src.config.schema import TrainerConfig
from src.engine.pointwise_conv import onednn_pointwise_convs, steerable
from src.engine.seed import seed_everything
from src.engine.trainer import Trainer
from src.logging import RunLogger
from src.logging.metrics_file import read_metrics
from tests.engine.test_speed_options import SGD, Squares

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ATen's rule sends 1x1 convs to its GEMM path only on one thread
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=1, padding=0),
        dict(stride=2, padding=0),
        dict(stride=1, padding=1),
        dict(stride=(2, 1), padding=(1, 0), padding_mode="reflect"),
        dict(stride=1, padding=0, groups=2, bias=False),
        dict(stride=1, padding="same"),
    ],
)
def test_a_dilated_1x1_convolution_is_the_same_function(kwargs):
    """float64: outputs and the input's, weight's and bias's gradients of dilation 2 equal those
    of dilation 1 (to 1e-12; the two run different kernels)."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 1, **kwargs).double()
    dilated = copy.deepcopy(conv)
    dilated.dilation = (2, 2)
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64, generator=g)
    outs, grads = [], []
    for m in (conv, dilated):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _pointwise_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 1),  # steered
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 16, 1, stride=2),  # steered (already oneDNN's: strided)
        nn.Conv2d(16, 16, 1, dilation=3),  # not steered: keeps its own dilation
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def _ops_of_a_step(net, x) -> tuple[set[str], torch.Tensor, list[torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    with profile() as prof:
        out = net(x)
        out.square().sum().backward()
    names = {e.key for e in prof.key_averages()}
    return names, out.detach(), [p.grad.clone() for p in net.parameters()]


def test_steered_pointwise_convs_leave_atens_gemm_path_and_come_back(one_thread):
    """channels_last float32, batch 4, one thread: without steering the 1x1 conv runs
    ``_slow_conv2d_forward`` / ``_backward``; steered, no op of that path runs, the outputs and
    gradients equal the unsteered ones to float rounding, and each conv has its dilation back."""
    torch.manual_seed(0)
    net = _pointwise_net().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 24, 24).contiguous(memory_format=torch.channels_last)
    assert [steerable(m) for m in net] == [False] * 3 + [True, False, False, True] + [False] * 4
    plain_ops, plain_out, plain_grads = _ops_of_a_step(net, x)
    assert {"aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward"} <= plain_ops
    with onednn_pointwise_convs(net) as steered:
        assert steered == 2 and net[3].dilation == (2, 2) and net[7].dilation == (3, 3)
        ops, out, grads = _ops_of_a_step(net, x)
    assert not {o for o in ops if "slow_conv2d" in o}
    assert "aten::mkldnn_convolution" in ops
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [m.dilation for m in net if isinstance(m, nn.Conv2d)] == [(1, 1)] * 3 + [(3, 3)]


def _fit(tmp_path, **trainer):
    from src.tasks.base import Task

    class Toy(Task):
        def __init__(self, data):
            super().__init__(nn.CrossEntropyLoss(), data)
            self.net = _pointwise_net()
            self.seen: list[tuple[int, int]] = []

        def training_step(self, batch, opt):
            self.seen.append(self.net[3].dilation)
            return {"loss": self.loss(self.net(batch["image"]), batch["label"])}

    seed_everything(0)
    task = Toy({"train": Squares(16)})
    cfg = dict(batch_size=4, num_workers=0, progress_bar=False, log_every_n_steps=1)
    t = Trainer(
        task,
        OmegaConf.structured(TrainerConfig(**cfg, max_steps=3, eval_every_n_epochs=0, **trainer)),
        tmp_path,
        RunLogger(tmp_path, None),
        seed=0,
        optimizer_cfg=OmegaConf.create(SGD),
    )
    t.fit()
    losses = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    return task, np.array(losses)


def test_the_trainer_steers_only_channels_last_cpu_training_and_only_during_fit(
    tmp_path, one_thread
):
    """Steered while channels_last CPU training runs (the default ``onednn``), not with
    ``aten`` nor for a contiguous network; the losses of the three runs agree to 1e-4 and the
    network holds dilation 1 after ``fit``."""
    steered, losses = _fit(tmp_path / "a", channels_last=True)
    assert steered.seen == [(2, 2)] * 3 and steered.net[3].dilation == (1, 1)
    aten, aten_losses = _fit(tmp_path / "b", channels_last=True, cpu_conv1x1="aten")
    assert aten.seen == [(1, 1)] * 3
    plain, plain_losses = _fit(tmp_path / "c")
    assert plain.seen == [(1, 1)] * 3
    assert len(losses) == len(aten_losses) == len(plain_losses) == 3
    np.testing.assert_allclose(losses, aten_losses, rtol=1e-4)
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-4)


def test_a_bad_choice_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.cpu_conv1x1 must be one of onednn\|aten"):
        _fit(tmp_path, cpu_conv1x1="mkl")
