"""Gradient checker for src.ops: numeric vs analytic gradients under a random upstream gradient.

Seed 000's trap: MXNet's checker multiplies the output by a random projection, so a loss op
that ignores its upstream gradient can never pass. Ours does the same on purpose: the checked
scalar is sum(v * op(inputs)) with v random, every input gradient must match central
differences of that scalar, and ``upstream_scaling_error`` confirms that scaling v scales every
input gradient. Everything runs in float64.

    python -m src.ops.check OP [--backend reference|emulate|auto] [--seed S] [--tol T]

prints the worst element per input and exits non-zero on failure. OP is one of ``OPS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import _backend
from .boxes import box_iou, generalized_box_iou, giou_loss
from .losses import sigmoid_focal_loss, smooth_l1_loss, wing_loss
from .pooling import corner_pool


@dataclass
class GradReport:
    """Worst disagreement between analytic and numeric gradients."""

    max_abs_err: float
    max_rel_err: float
    where: str  # "input <i> element <flat index>: analytic a, numeric n"
    ok: bool

    def __str__(self) -> str:
        status = "PASS" if self.ok else "FAIL"
        return (
            f"{status}: worst abs err {self.max_abs_err:.3e} (rel {self.max_rel_err:.3e}) "
            f"at {self.where}"
        )


def _upstream(y: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)


def analytic_grads(fn: Callable, inputs: Sequence[torch.Tensor], v: torch.Tensor):
    wrt = [x for x in inputs if x.requires_grad]
    y = fn(*inputs)
    grads = torch.autograd.grad(y, wrt, v, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, grads)]


def numeric_vs_analytic(
    fn: Callable,
    inputs: Sequence[torch.Tensor],
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
) -> GradReport:
    """Compare autograd's gradients of sum(v * fn(*inputs)) with central differences, v a
    seeded random upstream gradient. Inputs with requires_grad are checked (use float64)."""
    inputs = list(inputs)
    with torch.no_grad():
        v = _upstream(fn(*inputs), seed)
    analytic = analytic_grads(fn, inputs, v)
    worst_err, worst_rel, where, all_ok = -1.0, 0.0, "no differentiable input", True
    slot = 0
    for i, x in enumerate(inputs):
        if not x.requires_grad:
            continue
        ga = analytic[slot].reshape(-1)
        slot += 1
        base = x.detach().clone()
        flat = base.view(-1)
        for k in range(flat.numel()):
            old = flat[k].item()
            vals = []
            for step in (eps, -eps):
                flat[k] = old + step
                args = [base if j == i else a.detach() for j, a in enumerate(inputs)]
                with torch.no_grad():
                    vals.append((v * fn(*args)).sum().item())
            flat[k] = old
            num = (vals[0] - vals[1]) / (2 * eps)
            ana = ga[k].item()
            err = abs(ana - num)
            all_ok &= err <= atol + rtol * abs(num)
            if err > worst_err:
                worst_err, worst_rel = err, err / max(abs(num), 1e-12)
                where = f"input {i} element {k}: analytic {ana:.6g}, numeric {num:.6g}"
    return GradReport(max(worst_err, 0.0), worst_rel, where, all_ok)


def upstream_scaling_error(
    fn: Callable, inputs: Sequence[torch.Tensor], k: float = 3.0, seed: int = 0
) -> float:
    """max |grad(k * v) - k * grad(v)| over all differentiable inputs (0 for an honest op)."""
    with torch.no_grad():
        v = _upstream(fn(*inputs), seed)
    g1 = analytic_grads(fn, inputs, v)
    g2 = analytic_grads(fn, inputs, k * v)
    if not g1:
        return 0.0
    return max((b - k * a).abs().max().item() for a, b in zip(g1, g2) if a.numel())


# ------------------------------------------------------------------ ops the CLI knows about


def _boxes(gen: torch.Generator, n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 10
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 8 + 1
    return torch.cat([xy, xy + wh], dim=1)


def example(op: str, seed: int = 0) -> tuple[Callable, list[torch.Tensor]]:
    """A small float64 problem for ``op``: (function of tensors, inputs with requires_grad)."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    if op == "sigmoid_focal_loss":
        targets = torch.tensor([0, 1, 3, -1, 2, 0])
        scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
        return (
            lambda x, s: sigmoid_focal_loss(x, targets, grad_scale=s),
            [randn(6, 3).requires_grad_(), scale],
        )
    if op == "smooth_l1_loss":
        sigma = (torch.rand(1, 3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
        return smooth_l1_loss, [randn(4, 3).requires_grad_(), randn(4, 3).requires_grad_(), sigma]
    if op == "wing_loss":
        return (
            lambda x, t: wing_loss(x, t, w=2.0, eps=0.5),
            [(randn(5, 4) * 3).requires_grad_(), randn(5, 4).requires_grad_()],
        )
    if op in ("box_iou", "generalized_box_iou", "giou_loss"):
        fn = {
            "box_iou": box_iou,
            "generalized_box_iou": generalized_box_iou,
            "giou_loss": giou_loss,
        }[op]
        n2 = 5 if op == "giou_loss" else 3
        return fn, [_boxes(gen, 5).requires_grad_(), _boxes(gen, n2).requires_grad_()]
    if op.startswith("corner_pool"):
        direction = op.split(":", 1)[1] if ":" in op else "top"
        return lambda x: corner_pool(x, direction), [randn(2, 2, 4, 5).requires_grad_()]
    raise ValueError(f"src.ops.check: unknown op {op!r}; choose one of {OPS}")


OPS = (
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "wing_loss",
    "box_iou",
    "generalized_box_iou",
    "giou_loss",
    "corner_pool:top",
    "corner_pool:bottom",
    "corner_pool:left",
    "corner_pool:right",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.ops.check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("op", choices=OPS + ("all",))
    parser.add_argument("--backend", choices=_backend.BACKENDS, default="reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5, help="absolute tolerance")
    args = parser.parse_args(argv)
    failed = False
    with _backend.use_backend(args.backend):
        for op in OPS if args.op == "all" else (args.op,):
            fn, inputs = example(op, args.seed)
            report = numeric_vs_analytic(fn, inputs, atol=args.tol, seed=args.seed)
            scale_err = upstream_scaling_error(fn, inputs, seed=args.seed)
            scale_ok = scale_err <= 1e-10
            failed |= not (report.ok and scale_ok)
            print(
                f"{op:22s} [{args.backend}] {report}; upstream x3 scaling err "
                f"{scale_err:.1e} {'PASS' if scale_ok else 'FAIL'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
