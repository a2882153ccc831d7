"""YOLOv3 target assignment + loss, forward + backward: ``src.losses.yolo`` (batched, dense
masks, no host sync) against the per-image loop port of the archive (tests/yolov3/
archive_port.py), and post-processing of the batch (``detect.postprocess``: objectness
filter, grouped ``src.ops.batched_nms`` calls) against the port of the archive's per-image
``non_max_suppression``.

    python benchmarks/yolov3.py --batch 16 --size 416 --targets 5 --threads 2 --repeats 5

Prints one table (median ms); both paths are checked to give the same loss first (seeded inputs
without shared cells are not guaranteed at this size, so the check is to 1e-4 relative).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.losses.yolo import YoloLoss  # noqa: E402
from src.models.yolov3 import ANCHORS, MASKS, YOLOv3  # noqa: E402
from src.models.yolov3.detect import postprocess  # noqa: E402
from tests.yolov3.archive_port import (  # noqa: E402
    archive_compute_loss,
    archive_non_max_suppression,
    xyxy_px_to_archive,
)

STRIDES = (32, 16, 8)
HYP = {"giou": 3.54, "obj": 64.3, "cls": 37.4, "iou_t": 0.2}


def inputs(batch, size, targets, nc, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = [torch.randn(batch, 3, size // s, size // s, 5 + nc, generator=g) * 0.5 for s in STRIDES]
    wh = torch.randint(10, size // 2, (batch, targets, 2), generator=g).float()
    xy = torch.rand(batch, targets, 2, generator=g) * (size - wh)
    boxes = torch.cat((xy, xy + wh), -1)
    labels = torch.randint(0, nc, (batch, targets), generator=g)
    return p, boxes, labels


def timed(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=2, help="0 = skip the training step row")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    p, boxes, labels = inputs(a.batch, a.size, a.targets, a.classes)
    anchors = [torch.tensor([ANCHORS[i] for i in m], dtype=torch.float32) for m in MASKS]
    vecs = [x / s for x, s in zip(anchors, STRIDES)]
    targets = xyxy_px_to_archive(boxes.double(), labels, (a.size, a.size)).float()
    loss = YoloLoss(cls_gain_by_classes=False, batch_scale=False)

    def ours():
        ps = [x.clone().requires_grad_() for x in p]
        loss(ps, boxes, labels, anchors, STRIDES)["loss"].backward()

    def port():
        ps = [x.clone().requires_grad_() for x in p]
        sum(archive_compute_loss(ps, targets, vecs, HYP, a.classes)).backward()

    ref = float(sum(archive_compute_loss(p, targets, vecs, HYP, a.classes)))
    got = float(loss(p, boxes, labels, anchors, STRIDES)["loss"])
    agree = abs(got - ref) / max(abs(ref), 1e-12)
    t_ours, t_port = timed(ours, a.repeats), timed(port, a.repeats)
    torch.manual_seed(0)
    with torch.no_grad():
        decoded = torch.rand(a.batch, sum(3 * (a.size // s) ** 2 for s in STRIDES), 5 + a.classes)
        decoded[..., :2] *= a.size
        decoded[..., 2:4] = decoded[..., 2:4] * 100 + 3
        # as a trained model: ~1% of the anchors confident, the rest near zero
        obj = decoded[..., 4]
        decoded[..., 4] = torch.where(torch.rand_like(obj) < 0.01, obj, obj * 1e-4)
        t_post = timed(lambda: postprocess(decoded, 0.001, 0.6), a.repeats)
        t_post_port = timed(lambda: archive_non_max_suppression(decoded, 0.001, 0.6), a.repeats)
        n_cand = int((decoded[..., 4:5] * decoded[..., 5:] > 0.001).sum())
    print(f"batch {a.batch} x {a.size}px, {a.targets} targets/image, {a.classes} classes, "
          f"{a.threads} threads; loss rel. diff {agree:.1e}")  # fmt: skip
    print(f"| {'what':<42} | {'median ms':>9} |")
    print(f"|{'-' * 44}|{'-' * 11}|")
    print(f"| {'targets + loss fwd+bwd, ours (batched)':<42} | {t_ours:9.1f} |")
    print(f"| {'targets + loss fwd+bwd, archive loop port':<42} | {t_port:9.1f} |")
    print(f"| {'speed-up':<42} | {t_port / t_ours:8.1f}x |")
    print(f"| {'post-processing (conf 0.001, NMS 0.6)':<42} | {t_post:9.1f} |")
    print(f"| {'post-processing, archive loop port':<42} | {t_post_port:9.1f} |")
    print(f"({n_cand} (box, class) candidates over conf 0.001 in the {a.batch} images)")
    if a.train_batch:
        rate = train_images_per_s(a)
        print(f"training step (Darknet-53 YOLOv3, {a.classes} classes, SGD): "
              f"{rate:.2f} img/s at {a.size} px, batch {a.train_batch}")  # fmt: skip


def train_images_per_s(a) -> float:
    """Forward, GIoU loss, backward, SGD step of the full network (one optimizer step)."""
    torch.manual_seed(0)
    net = YOLOv3(num_classes=a.classes).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.937, nesterov=True)
    loss = YoloLoss()
    x = torch.rand(a.train_batch, 3, a.size, a.size)
    _, boxes, labels = inputs(a.train_batch, a.size, a.targets, a.classes, seed=1)

    def step():
        opt.zero_grad(set_to_none=True)
        out = loss(net(x), boxes, labels, net.layer_anchors(), net.strides)["loss"]
        out.backward()
        opt.step()

    ms = timed(step, max(1, a.repeats // 2))
    return a.train_batch / ms * 1e3


if __name__ == "__main__":
    main()
