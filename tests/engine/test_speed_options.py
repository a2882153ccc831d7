"""The engine's speed options (issue 17, training step): ``trainer.compile``,
``trainer.channels_last``, ``optimizer.foreach`` / ``fused`` and the finite-loss check without a
host read in ``backward``. Each option must give the eager / contiguous / for-loop run's values
(to the tolerance stated at each test) and keep checkpoints interchangeable."""

from __future__ import annotations

import contextlib
import copy
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from src.config.schema import AdamConfig, RMSpropConfig, SGDConfig, TrainerConfig
from src.data.base import SampleDataset
from src.engine.checkpoint import load
from src.engine.optim import Optimization, build_optimizers
from src.engine.seed import seed_everything
from src.engine.trainer import Trainer, _scalars, compile_options
from src.logging import RunLogger
from src.logging.metrics_file import read_metrics
from src.tasks.base import Task
from src.utils.errors import UserError
from tests.toy.toy import ToyNet, ToyTask, blobs_splits

SGD = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}


def _cfg(**overrides):
    base = dict(batch_size=8, num_workers=0, progress_bar=False, log_every_n_steps=1)
    return OmegaConf.structured(TrainerConfig(**{**base, **overrides}))


def _fit(tmp_path, make_task, data, optimizer=SGD, ckpt_path=None, **trainer):
    seed_everything(0)
    task = make_task(data)
    t = Trainer(
        task,
        _cfg(**trainer),
        tmp_path,
        RunLogger(tmp_path, None),
        seed=0,
        optimizer_cfg=OmegaConf.create(optimizer),
    )
    summary = t.fit(ckpt_path)
    losses = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    return t, summary, losses


def _toy(dropout=0.1):
    return lambda data: ToyTask(ToyNet(dropout=dropout), nn.CrossEntropyLoss(), data)


def _assert_states_close(a: dict, b: dict, rtol: float, atol: float):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.is_floating_point:
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


# ---- 1. trainer.compile ---------------------------------------------------------------------
_graphs: list[int] = []


@pytest.fixture
def counting_backend():
    """A torch.compile backend that runs the captured graph eagerly and counts the graphs, so a
    test sees that compilation really happened."""
    from torch._dynamo import register_backend
    from torch._dynamo.backends.registry import _COMPILER_FNS

    name = "counting_eager_test"
    if name not in _COMPILER_FNS:

        @register_backend(name=name)
        def _counting(gm, example_inputs):
            _graphs.append(len(gm.graph.nodes))
            return gm.forward

    _graphs.clear()
    torch._dynamo.reset()
    yield name
    torch._dynamo.reset()


def test_compile_options_parse_and_refuse_a_bad_mode():
    assert compile_options(False, "inductor", None) is None
    assert compile_options("false", "inductor", None) is None
    assert compile_options(True, "eager", None) == {"backend": "eager", "dynamic": None}
    assert compile_options("max-autotune", "inductor", False)["mode"] == "max-autotune"
    with pytest.raises(UserError, match=r"trainer.compile='fastest'.*max-autotune"):
        compile_options("fastest", "inductor", None)


def test_compiled_run_equals_the_eager_run_and_checkpoints_interchange(tmp_path, counting_backend):
    data = blobs_splits(n_train=32)
    eager, _, eager_losses = _fit(tmp_path / "eager", _toy(), data, max_steps=4)
    compiled, summary, losses = _fit(
        tmp_path / "compiled",
        _toy(),
        data,
        max_steps=4,
        compile=True,
        compile_backend=counting_backend,
    )
    assert summary["global_step"] == 4
    assert _graphs, "torch.compile never captured a graph"
    assert compiled.task.net._compiled_call_impl is not None  # compiled in place
    # the backend runs the captured aten-level graph eagerly: the same ops, dropout included
    assert losses == pytest.approx(eager_losses, rel=1e-6, abs=1e-7)
    _assert_states_close(compiled.task.state_dict(), eager.task.state_dict(), 1e-6, 1e-7)
    assert not any("_orig_mod" in k for k in compiled.task.state_dict())

    # a compiled run's checkpoint loads strictly into an uncompiled Task ...
    ckpt = tmp_path / "compiled" / "checkpoints" / "last.ckpt"
    plain = ToyTask(ToyNet(), nn.CrossEntropyLoss(), data)
    plain.load_state_dict(load(ckpt)["task"], strict=True)
    _assert_states_close(plain.state_dict(), compiled.task.state_dict(), 0, 0)
    # ... and an uncompiled run's checkpoint resumes a compiled run, as an eager resume does
    _fit(tmp_path / "a", _toy(), data, max_steps=2)
    half = tmp_path / "a" / "checkpoints" / "last.ckpt"
    resumed, _, _ = _fit(
        tmp_path / "b",
        _toy(),
        data,
        max_steps=4,
        ckpt_path=str(half),
        compile=True,
        compile_backend=counting_backend,
    )
    assert resumed.global_step == 4
    _assert_states_close(resumed.task.state_dict(), eager.task.state_dict(), 1e-6, 1e-7)


def test_inductor_compiled_steps_match_eager_on_a_tiny_net(tmp_path):
    """Inductor (C++ code generated and built with g++ on CPU) on the toy MLP without dropout
    (inductor draws its own random numbers): 3 SGD steps, losses and weights within 1e-5 of
    eager (fused kernels reorder float32 sums)."""
    torch._dynamo.reset()
    data = blobs_splits(n_train=24)
    t0 = time.time()
    _, _, eager_losses = _fit(tmp_path / "eager", _toy(0.0), data, max_steps=3)
    compiled, _, losses = _fit(
        tmp_path / "inductor", _toy(0.0), data, max_steps=3, compile=True, eval_every_n_epochs=0
    )
    eager, _, _ = _fit(tmp_path / "eager2", _toy(0.0), data, max_steps=3, eval_every_n_epochs=0)
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    _assert_states_close(compiled.task.state_dict(), eager.task.state_dict(), 1e-5, 1e-6)
    assert time.time() - t0 < 300
    torch._dynamo.reset()


# ---- 2. trainer.channels_last ---------------------------------------------------------------
class Squares(SampleDataset):
    """3x16x16 images: a bright square whose position is the class, plus noise."""

    num_classes = 3

    def __init__(self, n: int, size: int = 16, seed: int = 0):
        g = np.random.default_rng(seed)
        self.labels = g.integers(0, 3, n)
        self.x = g.normal(0, 0.3, (n, 3, size, size)).astype(np.float32)
        for i, c in enumerate(self.labels):
            o = 2 + 4 * int(c)
            self.x[i, :, o : o + 4, o : o + 4] += 1.0

    def __len__(self):
        return len(self.labels)

    def load(self, index, rng):
        return {"image": torch.from_numpy(self.x[index].copy()), "label": int(self.labels[index])}


class ConvToy(Task):
    def __init__(self, data):
        super().__init__(nn.CrossEntropyLoss(), data)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3),
        )
        self.seen_channels_last: list[bool] = []

    def training_step(self, batch, opt):
        x = batch["image"]
        self.seen_channels_last.append(
            x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        )
        loss = self.loss(self.net(x), batch["label"])
        return {"loss": loss}

    def evaluate(self, loader):
        n = correct = 0
        for b in loader:
            correct += int((self.net(b["image"]).argmax(1) == b["label"]).sum())
            n += len(b["label"])
        return {"acc": correct / n}


def test_channels_last_gives_the_contiguous_run_within_float_tolerance(tmp_path):
    """A conv net with BatchNorm, 4 SGD steps: NHWC convolutions sum in another order, so
    losses and weights agree to 1e-4 (relative), not bit for bit; the checkpoint's weights load
    into a contiguous Task and give the same outputs."""
    data = {"train": Squares(32), "val": Squares(8, seed=1)}
    plain, _, plain_losses = _fit(tmp_path / "plain", ConvToy, data, max_steps=4)
    nhwc, _, losses = _fit(tmp_path / "nhwc", ConvToy, data, max_steps=4, channels_last=True)
    assert plain.task.seen_channels_last == [False] * 4
    assert nhwc.task.seen_channels_last == [True] * 4
    conv = nhwc.task.net[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-6)
    _assert_states_close(nhwc.task.state_dict(), plain.task.state_dict(), 1e-4, 1e-5)
    loaded = ConvToy(data)
    loaded.load_state_dict(load(tmp_path / "nhwc" / "checkpoints" / "last.ckpt")["task"])
    x = torch.from_numpy(data["val"].x)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net.eval()(x), nhwc.task.net.eval()(x))


class RandomBirds(SampleDataset):
    num_classes = 3

    def __init__(self, n: int, size: int):
        g = np.random.default_rng(0)
        self.x = g.normal(0, 1, (n, 3, size, size)).astype(np.float32)
        self.labels = g.integers(0, 3, n)

    def __len__(self):
        return len(self.labels)

    def load(self, index, rng):
        return {"image": torch.from_numpy(self.x[index].copy()), "label": int(self.labels[index])}


def test_channels_last_ws_dan_step_gives_the_same_losses(tmp_path):
    """WS-DAN (tiny resnet18 cut at stage 1, 2 attention maps, 64 px): its three forwards,
    attention crop + drop and center loss, 3 SGD steps, NHWC vs contiguous within 1e-3."""
    from src.losses.ws_dan import WSDANLoss
    from src.models.ws_dan import WSDAN
    from src.tasks.ws_dan import WSDANTask

    def make(data):
        net = WSDAN(3, backbone="resnet18", feature_index=1, num_attentions=2)
        return WSDANTask(net, WSDANLoss(), data)

    data = {"train": RandomBirds(12, 64)}
    args = dict(max_steps=3, batch_size=4, eval_every_n_epochs=0)
    _, _, plain = _fit(tmp_path / "plain", make, data, optimizer={**SGD, "lr": 1e-3}, **args)
    nhwc, _, losses = _fit(
        tmp_path / "nhwc", make, data, optimizer={**SGD, "lr": 1e-3}, channels_last=True, **args
    )
    assert len(losses) == 3
    assert losses == pytest.approx(plain, rel=1e-3)
    first_conv = next(m for m in nhwc.task.net.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)


# ---- 3. optimizer.foreach / fused -----------------------------------------------------------
CASES = [
    (SGDConfig, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True}),
    (SGDConfig, {"lr": 0.1, "momentum": 0.0}),
    (AdamConfig, {"lr": 1e-2, "weight_decay": 1e-3}),
    (AdamConfig, {"_target_": "torch.optim.AdamW", "lr": 1e-2}),
    (RMSpropConfig, {"lr": 1e-2, "momentum": 0.5}),
]


def _run_optimizer(schema, options, impl, steps=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (8,), (5, 8), (5,), (1,)]
    params = [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]
    cfg = OmegaConf.merge(OmegaConf.structured(schema), options, impl)
    opt = build_optimizers({"main": params}, cfg)["main"]
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
        opt.step()
    return opt, [p.detach().clone() for p in params]


def _flags(opt) -> tuple:
    group = opt.param_groups[0]
    return group.get("foreach"), group.get("fused")


@pytest.mark.parametrize("schema,options", CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_the_default_implementation_gives_the_for_loop_parameters(schema, options):
    """Both flags null: fused where torch has it (SGD, Adam, AdamW), else foreach (RMSprop).
    Oracle: torch's per-parameter loop (``foreach=false``), in float64 to 1e-12 and in
    float32 to 2e-6 after six steps (the fused Adam kernels reorder float operations; SGD's and
    foreach's are the loop's arithmetic)."""
    loop_opt, loop = _run_optimizer(schema, options, {"foreach": False})
    assert _flags(loop_opt) == (False, None)
    default_opt, default = _run_optimizer(schema, options, {})
    fusable = "fused" in OmegaConf.structured(schema)
    assert _flags(default_opt) == ((None, True) if fusable else (True, None))
    for a, b in zip(default, loop):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)
    _, loop64 = _run_optimizer(schema, options, {"foreach": False}, dtype=torch.float64)
    _, default64 = _run_optimizer(schema, options, {}, dtype=torch.float64)
    for a, b in zip(default64, loop64):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    foreach_opt, foreach = _run_optimizer(schema, options, {"foreach": True})
    assert _flags(foreach_opt) == (True, None)
    for a, b in zip(foreach, loop):  # foreach on the CPU is the loop's arithmetic, bit for bit
        assert torch.equal(a, b)
    if fusable:  # fused=false alone asks for the multi-tensor path, not torch's loop
        assert _flags(_run_optimizer(schema, options, {"fused": False}, steps=0)[0]) == (
            True,
            False,
        )
    _, moved = _run_optimizer(schema, options, {"foreach": False}, steps=1)
    assert not any(torch.equal(a, b) for a, b in zip(loop, moved))  # the steps did something


def test_fused_is_the_default_only_where_torch_has_the_kernels():
    sgd = OmegaConf.structured(SGDConfig)
    floats = [nn.Parameter(torch.zeros(2))]
    assert _flags(build_optimizers({"main": floats}, sgd)["main"]) == (None, True)
    # a parameter group list (YOLOv3's weight-decay groups) is looked into
    groups = [{"params": floats}, {"params": [nn.Parameter(torch.zeros(3))], "weight_decay": 0}]
    assert _flags(build_optimizers({"main": groups}, sgd)["main"]) == (None, True)
    # a meta tensor has no fused kernel: the multi-tensor path instead
    meta = [nn.Parameter(torch.zeros(2, device="meta"))]
    assert _flags(build_optimizers({"main": meta}, sgd)["main"]) == (True, None)
    # Adagrad has fused kernels on fewer devices: the engine leaves it on foreach
    ada = {"_target_": "torch.optim.Adagrad", "lr": 0.1}
    assert _flags(build_optimizers({"main": floats}, ada)["main"]) == (True, None)


def test_implementation_flags_refuse_what_torch_cannot_do():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(UserError, match=r"optimizer.fused=true: torch.optim.RMSprop has no fused"):
        build_optimizers({"main": p}, {"_target_": "torch.optim.RMSprop", "fused": True})
    with pytest.raises(UserError, match="foreach and fused cannot both be true"):
        build_optimizers({"main": p}, {"_target_": "torch.optim.SGD", "foreach": 1, "fused": 1})
    # a group with another class starts afresh and gets that class's resolution
    opts = build_optimizers(
        {"G": p, "D": [nn.Parameter(torch.zeros(2))]},
        OmegaConf.merge(
            OmegaConf.structured(AdamConfig),
            {"fused": True, "groups": {"D": {"_target_": "torch.optim.RMSprop"}}},
        ),
    )
    assert opts["G"].param_groups[0]["fused"] is True
    assert opts["D"].param_groups[0]["foreach"] is True
    # a group with its own class and no flags gets that class's default (fused for SGD)
    opts = build_optimizers(
        {"G": p, "D": [nn.Parameter(torch.zeros(2))]},
        OmegaConf.merge(
            OmegaConf.structured(RMSpropConfig), {"groups": {"G": {"_target_": "torch.optim.SGD"}}}
        ),
    )
    assert _flags(opts["G"]) == (None, True) and _flags(opts["D"]) == (True, None)


def test_a_resumed_optimizer_keeps_its_own_implementation_flags():
    p = [nn.Parameter(torch.ones(3))]
    loop = Optimization(
        build_optimizers({"main": p}, {**SGD, "foreach": False}), device=torch.device("cpu")
    )
    p[0].grad = torch.ones(3)
    loop.optimizers["main"].step()
    q = [nn.Parameter(torch.ones(3))]
    fused = Optimization(build_optimizers({"main": q}, {**SGD, "fused": True}), device=p[0].device)
    fused.load_state_dict(loop.state_dict())
    group = fused.optimizers["main"].param_groups[0]
    assert group["fused"] is True and group["foreach"] is None
    buf = fused.optimizers["main"].state[q[0]]["momentum_buffer"]
    assert torch.equal(buf, torch.ones(3))  # the state itself came across


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
        ),
    ],
)
def test_a_loop_checkpoint_resumes_under_the_fused_default(device):
    """A run saved with torch's loop (as every run before fused became the default) goes on
    under the default: Adam's ``step`` counts move to the parameters' device (the fused
    kernels read them there) and the next updates are the loop's to float32 rounding."""
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(4)]
    adam = {"_target_": "torch.optim.Adam", "lr": 0.1}

    def run(flags, state=None, steps=range(4)):
        params = [nn.Parameter(t.clone().to(device)) for t in start]
        opt = Optimization(
            build_optimizers({"main": params}, {**adam, **flags}), device=params[0].device
        )
        if state is not None:
            for p, t in zip(params, state[1]):
                p.data.copy_(t)
            opt.load_state_dict(copy.deepcopy(state[0]))  # as read back from a file
        for k in steps:
            for p, grad in zip(params, grads[k]):
                p.grad = grad.to(device)
            opt.step()
        return opt, [p.detach().clone() for p in params]

    saved, halfway = run({"foreach": False}, steps=range(2))
    state = (saved.state_dict(), halfway)
    _, loop = run({"foreach": False}, state, steps=range(2, 4))
    resumed, fused = run({}, state, steps=range(2, 4))
    group = resumed.optimizers["main"].param_groups[0]
    assert group["fused"] is True
    for p in group["params"]:
        step = resumed.optimizers["main"].state[p]["step"]
        assert step.device == p.device and float(step) == 4.0
    for a, b in zip(fused, loop):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)


# ---- 4. no host read of the loss in backward ------------------------------------------------
@contextlib.contextmanager
def host_reads():
    """Counts Tensor -> Python conversions (bool, item, float, int, tolist)."""
    calls: list[str] = []
    names = ("__bool__", "item", "__float__", "__int__", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(n):
        def f(self, *a, **k):
            calls.append(n)
            return saved[n](self, *a, **k)

        return f

    for n in names:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield calls
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def _linear_opt(accumulate=1, **kw):
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return net, Optimization({"main": opt}, device=torch.device("cpu"), accumulate=accumulate, **kw)


def test_backward_does_not_read_the_loss_and_step_reads_it_once():
    net, opt = _linear_opt()
    x = torch.randn(4, 3)
    with host_reads() as calls:
        opt.backward(net(x).square().mean())
    assert calls == []
    with host_reads() as calls:
        assert opt.step() is True
    assert calls == ["__bool__"]


def test_a_nonfinite_loss_still_leaves_params_and_optimizer_state_untouched():
    net, opt = _linear_opt()
    x = torch.randn(4, 3)
    opt.backward(net(x).square().mean())
    opt.step()
    opt.advance()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = {k: v.clone() for k, v in opt.optimizers["main"].state[net.weight].items()}
    opt.backward(net(x).square().mean() * float("nan"))
    assert torch.isnan(net.weight.grad).all()  # the backward ran (no host read decided first)
    assert opt.step() is False and opt.nonfinite_total == 1 and opt.updates["main"] == 1
    assert net.weight.grad is None
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in opt.optimizers["main"].state[net.weight].items():
        assert torch.equal(v, state[k]), k


def test_a_nonfinite_micro_batch_skips_its_whole_accumulation_window():
    net, opt = _linear_opt(accumulate=2, max_consecutive_nonfinite=2)
    x = torch.randn(4, 3)
    before = net.weight.detach().clone()
    opt.backward(net(x).sum() * float("inf"))
    assert opt.step() is False  # not a boundary: nothing read yet
    opt.resolve()  # what the engine does after each micro-batch
    assert opt.nonfinite_total == 1
    opt.advance()
    opt.backward(net(x).sum())
    assert opt.step() is False and torch.equal(net.weight, before)
    opt.advance()
    opt.backward(net(x).sum() * float("nan"))
    opt.resolve()
    opt.advance()
    opt.backward(net(x).sum() * float("nan"))
    with pytest.raises(Exception, match="2 non-finite losses in a row"):
        opt.step()


def test_logged_scalars_come_back_in_one_host_transfer():
    out = {"loss": torch.tensor(1.5), "a": torch.tensor([2.0]), "b": 3, "map": torch.ones(2, 2)}
    with host_reads() as calls:
        logs = _scalars(out, "train/")
    assert logs == {"train/loss": 1.5, "train/a": 2.0, "train/b": 3.0}
    assert calls == ["tolist"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_backward_and_the_engine_step_do_not_sync(tmp_path):
    net = nn.Linear(3, 2).cuda()
    opt = Optimization(
        {"main": torch.optim.SGD(net.parameters(), lr=0.1, foreach=True)},
        device=torch.device("cuda"),
    )
    x = torch.randn(4, 3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.backward(net(x).square().mean())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.step() is True
