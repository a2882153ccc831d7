"""Loss ops: sigmoid focal loss v2, smooth L1 v2 (tensor sigma) and wing loss.

Each public function picks the ops_cuda kernel (a torch.autograd.Function below) or the
pure-torch reference (``*_reference``, differentiable by autograd, the oracle in tests); see
src/ops/_backend.py. Kernel Functions honour the upstream gradient and support double backward
by differentiating the reference when the backward runs with create_graph=True.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._backend import kernel_device, reference_backward

REDUCTIONS = ("none", "mean", "sum")
NORMALIZATIONS = ("positive", "valid")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction={reduction!r}: choose one of {REDUCTIONS}")


def _launch(*args, **kwargs):
    from ops_cuda.launch import launch

    launch(*args, **kwargs)


def _upstream(grad: torch.Tensor):
    from ops_cuda.launch import upstream

    return upstream(grad)


def _ctype(t: torch.Tensor) -> str:
    from ops_cuda.registry import CTYPE

    return CTYPE[t.dtype]


# --------------------------------------------------------------------------- focal loss


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The unnormalised sum of a half/bfloat16 loss can overflow its type: keep it in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sigmoid_focal_sum_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Unnormalised focal-loss sum (0-dim; float32 for half/bfloat16 logits) in torch.
    logits (N, C); targets (N,) integer with ``ignore_index`` = skip row, 0 = background,
    t in 1..C = column t-1 positive."""
    n_cls = logits.shape[-1]
    cls = torch.arange(1, n_cls + 1, device=logits.device)
    pos = targets[:, None] == cls  # (N, C)
    valid = (targets != ignore_index)[:, None]
    # -log p = -logsigmoid(x); -log(1-p) = -logsigmoid(-x); 1-p = sigmoid(-x)
    w_pos = alpha if alpha >= 0 else 1.0
    w_neg = 1.0 - alpha if alpha >= 0 else 1.0
    loss_pos = -w_pos * torch.sigmoid(-logits).pow(gamma) * F.logsigmoid(logits)
    loss_neg = -w_neg * torch.sigmoid(logits).pow(gamma) * F.logsigmoid(-logits)
    loss = torch.where(pos, loss_pos, loss_neg)
    return torch.where(valid, loss, torch.zeros_like(loss)).sum(dtype=_sum_dtype(logits.dtype))


class SigmoidFocalSum(torch.autograd.Function):
    """Kernel path of the unnormalised focal-loss sum: (logits, targets) -> 0-dim tensor
    (float32 for half/bfloat16 logits; accumulated in double by the kernel)."""

    @staticmethod
    def forward(ctx, logits, targets, alpha, gamma, ignore_index):
        x = logits.contiguous()
        targets = targets.to(torch.int64).contiguous()
        n, c = x.shape
        out = torch.zeros(1, dtype=torch.float64, device=x.device)
        _launch(
            "focal_loss.cu",
            "sigmoid_focal_fwd",
            _ctype(x),
            x.device,
            n * c,
            (
                x,
                targets,
                np.int64(n),
                np.int64(c),
                np.float64(alpha),
                np.float64(gamma),
                np.int64(ignore_index),
                out,
            ),
        )
        ctx.save_for_backward(logits, targets)  # the input itself: double backward needs it
        ctx.params = (alpha, gamma, ignore_index)
        return out.to(_sum_dtype(logits.dtype)).reshape(())

    @staticmethod
    def backward(ctx, grad):
        logits, targets = ctx.saved_tensors
        alpha, gamma, ignore_index = ctx.params
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference
            (g,) = reference_backward(
                lambda x: sigmoid_focal_sum_reference(x, targets, alpha, gamma, ignore_index),
                (logits,),
                (True,),
                grad,
            )
            return g, None, None, None, None
        x = logits.contiguous()
        n, c = x.shape
        coef = grad.detach().to(torch.float64).reshape(1).contiguous()
        grad_logits = torch.empty_like(x)
        _launch(
            "focal_loss.cu",
            "sigmoid_focal_bwd",
            _ctype(x),
            x.device,
            n * c,
            (
                x,
                targets,
                np.int64(n),
                np.int64(c),
                np.float64(alpha),
                np.float64(gamma),
                np.int64(ignore_index),
                coef,
                grad_logits,
            ),
        )
        return grad_logits, None, None, None, None


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    normalization: str = "positive",
    grad_scale: torch.Tensor | float | None = None,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Sigmoid focal loss v2 (Lin et al. 2017), a 0-dim tensor.

    logits: (N, C) float. targets: (N,) integer: ``ignore_index`` (-1) skips the row,
    0 is background (all C columns negative), t in 1..C makes column t-1 positive.
    alpha weights positives (1 - alpha negatives); alpha < 0 disables the weighting.
    normalization: "positive" divides by the number of positive rows, "valid" by the number
    of non-ignored rows (anchors); the divisor is clamped to at least 1.
    grad_scale: optional scalar tensor (or float) multiplying the result; it is an ordinary
    autograd input, so gradients flow to it when it requires grad and every gradient is
    multiplied by the upstream gradient.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"sigmoid_focal_loss: logits must be (N, C) and targets (N,); got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        raise TypeError("sigmoid_focal_loss: targets must be integer class ids (0 = background)")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}: choose one of {NORMALIZATIONS}")
    valid = targets != ignore_index
    if normalization == "positive":
        valid = valid & (targets > 0)
    norm = valid.sum().clamp(min=1).to(_sum_dtype(logits.dtype))
    if kernel_device(logits, targets) is not None:
        total = SigmoidFocalSum.apply(
            logits, targets, float(alpha), float(gamma), int(ignore_index)
        )
    else:
        total = sigmoid_focal_sum_reference(logits, targets, alpha, gamma, ignore_index)
    loss = (total / norm).to(logits.dtype)
    if grad_scale is not None:
        scale = torch.as_tensor(grad_scale, dtype=logits.dtype, device=logits.device)
        if scale.numel() != 1:
            raise ValueError(
                f"sigmoid_focal_loss: grad_scale must hold one value, got shape "
                f"{tuple(scale.shape)}"
            )
        loss = loss * scale.reshape(())
    return loss


# --------------------------------------------------------------------------- smooth L1


def smooth_l1_reference(
    input: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Elementwise smooth L1 v2: with s = sigma^2, 0.5*s*d^2 where |d| < 1/s, else |d| - 0.5/s."""
    d = input - target
    s = sigma * sigma
    quad = d.abs() < 1.0 / s
    return torch.where(quad, 0.5 * s * d * d, d.abs() - 0.5 / s)


class SmoothL1(torch.autograd.Function):
    """Kernel path of elementwise smooth L1 v2; input/target same shape, sigma broadcastable."""

    @staticmethod
    def forward(ctx, input, target, sigma):
        x = input.contiguous()
        t = target.contiguous()
        s, stride = _sigma_operand(sigma, x)
        out = torch.empty_like(x)
        _launch(
            "elementwise_losses.cu",
            "smooth_l1_fwd",
            _ctype(x),
            x.device,
            x.numel(),
            (x, t, s, np.int64(stride), np.int64(x.numel()), out),
        )
        ctx.save_for_backward(input, target, sigma)
        return out

    @staticmethod
    def backward(ctx, grad):
        input, target, sigma = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            return tuple(
                reference_backward(smooth_l1_reference, (input, target, sigma), needs[:3], grad)
            )
        x, t = input.contiguous(), target.contiguous()
        s, stride = _sigma_operand(sigma, x)
        g, g_stride = _upstream(grad)
        grad_x = torch.empty_like(x)
        grad_s = torch.empty_like(x) if needs[2] else None
        _launch(
            "elementwise_losses.cu",
            "smooth_l1_bwd",
            _ctype(x),
            x.device,
            x.numel(),
            (x, t, s, np.int64(stride), np.int64(x.numel()), g, g_stride, grad_x, grad_s),
        )
        if grad_s is not None:
            grad_s = grad_s.sum_to_size(sigma.shape)
        return (grad_x if needs[0] else None, -grad_x if needs[1] else None, grad_s)


def _sigma_operand(sigma: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    if sigma.numel() == 1:
        return sigma.reshape(1).contiguous(), 0
    return sigma.expand_as(x).contiguous(), 1


def smooth_l1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    sigma: torch.Tensor | float = 1.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Smooth L1 v2 with a tensor sigma (Fast R-CNN's sigma form).

    input, target: same (or broadcastable) shapes. sigma: float or tensor broadcastable to
    the input shape, > 0; gradients flow to input, target and a sigma that requires grad.
    Per element, with d = input - target and s = sigma^2: 0.5*s*d^2 if |d| < 1/s else
    |d| - 0.5/s. reduction: "none" | "mean" | "sum".
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {REDUCTIONS}")
    dtype = torch.promote_types(input.dtype, target.dtype)
    input, target = torch.broadcast_tensors(input.to(dtype), target.to(dtype))
    sigma = torch.as_tensor(sigma, dtype=input.dtype, device=input.device)
    if torch.broadcast_shapes(sigma.shape, input.shape) != input.shape:
        raise ValueError(
            f"smooth_l1_loss: sigma of shape {tuple(sigma.shape)} must broadcast "
            f"to the input shape {tuple(input.shape)}"
        )
    if kernel_device(input, target, sigma) is not None and input.numel() > 0:
        loss = SmoothL1.apply(input, target, sigma)
    else:
        loss = smooth_l1_reference(input, target, sigma)
    return _reduce(loss, reduction)


# --------------------------------------------------------------------------- wing loss


def wing_reference(
    input: torch.Tensor, target: torch.Tensor, w: float = 10.0, eps: float = 2.0
) -> torch.Tensor:
    """Elementwise wing loss: w*ln(1 + |d|/eps) if |d| < w else |d| - C, C = w - w*ln(1+w/eps)."""
    d = (input - target).abs()
    c = w - w * np.log1p(w / eps)
    return torch.where(d < w, w * torch.log1p(d / eps), d - c)


class Wing(torch.autograd.Function):
    """Kernel path of elementwise wing loss; input and target of the same shape."""

    @staticmethod
    def forward(ctx, input, target, w, eps):
        x, t = input.contiguous(), target.contiguous()
        out = torch.empty_like(x)
        _launch(
            "elementwise_losses.cu",
            "wing_fwd",
            _ctype(x),
            x.device,
            x.numel(),
            (x, t, np.int64(x.numel()), np.float64(w), np.float64(eps), out),
        )
        ctx.save_for_backward(input, target)
        ctx.params = (w, eps)
        return out

    @staticmethod
    def backward(ctx, grad):
        input, target = ctx.saved_tensors
        w, eps = ctx.params
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            gi, gt = reference_backward(
                lambda a, b: wing_reference(a, b, w, eps), (input, target), needs[:2], grad
            )
            return gi, gt, None, None
        x, t = input.contiguous(), target.contiguous()
        g, g_stride = _upstream(grad)
        grad_x = torch.empty_like(x)
        _launch(
            "elementwise_losses.cu",
            "wing_bwd",
            _ctype(x),
            x.device,
            x.numel(),
            (x, t, np.int64(x.numel()), np.float64(w), np.float64(eps), g, g_stride, grad_x),
        )
        return (grad_x if needs[0] else None, -grad_x if needs[1] else None, None, None)


def wing_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    w: float = 10.0,
    eps: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Wing loss (Feng et al., CVPR 2018) for landmark regression.

    Per element, with d = |input - target|: w*ln(1 + d/eps) if d < w, else d - C where
    C = w - w*ln(1 + w/eps) (continuous at d = w). Defaults w=10, eps=2.
    reduction: "none" | "mean" | "sum".
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {REDUCTIONS}")
    if w <= 0 or eps <= 0:
        raise ValueError(f"wing_loss: w and eps must be > 0, got w={w}, eps={eps}")
    dtype = torch.promote_types(input.dtype, target.dtype)
    input, target = torch.broadcast_tensors(input.to(dtype), target.to(dtype))
    if kernel_device(input, target) is not None and input.numel() > 0:
        loss = Wing.apply(input, target, float(w), float(eps))
    else:
        loss = wing_reference(input, target, w, eps)
    return _reduce(loss, reduction)
