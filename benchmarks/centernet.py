"""CenterNet: decoding + triplet filter + soft-NMS, targets + loss forward + backward, and a
training step, each against the reference formulation.

    python benchmarks/centernet.py --batch 4 --map 128 --classes 80 --threads 1 --repeats 5

* post-processing: ``src.models.centernet.decode`` + ``postprocess`` (batched, one pass for the
  batch) against the per-image numpy loop port of the reference's ``kp_utils._decode`` +
  ``test/coco.py`` + ``soft_nms`` (tests/centernet/test_decode.py ``port_image``), same maps;
* targets + loss: ``src.losses.centernet`` (targets drawn batched) against the reference's
  per-image target loop and its ``AELoss`` (tests/centernet/test_loss.py ports), forward +
  backward on the same maps, with the loss values printed so a reader sees they agree;
* training: images/s of one optimizer step (forward, loss, backward, Adam) of the GhostNet
  CenterNet at ``--train-size`` (batch ``--train-batch``); the reference's Hourglass-52 step is
  printed beside it at the same size for scale (not a like-for-like comparison).

Prints one table (median ms). Only the ratios of one run are meaningful.
"""

from __future__ import annotations

import argparse
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


def bench_post(args):
    b, s = args.batch, args.map
    m = maps(2 * b if args.flip else b, args.classes, s)
    in_size = (4 * s, 4 * s)
    orig = torch.tensor([[4 * s, 4 * s]] * b)
    cfg = DecodeConfig(flip=args.flip)

    def ours():
        with torch.no_grad():
            return postprocess(
                decode(m, cfg), in_size, orig, 1.0, (0, 0), cfg, flip=args.flip, map_size=(s, s)
            )

    per = []
    for i in range(b):
        p = [{k: v[i].detach().numpy() for k, v in m.items()}]
        if args.flip:
            p.append({k: v[b + i].detach().numpy() for k, v in m.items()})
        per.append(p)

    def ref():
        return [port_image(p, args.flip, in_size, (s, s), [4 * s, 4 * s], 1.0, [0, 0]) for p in per]

    got, want = ours(), ref()
    for i in range(b):
        n = int((got["labels"][i] >= 0).sum())
        assert n == len(want[i]), (n, len(want[i]))
        np.testing.assert_allclose(got["scores"][i, :n].numpy(), want[i][:, 4], rtol=1e-6)
    return timed(ref, args.repeats), timed(ours, args.repeats)


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    r, o = bench_post(args)
    what = f"decode + triplet + soft-NMS, batch {args.batch}, {args.map}^2 maps, {args.classes} cl"
    rows.append((what + (" (flip)" if args.flip else ""), f"{r:.1f} ms", f"{o:.1f} ms", r / o))
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
