"""CenterNet: decoding + triplet filter + soft-NMS, targets + loss forward + backward, and a
training step, each against the reference formulation.

    python benchmarks/centernet.py --batch 4 --map 128 --classes 80 --threads 1 --repeats 5

* post-processing: ``src.models.centernet.decode`` + ``postprocess`` (batched, one pass for the
  batch) against the per-image numpy loop port of the reference's ``kp_utils._decode`` +
  ``test/coco.py`` + ``soft_nms`` (tests/centernet/test_decode.py ``port_image``), same maps,
  measured round-robin (median and best), the detections checked equal first; two rows: the
  ``--batch`` / ``--map`` random maps (few same-class pairs, so few boxes), and detector-like
  scene maps at the model's setting (511 px input, 128 x 128 maps, top-70, flip test, ~1000-2000
  boxes an image into soft-NMS);
* targets + loss: ``src.losses.centernet`` (targets drawn batched) against the reference's
  per-image target loop and its ``AELoss`` (tests/centernet/test_loss.py ports), forward +
  backward on the same maps, with the loss values printed so a reader sees they agree;
* training: images/s of one optimizer step (forward, loss, backward, Adam) of the GhostNet
  CenterNet at ``--train-size`` (batch ``--train-batch``); the reference's Hourglass-52 step is
  printed beside it at the same size for scale (not a like-for-like comparison).

Prints the post-processing table (median / best ms), then one table (median ms). Only the
ratios of one run are meaningful.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.losses.centernet import CenterNetLoss  # noqa: E402
from src.models.centernet import CenterNet  # noqa: E402
from src.models.centernet.decode import DecodeConfig, decode, postprocess  # noqa: E402
from tests.centernet.test_decode import port_image  # noqa: E402
from tests.centernet.test_loss import _port_total, port_targets  # noqa: E402

KEYS = {
    "tl_heat": None,
    "br_heat": None,
    "ct_heat": None,
    "tl_tag": 1,
    "br_tag": 1,
    "tl_regr": 2,
    "br_regr": 2,
    "ct_regr": 2,
}


def maps(batch, classes, size, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, d in KEYS.items():
        d = classes if d is None else d
        v = torch.randn(batch, d, size, size, generator=g, dtype=torch.float64)
        if k.endswith("heat"):
            v = v * 2 - 2
        elif k.endswith("regr"):
            v = v.sigmoid()
        else:
            v = v * 0.3
        out[k] = v.requires_grad_(grad)
    return out


def boxes_for(batch, n, size, classes, seed=0):
    g = np.random.default_rng(seed)
    wh = g.uniform(8, size / 2, (batch, n, 2))
    xy = g.uniform(0, 1, (batch, n, 2)) * (size - wh)
    return np.concatenate([xy, xy + wh], -1), g.integers(0, classes, (batch, n))


def timed(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def scene_maps(batch, classes, size, objects=16, active=3, seed=0):
    """Maps shaped like a detector's: background logits ~ -5, a Gaussian bump per object's
    corner / center on its class channel (``active`` classes an image), tags within ~0.1, so
    most of the 1000 pairs pass and ~1000-2000 boxes an image reach soft-NMS with the flip."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)  # noqa: E731
    u = lambda *sh: torch.rand(*sh, generator=g, dtype=torch.float64)  # noqa: E731
    out = {k: r(batch, classes, size, size) * 0.7 - 5 for k in ("tl_heat", "br_heat", "ct_heat")}
    out.update({k: r(batch, 1, size, size) * 0.12 for k in ("tl_tag", "br_tag")})
    out.update({k: u(batch, 2, size, size) for k in ("tl_regr", "br_regr", "ct_regr")})
    ar = torch.arange(size, dtype=torch.float64)
    yy, xx = torch.meshgrid(ar, ar, indexing="ij")
    for i in range(batch):
        cls = torch.randint(0, classes, (active,), generator=g)
        for _ in range(objects):
            c = int(cls[torch.randint(0, active, (1,), generator=g)])
            wh = u(2) * size * 0.5 + 6
            x1, y1 = (u(2) * (size - wh)).tolist()
            x2, y2 = x1 + float(wh[0]), y1 + float(wh[1])
            sig = max(1.0, float(wh.min()) / 12)
            for k, (px, py) in (
                ("tl_heat", (x1, y1)),
                ("br_heat", (x2, y2)),
                ("ct_heat", ((x1 + x2) / 2, (y1 + y2) / 2)),
            ):
                out[k][i, c] += 7 * torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sig * sig))
    return out


def round_robin(fns, repeats):
    """Alternating calls (one warm-up each); (median, best) ms per function."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, times):
            t0 = time.perf_counter()
            f()
            t.append((time.perf_counter() - t0) * 1e3)
    return [(statistics.median(t), min(t)) for t in times]


def bench_post(args, m, b, s, in_size, flip):
    """Ours vs the port on the same maps: (ref median, ref best, ours median, ours best,
    boxes reaching soft-NMS per image, detections compared)."""
    orig = torch.tensor([list(in_size)] * b)
    cfg = DecodeConfig(flip=flip)
    cnt = {}

    def ours():
        with torch.no_grad():
            d = decode(m, cfg)
            return postprocess(d, in_size, orig, 1.0, (0, 0), cfg, flip=flip, map_size=(s, s))

    per = []
    for i in range(b):
        p = [{k: v[i].detach().numpy() for k, v in m.items()}]
        if flip:
            p.append({k: v[b + i].detach().numpy() for k, v in m.items()})
        per.append(p)

    def ref():
        return [port_image(p, flip, in_size, (s, s), list(in_size), 1.0, [0, 0]) for p in per]

    dm = importlib.import_module("src.models.centernet.decode")  # the package exports decode()

    tf = dm.triplet_filter

    def counting(*a, **k):  # boxes reaching soft-NMS, for the table
        v = tf(*a, **k)
        cnt["n"] = (v > -1).sum(1).tolist()
        return v

    dm.triplet_filter = counting
    got = ours()
    dm.triplet_filter = tf
    want = ref()
    dets = 0
    for i in range(b):
        n = int((got["labels"][i] >= 0).sum())
        assert n == len(want[i]), (n, len(want[i]))
        np.testing.assert_array_equal(got["labels"][i, :n].numpy(), want[i][:, 5])
        np.testing.assert_allclose(got["scores"][i, :n].numpy(), want[i][:, 4], rtol=1e-9)
        np.testing.assert_allclose(got["boxes"][i, :n].numpy(), want[i][:, :4], atol=1e-9)
        dets += n
    (rm, rb), (om, ob) = round_robin([ref, ours], args.repeats)
    return rm, rb, om, ob, cnt["n"], dets


def post_rows(args):
    b, s = args.batch, args.map
    rows = []
    m = maps(2 * b if args.flip else b, args.classes, s)
    what = f"random maps, batch {b}, {s}^2 maps, {args.classes} cl" + (
        " (flip)" if args.flip else ""
    )
    rows.append((what, *bench_post(args, m, b, s, (4 * s, 4 * s), args.flip)))
    rb, rs = args.real_batch, 128
    m = scene_maps(2 * rb, args.classes, rs)
    what = f"scene maps, batch {rb}, 511 px input ({rs}^2 maps), {args.classes} cl, flip"
    rows.append((what, *bench_post(args, m, rb, rs, (511, 511), True)))
    return rows


def bench_loss(args):
    b, s = args.batch, args.map
    boxes, labels = boxes_for(b, args.objects, 4 * s, args.classes)
    in_size = (4 * s, 4 * s)
    loss = CenterNetLoss()
    bt, lt = torch.tensor(boxes), torch.tensor(labels)

    def ours():
        outs = [maps(b, args.classes, s, grad=True)]
        v = loss(outs, bt, lt, in_size)["loss"]
        v.backward()
        return float(v.detach())

    def ref():
        outs = [maps(b, args.classes, s, grad=True)]
        heats, regrs, inds, mask = port_targets(boxes, labels, args.classes, in_size, (s, s))
        t = {f"{n}_heat": torch.from_numpy(heats[n]) for n in heats}
        t.update({f"{n}_regr": torch.from_numpy(regrs[n]) for n in regrs})
        t.update({f"{n}_inds": torch.from_numpy(inds[n]) for n in inds})
        v = _port_total(outs, t, torch.from_numpy(mask))
        v.backward()
        return float(v.detach())

    print(f"loss values: ours {ours():.6f}  reference formulation {ref():.6f}")
    return timed(ref, args.repeats), timed(ours, args.repeats)


def bench_train(args, backbone, **kw):
    torch.manual_seed(0)
    net = CenterNet(args.train_classes, backbone, **kw)
    opt = torch.optim.Adam(net.parameters(), 2.5e-4)
    loss = CenterNetLoss()
    b, s = args.train_batch, args.train_size
    x = torch.randn(b, 3, s, s)
    boxes, labels = boxes_for(b, 5, s, args.train_classes)
    bt, lt = torch.tensor(boxes), torch.tensor(labels)

    def step():
        opt.zero_grad(set_to_none=True)
        v = loss(net(x), bt, lt, (s, s))["loss"]
        v.backward()
        opt.step()

    ms = timed(step, max(1, args.repeats // 2))
    return b / ms * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--map", type=int, default=128, help="output map size (511 input: 128)")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--objects", type=int, default=8, help="objects per image for the loss")
    ap.add_argument("--flip", action="store_true", help="post-process with the flip test")
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--train-classes", type=int, default=80)
    ap.add_argument("--no-hourglass", action="store_true", help="skip the Hourglass-52 step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--real-batch", type=int, default=4, help="batch of the 511 px scene row")
    ap.add_argument("--post-only", action="store_true", help="only the post-processing rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    post = post_rows(args)
    print(
        f"post-processing (decode + triplet filter + soft-NMS + top 100), round-robin, "
        f"{args.repeats} repeats, ms median / best"
    )
    print(
        "| maps | boxes into soft-NMS / image | reference port | ours | ratio (median) "
        "| detections equal |\n|---|---|---|---|---|---|"
    )
    for what, rm, rb, om, ob, n, dets in post:
        print(
            f"| {what} | {min(n)}-{max(n)} | {rm:.1f} / {rb:.1f} | {om:.1f} / {ob:.1f} "
            f"| {rm / om:.1f}x | yes ({dets} boxes) |"
        )
    if args.post_only:
        return
    rows = []
    r, o = bench_loss(args)
    what = f"targets + loss fwd + bwd, batch {args.batch}, {args.objects} objects"
    rows.append((what, f"{r:.1f} ms", f"{o:.1f} ms", r / o))
    ghost = bench_train(args, "ghostnet_100")
    hg = None if args.no_hourglass else bench_train(args, "hourglass52")
    rows.append(
        (
            f"training step img/s at {args.train_size}, batch {args.train_batch} "
            "(ours: GhostNet; reference column: Hourglass-52)",
            "-" if hg is None else f"{hg:.2f} img/s",
            f"{ghost:.2f} img/s",
            float("nan") if hg is None else ghost / hg,
        )
    )
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print("| work | reference formulation | ours | ratio |\n|---|---|---|---|")
    for what, r, o, ratio in rows:
        print(f"| {what} | {r} | {o} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
