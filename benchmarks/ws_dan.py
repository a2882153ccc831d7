"""WS-DAN benchmark: attention cropping and dropping of a training batch, ours (batched, one
resampling call, no host sync) vs the reference's per-sample formulation (the oracles of the
tests, tests/ws_dan/oracles.py: ``crop_loop`` / ``drop_loop``, GuYuc/WS-DAN.PyTorch's
``batch_augment`` with the end-inclusive box).

    python benchmarks/ws_dan.py [--batch 12] [--size 448] [--maps 32] [--feature 26]
                                [--repeat 10] [--threads 1] [--device cpu|cuda] [--compile]
                                [--channels-last]

Rows: crop alone and drop alone on one given map per sample (same maps, same thresholds, same
padding for both formulations), then crop + drop as one training step does it under
``torch.no_grad`` (pick two of the M maps per sample by sqrt-mass, crop with one, drop with the
other; the reference picks per sample in a loop), ours both with the ops_cpu kernels (CPU) and
through the torch path (``set_backend("reference")``: one ``grid_sample`` and the map products,
what CUDA runs), and with ``--compile`` the same step through
``torch.compile(fullgraph=True)`` (inductor; compilation and warm-up are not timed; on one CPU
thread it measured several times slower than eager, hence off by default; inductor orders the
random draws its own way, so that row's values are not compared). The
defaults are the paper recipe: batch 12, 448 px, M = 32 maps of 26x26 (what Inception-v3 cut
at Mixed_6e gives at 448 px). Attention maps are a few smooth blobs each, like trained ones.

``--channels-last`` gives both formulations NHWC images, as ``experiment=ws_dan_cub``'s
channels_last training does (the reference's per-sample ``interpolate`` has a faster NHWC
kernel; ``grid_sample`` writes NCHW crops either way, which the network's first convolution
then converts).

Prints a table of the median and best wall times (ms) with the speed-up against the reference
row of each group, and checks that the values agree with the reference (largest absolute
difference; crop boxes must be identical). Timings are of this machine as it is (a shared
machine gives noisy numbers: compare rows of one run; rows are measured round-robin). Default
one intra-op thread: on a busy 2-core machine two OpenMP threads spin against other processes
and run several times slower than one (``--threads 0`` keeps torch's default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.models.ws_dan.augment import (  # noqa: E402
    EPSILON,
    attention_crop,
    attention_drop,
    crop_boxes,
    sample_attention_maps,
)
from src.ops import use_backend  # noqa: E402
from tests.ws_dan.oracles import crop_loop, drop_loop  # noqa: E402

CROP_THETA, CROP_PADDING, DROP_THETA = (0.4, 0.6), 0.1, (0.2, 0.5)


def make_maps(batch: int, num: int, side: int, seed: int) -> torch.Tensor:
    """(B, M, side, side) non-negative maps: 1-3 Gaussian blobs (sigma 1-5 cells) each plus
    a little ReLU'd noise."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(side, dtype=torch.float32)
    maps = torch.zeros(batch, num, side, side)
    for k in range(3):
        cy, cx = (torch.rand(2, batch, num, 1, 1, generator=g) * side).unbind(0)
        sigma = 1.0 + 4.0 * torch.rand(batch, num, 1, 1, generator=g)
        amp = torch.rand(batch, num, 1, 1, generator=g) * (1.0 if k == 0 else 0.5)
        d2 = (ys[:, None] - cy) ** 2 + (ys[None, :] - cx) ** 2
        maps += amp * torch.exp(-d2 / (2 * sigma**2))
    return maps + 0.05 * torch.randn(batch, num, side, side, generator=g).relu()


def reference_pick(attention_maps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The reference's per-sample choice of maps (sqrt-mass weights, ``np.random.choice``), by
    inverse CDF on the given uniform draws ``u`` (B, 2) so that it picks what ours picks."""
    picked = []
    for i in range(attention_maps.shape[0]):
        a = attention_maps[i]
        weights = torch.sqrt(a.sum(dim=(1, 2)) + EPSILON)
        cdf = torch.cumsum(weights / weights.sum(), dim=0)
        k = torch.searchsorted(cdf, u[i], right=True).clamp(max=a.shape[0] - 1)
        picked.append(a[k])
    return torch.stack(picked)


def thetas(theta: tuple[float, float], draws: torch.Tensor) -> torch.Tensor:
    lo, hi = theta
    return lo + (hi - lo) * draws


def timeit_all(fns: list, repeat: int, sync) -> list[tuple[float, float, object]]:
    """Median and best ms of each function, measured round-robin (a shared machine's load
    then weighs on every row alike)."""
    outs = [fn() for fn in fns]  # warm-up
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            sync()
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t) * 1e3, min(t) * 1e3, o) for t, o in zip(times, outs)]


def max_diff(a, b) -> float:
    if isinstance(a, tuple):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return float((a.double() - b.double()).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--maps", type=int, default=32)
    ap.add_argument("--feature", type=int, default=26, help="attention-map side")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--compile", action="store_true", help="add the torch.compile'd row")
    ap.add_argument("--channels-last", action="store_true", help="NHWC images (the recipe's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    b, size = args.batch, args.size
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}: batch {b}, "
        f"{size}x{size} {'NHWC' if args.channels_last else 'NCHW'} images, {args.maps} "
        f"attention maps of {args.feature}x{args.feature}"
    )
    images = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    all_maps = make_maps(b, args.maps, args.feature, seed=1).to(dev)
    one_map = all_maps[:, :1].contiguous()
    seed = 2

    def gen() -> torch.Generator:
        return torch.Generator(dev).manual_seed(seed)

    # The draws ours makes from gen(): (B, 2) map picks, then (B,) crop and (B,) drop thetas.
    g = gen()
    u = torch.rand(b, 2, device=dev, generator=g)
    t_crop_step = thetas(CROP_THETA, torch.rand(b, device=dev, generator=g))
    t_drop_step = thetas(DROP_THETA, torch.rand(b, device=dev, generator=g))
    t_crop = thetas(CROP_THETA, torch.rand(b, device=dev, generator=gen()))
    t_drop = thetas(DROP_THETA, torch.rand(b, device=dev, generator=gen()))

    def ref_step():
        with torch.no_grad():
            maps = reference_pick(all_maps, u)
            crops, _ = crop_loop(images, maps[:, :1], t_crop_step, CROP_PADDING)
            return crops, drop_loop(images, maps[:, 1:], t_drop_step)

    def our_step(images, attention_maps, generator=None):
        with torch.no_grad():  # as WSDANTask.augment
            maps, _ = sample_attention_maps(attention_maps, num=2, generator=generator)
            crops = attention_crop(images, maps[:, :1], CROP_THETA, CROP_PADDING, generator)
            return crops, attention_drop(images, maps[:, 1:], DROP_THETA, generator)

    def torch_path_step():
        with use_backend("reference"):  # what CUDA runs, and CPU without a C++ compiler
            return our_step(images, all_maps, gen())

    groups = [
        (
            "crop (one map per sample)",
            [
                (
                    "reference crop_loop",
                    lambda: crop_loop(images, one_map, t_crop, CROP_PADDING)[0],
                ),
                (
                    "ours attention_crop",
                    lambda: attention_crop(images, one_map, CROP_THETA, CROP_PADDING, gen()),
                ),
            ],
        ),
        (
            "drop (one map per sample)",
            [
                ("reference drop_loop", lambda: drop_loop(images, one_map, t_drop)),
                ("ours attention_drop", lambda: attention_drop(images, one_map, DROP_THETA, gen())),
            ],
        ),
        (
            f"training step's crop + drop (pick 2 of {args.maps} maps), no_grad",
            [
                ("reference pick + crop_loop + drop_loop", ref_step),
                ("ours sample + crop + drop", lambda: our_step(images, all_maps, gen())),
                ("ours, torch path (grid_sample, products)", torch_path_step),
            ],
        ),
    ]
    if args.compile:
        # Inductor's own RNG differs from eager's; fall back to eager's so values compare.
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
        compiled = torch.compile(our_step, fullgraph=True)

        def compiled_step():
            torch.manual_seed(seed)  # the global RNG: a Generator argument does not trace
            return compiled(images, all_maps)

        t0 = time.perf_counter()
        compiled_step()
        sync()
        compile_s = time.perf_counter() - t0
        groups[-1][1].append(
            (f"ours, torch.compile'd ({compile_s:.0f} s compile untimed)", compiled_step)
        )

    rows = timeit_all([fn for _, cases in groups for _, fn in cases], args.repeat, sync)
    print(f"\n{'':44s} {'median ms':>10s} {'best ms':>9s} {'speed-up':>9s}  max |diff| vs ref")
    k = 0
    for title, cases in groups:
        print(title)
        ref_med, ref_best, ref_out = rows[k]
        for name, _ in cases:
            med, best, out = rows[k]
            k += 1
            diff = "" if out is ref_out else f"{max_diff(out, ref_out):.2e}"
            if "compile" in name:
                diff = "(own RNG order: not compared)"
            print(f"  {name:42s} {med:10.1f} {best:9.1f} {ref_med / med:8.2f}x  {diff}")
    want = crop_loop(images, one_map, t_crop, CROP_PADDING)[1]
    got = crop_boxes(one_map, (size, size), CROP_THETA, CROP_PADDING, gen()).cpu()
    area = ((want[:, 2] - want[:, 0]) * (want[:, 3] - want[:, 1])).float().mean() / size**2
    print(
        f"crop boxes identical to the reference's: {torch.equal(got, want)} "
        f"(mean box {100 * float(area):.0f}% of the image)"
    )


if __name__ == "__main__":
    main()
