"""Benchmark src.ops: per op and size, the torch reference, the naive composite a user would
otherwise write, and the ops_cuda kernel when a GPU (and CuPy) is present.

    python benchmarks/ops.py [--device cpu|cuda] [--repeat 5] [--quick] [--threads N]

Times are the median wall time of one forward+backward (forward only for box_iou and NMS) in
milliseconds, float32, after a warm-up. Peak memory is torch.cuda.max_memory_allocated above
the inputs (GPU only; torch exposes no CPU allocator statistics, so CPU rows print "-").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.ops import (  # noqa: E402
    box_iou,
    corner_pool,
    giou_loss,
    nms,
    sigmoid_focal_loss,
    smooth_l1_loss,
    use_backend,
    wing_loss,
)
from src.ops.boxes import box_iou_reference  # noqa: E402

# ---------------------------------------------------------------- naive composites


def naive_focal(x, targets):
    """torchvision's focal loss after one-hot encoding our integer targets."""
    valid = targets >= 0
    onehot = F.one_hot(targets.clamp(min=0), x.shape[1] + 1)[:, 1:].to(x.dtype)
    total = torchvision.ops.sigmoid_focal_loss(x[valid], onehot[valid], reduction="sum")
    return total / (targets > 0).sum().clamp(min=1)


def naive_smooth_l1(x, t, sigma):
    """Mask arithmetic, as MXNet-era code writes it."""
    d = x - t
    s = sigma * sigma
    mask = (d.abs() < 1 / s).to(d.dtype)
    return mask * 0.5 * s * d * d + (1 - mask) * (d.abs() - 0.5 / s)


def naive_wing(x, t, w=10.0, eps=2.0):
    d = (x - t).abs()
    mask = (d < w).to(d.dtype)
    c = w - w * torch.log1p(torch.tensor(w / eps))
    return mask * w * torch.log1p(d / eps) + (1 - mask) * (d - c)


def naive_nms(boxes, scores, thr):
    """Python loop over kept boxes (one IoU row per iteration)."""
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        if rest.numel() == 0:
            break
        iou = box_iou_reference(boxes[i][None], boxes[rest])[0]
        order = rest[iou <= thr]
    return torch.stack(keep)


def naive_top_pool(x):
    """Row-by-row running max with torch.maximum (a Python loop over H)."""
    rows = [x[:, :, -1]]
    for h in range(x.shape[2] - 2, -1, -1):
        rows.append(torch.maximum(x[:, :, h], rows[-1]))
    return torch.stack(rows[::-1], dim=2)


# ---------------------------------------------------------------- harness


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, inputs, device, repeat, backward):
    """(median ms, peak MB or None) of fn(*inputs) [+ backward of a random upstream grad]."""

    def once():
        for x in inputs:
            if isinstance(x, torch.Tensor) and x.requires_grad:
                x.grad = None
        y = fn(*inputs)
        if backward:
            y.backward(torch.ones_like(y))
        return y

    once()  # warm-up (kernel compilation, caches)
    _sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        once()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return statistics.median(times), peak


def cases(device, quick):
    gen = torch.Generator().manual_seed(0)
    f32 = dict(dtype=torch.float32)

    def boxes(n):
        xy = torch.rand(n, 2, generator=gen) * 500
        wh = torch.rand(n, 2, generator=gen) * 100 + 5
        return torch.cat([xy, xy + wh], 1).to(device)

    def leaf(t):
        return t.to(device).requires_grad_()

    sizes = {
        "focal": [(2000, 80)] if quick else [(2000, 80), (20000, 80)],
        "smooth_l1": [20000] if quick else [20000, 500000],
        "wing": [(256, 136)] if quick else [(256, 136), (4096, 136)],
        "giou_loss": [2000] if quick else [2000, 100000],
        "box_iou": [(500, 500)] if quick else [(500, 500), (2000, 5000)],
        "nms": [500] if quick else [500, 3000],
        "corner_pool": [(2, 32, 64, 64)] if quick else [(2, 32, 64, 64), (4, 128, 128, 128)],
    }
    for n, c in sizes["focal"]:
        x = leaf(torch.randn(n, c, generator=gen, **f32) * 2)
        t = torch.randint(-1, c + 1, (n,), generator=gen).to(device)
        yield (
            "sigmoid_focal_loss",
            f"{n}x{c}",
            True,
            lambda x, t: sigmoid_focal_loss(x, t),
            naive_focal,
            (x, t),
            "torchvision",
        )
    for n in sizes["smooth_l1"]:
        x = leaf(torch.randn(n, 4, generator=gen, **f32))
        t = torch.randn(n, 4, generator=gen, **f32).to(device)
        s = torch.full((4,), 3.0, device=device)
        yield (
            "smooth_l1_loss",
            f"{n}x4",
            True,
            smooth_l1_loss,
            naive_smooth_l1,
            (x, t, s),
            "mask arithmetic",
        )
    for n, c in sizes["wing"]:
        x = leaf(torch.randn(n, c, generator=gen, **f32) * 10)
        t = torch.randn(n, c, generator=gen, **f32).to(device)
        yield ("wing_loss", f"{n}x{c}", True, wing_loss, naive_wing, (x, t), "mask arithmetic")
    for n in sizes["giou_loss"]:
        a, b = leaf(boxes(n)), boxes(n)
        yield (
            "giou_loss",
            f"{n}",
            True,
            giou_loss,
            torchvision.ops.generalized_box_iou_loss,
            (a, b),
            "torchvision",
        )
    for n, m in sizes["box_iou"]:
        a, b = boxes(n), boxes(m)
        yield (
            "box_iou",
            f"{n}x{m}",
            False,
            box_iou,
            torchvision.ops.box_iou,
            (a, b),
            "torchvision",
        )
    for n in sizes["nms"]:
        b = boxes(n)
        s = torch.rand(n, generator=gen).to(device)
        yield (
            "nms",
            f"{n}",
            False,
            lambda b, s: nms(b, s, 0.5),
            lambda b, s: naive_nms(b, s, 0.5),
            (b, s),
            "python loop",
        )
    for shape in sizes["corner_pool"]:
        x = leaf(torch.randn(*shape, generator=gen, **f32))
        yield (
            "corner_pool top",
            "x".join(map(str, shape)),
            True,
            lambda x: corner_pool(x, "top"),
            naive_top_pool,
            (x,),
            "python loop over H",
        )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 gives steadier numbers on a shared machine)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kernel = device.type == "cuda"
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"median of {args.repeat}, float32"
    )
    head = (
        f"{'op':20s} {'size':>16s} {'pass':>7s} {'reference ms':>13s} {'naive ms':>10s} "
        f"{'kernel ms':>10s} {'ref MB':>7s} {'naive MB':>8s} {'kern MB':>8s}  naive = "
    )
    print(head)
    print("-" * len(head))
    fmt_ms = lambda v: "-" if v is None else f"{v:.2f}"
    fmt_mb = lambda v: "-" if v is None else f"{v:.1f}"
    for name, size, backward, ours, naive, inputs, what in cases(device, args.quick):
        with use_backend("reference"):
            ref_ms, ref_mb = measure(ours, inputs, device, args.repeat, backward)
        naive_ms, naive_mb = measure(naive, inputs, device, args.repeat, backward)
        ker_ms = ker_mb = None
        if kernel:
            with use_backend("auto"):
                ker_ms, ker_mb = measure(ours, inputs, device, args.repeat, backward)
        print(
            f"{name:20s} {size:>16s} {'fwd+bwd' if backward else 'fwd':>7s} "
            f"{fmt_ms(ref_ms):>13s} {fmt_ms(naive_ms):>10s} {fmt_ms(ker_ms):>10s} "
            f"{fmt_mb(ref_mb):>7s} {fmt_mb(naive_mb):>8s} {fmt_mb(ker_mb):>8s}  {what}"
        )


if __name__ == "__main__":
    main()
