"""Target assignment throughput: batched ``src.nn`` vs a per-image Python loop of the same logic.

RetinaFace-sized problem by default: a batch of 32 images, 16,800 priors (640x640, strides
8/16/32, two sizes per cell), 10 ground-truth faces with 5 landmarks per image (some images
padded with -1 rows). One step = IoU + matching (bipartite forced best prior, then IoU >= 0.35)
+ box and landmark encoding + class targets + sampling (7:1 hard negatives from per-anchor
losses, OHEM 3:1, or random 256-anchor quotas).

Columns:

* ``batched``: the whole batch at once, IoU as a ``SparseIOU`` built from the ``AnchorGrid``
  (the CPU path: only the anchors that can matter, exact);
* ``dense``: the whole batch at once with the dense ``(B, N, M)`` ``BBoxBatchIOU`` (the
  path without host synchronisation, for CUDA);
* ``loop``: a per-image Python loop over the same blocks with the dense IoU of each image,
  which is how GluonCV assigns targets (per sample, in the data transform); the speedup is
  ``loop / batched``;
* ``loop sparse``: a per-image loop of the batched path (SparseIOU per image), to separate
  what batching buys from what the sparse IoU buys.

``equal`` says whether ``batched``, ``dense`` and ``loop`` give identical tensors (for the
random quota sampler: ``batched`` vs ``dense`` with the same generator state).

    python3 benchmarks/nn.py [--batch 32] [--anchors-size 640] [--gts 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.nn import (  # noqa: E402
    AnchorGrid,
    BBoxBatchIOU,
    BipartiteMatcher,
    CompositeMatcher,
    HardNegativeSampler,
    MaximumMatcher,
    MultiClassEncoder,
    NormalizedBoxCenterEncoder,
    NormalizedLandmarkCenterEncoder,
    OHEMSampler,
    QuotaSampler,
    SparseIOU,
)

STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))


def priors(size: int) -> torch.Tensor:
    """RetinaFace priors in corner form, level -> row -> column -> size (pixels)."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        f = math.ceil(size / step)
        for i, j in itertools.product(range(f), range(f)):
            for s in sizes:
                cx, cy = (j + 0.5) * step, (i + 0.5) * step
                out.append((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2))
    return torch.tensor(out)


def make_batch(b: int, m: int, size: int, gen: torch.Generator):
    wh = torch.rand(b, m, 2, generator=gen) * 200 + 10
    xy = torch.rand(b, m, 2, generator=gen) * (size - wh)
    boxes = torch.cat((xy, xy + wh), -1)
    lm = xy[:, :, None, :] + torch.rand(b, m, 5, 2, generator=gen) * wh[:, :, None, :]
    labels = torch.zeros(b, m)
    # variable counts: image i keeps 10 - (i % 4) faces, the rest is -1 padding
    keep = torch.arange(m)[None, :] < (m - torch.arange(b) % 4)[:, None]
    boxes = torch.where(keep[..., None], boxes, torch.full_like(boxes, -1))
    lm = torch.where(keep[..., None, None], lm, torch.full_like(lm, -1)).flatten(2)
    labels = torch.where(keep, labels, torch.full_like(labels, -1))
    lm[:, 0] = -1  # one face per image without landmarks
    return boxes, lm, labels


class Assign(torch.nn.Module):
    """One assignment step; ``grid`` given: the IoU is a ``SparseIOU`` of that anchor grid."""

    def __init__(self, sampler: str, grid: AnchorGrid | None = None):
        super().__init__()
        self.grid = grid
        self.dense_iou = BBoxBatchIOU()
        # the lowest IoU threshold any block below compares with
        self.floor = 0.3 if sampler == "quota" else 0.35
        self.matcher = CompositeMatcher([BipartiteMatcher(share_max=False), MaximumMatcher(0.35)])
        self.box = NormalizedBoxCenterEncoder(stds=(0.1, 0.1, 0.2, 0.2))
        self.landmark = NormalizedLandmarkCenterEncoder(stds=(0.1, 0.1))
        self.cls = MultiClassEncoder()
        self.kind = sampler
        if sampler == "hard":
            self.sampler = HardNegativeSampler(ratio=7)
        elif sampler == "ohem":
            self.sampler = OHEMSampler(ratio=3, thresh=0.5)
        else:
            self.sampler = QuotaSampler(
                256, 0.5, 0.3, pos_ratio=0.25, generator=torch.Generator().manual_seed(0)
            )

    def iou(self, anchors, boxes):
        if self.grid is None:
            return self.dense_iou(anchors, boxes)
        return SparseIOU.from_grid(self.grid, boxes, self.floor, anchors=anchors)

    def forward(self, anchors, boxes, landmarks, labels, losses, logits):
        iou = self.iou(anchors, boxes)
        matches = self.matcher(iou)
        if self.kind == "hard":
            samples = self.sampler(matches, losses)
        elif self.kind == "ohem":
            samples = self.sampler(matches, logits, iou)
        else:
            samples = self.sampler(matches, iou)
        box_t, box_m = self.box(samples, matches, anchors, boxes)
        lm_t, lm_m = self.landmark(samples, matches, anchors, landmarks)
        cls_t = self.cls(samples, matches, labels)
        return samples, box_t, box_m, lm_t, lm_m, cls_t


def interleaved(fns, repeat: int) -> list[tuple[float, float]]:
    """(median, best) seconds of each function, timed in turn ``repeat`` times."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [(statistics.median(t), min(t)) for t in times]


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--anchors-size", type=int, default=640)
    ap.add_argument("--gts", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0 = torch default)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--breakdown", action="store_true", help="also time each batched stage")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    gen = torch.Generator().manual_seed(0)
    anchors = priors(args.anchors_size).to(dev)
    boxes, lm, labels = (
        t.to(dev) for t in make_batch(args.batch, args.gts, args.anchors_size, gen)
    )
    n = anchors.shape[0]
    losses = torch.rand(args.batch, n, generator=gen).to(dev)
    logits = torch.randn(args.batch, n, 2, generator=gen).to(dev)
    print(
        f"device={dev} threads={torch.get_num_threads()} batch={args.batch} anchors={n} "
        f"gts/image<={args.gts}"
    )
    grid = AnchorGrid.square(
        (args.anchors_size, args.anchors_size), STEPS, MIN_SIZES, normalized=False
    )
    assert torch.equal(grid.anchors(device=dev), anchors)
    print(
        "median ms (batched and loop timed in turn); speedup = loop / batched on medians "
        "and on best runs"
    )
    print(
        f"{'sampler':<8} {'batched ms':>11} {'dense ms':>9} {'loop ms':>9} {'speedup':>8} "
        f"{'(best)':>10} {'loop sparse ms':>15}  equal"
    )
    with torch.no_grad():

        def whole(mod):
            out = mod(anchors, boxes, lm, labels, losses, logits)
            sync()
            return out

        def per_image(mod):
            outs = [
                mod(
                    anchors,
                    boxes[i : i + 1],
                    lm[i : i + 1],
                    labels[i : i + 1],
                    losses[i : i + 1],
                    logits[i : i + 1],
                )
                for i in range(args.batch)
            ]
            sync()
            return [torch.cat(parts) for parts in zip(*outs)]

        for kind in ("hard", "ohem", "quota"):
            sparse_mod, dense_mod = Assign(kind, grid), Assign(kind)
            batched = functools.partial(whole, sparse_mod)
            dense = functools.partial(whole, dense_mod)
            loop = functools.partial(per_image, dense_mod)
            loop_sparse = functools.partial(per_image, sparse_mod)
            # the headline pair interleaved, so that a noisy neighbour slows both alike
            (tb, bb), (tl, bl) = interleaved([batched, loop], args.repeat)
            (td, _), (tls, _) = interleaved([dense, loop_sparse], args.repeat)
            same_b_d = all(
                torch.equal(a, b) for a, b in zip(whole(Assign(kind, grid)), whole(Assign(kind)))
            )
            if kind == "quota":  # random choice: the loop draws its keys image by image
                equal = f"{same_b_d} (batched = dense)"
            else:
                same_b_l = all(torch.equal(a, b) for a, b in zip(batched(), loop()))
                equal = str(same_b_d and same_b_l)
            print(
                f"{kind:<8} {tb * 1e3:>11.1f} {td * 1e3:>9.1f} {tl * 1e3:>9.1f} "
                f"{tl / tb:>7.1f}x {bl / bb:>9.1f}x {tls * 1e3:>15.1f}  {equal}"
            )
        if args.breakdown:
            breakdown(Assign("hard", grid), anchors, boxes, lm, labels, losses, args.repeat, sync)


def breakdown(mod, anchors, boxes, lm, labels, losses, repeat, sync):
    """Median time of each stage of the batched RetinaFace assignment."""
    iou = mod.iou(anchors, boxes)
    matches = mod.matcher(iou)
    samples = mod.sampler(matches, losses)
    stages = {
        "iou (SparseIOU)": lambda: mod.iou(anchors, boxes),
        "iou (dense)": lambda: mod.dense_iou(anchors, boxes),
        "match (bipartite+max)": lambda: mod.matcher(iou),
        "sample (7:1 hard neg)": lambda: mod.sampler(matches, losses),
        "encode boxes": lambda: mod.box(samples, matches, anchors, boxes),
        "encode landmarks": lambda: mod.landmark(samples, matches, anchors, lm),
        "encode classes": lambda: mod.cls(samples, matches, labels),
    }
    print(f"{'stage (batched, hard)':<24} {'ms':>8}")
    for name, fn in stages.items():

        def run(fn=fn):
            fn()
            sync()

        print(f"{name:<24} {timeit(run, repeat) * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
