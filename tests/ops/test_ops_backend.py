"""Backend switch, path selection, and the gradient checker catching a dishonest op."""

import pytest
import torch

import src.ops as ops
from src.ops import _backend
from src.ops.check import main as check_main
from src.ops.check import numeric_vs_analytic, upstream_scaling_error


def test_public_api_is_importable():
    for name in (
        "sigmoid_focal_loss",
        "smooth_l1_loss",
        "wing_loss",
        "box_iou",
        "generalized_box_iou",
        "giou_loss",
        "nms",
        "batched_nms",
        "corner_pool",
        "box_area",
        "set_backend",
    ):
        assert callable(getattr(ops, name))
    from src.ops.boxes import box_area  # noqa: F401  (used by src/nn)


def test_set_backend_and_path_selection():
    x = torch.zeros(2, 3)
    assert _backend.get_backend() in _backend.BACKENDS
    with ops.use_backend("reference"):
        assert _backend.kernel_device(x) is None
    with ops.use_backend("emulate"):
        assert _backend.kernel_device(x) == torch.device("cpu")
        assert _backend.kernel_device(x.half()) is None  # g++ has no half: reference
        assert _backend.kernel_device(torch.zeros(2, dtype=torch.long)) is None
    with ops.use_backend("auto"):
        assert _backend.kernel_device(x) is None  # CPU tensors take the reference
    with pytest.raises(ValueError, match="choose one of"):
        ops.set_backend("cuda")


@pytest.mark.parametrize(
    "env,want",
    [
        ({"CV_OPS_FORCE_REFERENCE": "1"}, "reference"),
        ({"CV_OPS_FORCE_REFERENCE": "1", "CV_OPS_BACKEND": "emulate"}, "reference"),
        ({"CV_OPS_BACKEND": "emulate"}, "emulate"),
        ({"CV_OPS_FORCE_REFERENCE": "0"}, "auto"),
        ({}, "auto"),
    ],
)
def test_environment_selects_backend(monkeypatch, env, want):
    for var in ("CV_OPS_FORCE_REFERENCE", "CV_OPS_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _backend._initial_backend() == want  # what src.ops reads at import time


def test_bad_environment_names_the_variable(monkeypatch):
    monkeypatch.delenv("CV_OPS_FORCE_REFERENCE", raising=False)
    monkeypatch.setenv("CV_OPS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="CV_OPS_BACKEND"):
        _backend._initial_backend()


class _IgnoresUpstream(torch.autograd.Function):
    """The seed-000 bug: a loss whose backward returns d loss / dx, dropping grad_output."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).sum()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x


def test_checker_catches_an_op_that_ignores_the_upstream_gradient():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    bad = numeric_vs_analytic(_IgnoresUpstream.apply, (x,))
    assert not bad.ok and "input 0" in bad.where
    assert upstream_scaling_error(_IgnoresUpstream.apply, (x,)) > 1e-3
    good = numeric_vs_analytic(lambda a: (a * a).sum(), (x,))
    assert good.ok and good.max_abs_err < 1e-6
    assert upstream_scaling_error(lambda a: (a * a).sum(), (x,)) < 1e-12


def test_check_cli(capsys):
    assert check_main(["wing_loss", "--backend", "emulate"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "wing_loss" in out
