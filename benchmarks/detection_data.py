"""Detection loader speed: our COCO reader + albumentations pipeline through the engine's
DataLoader path, against a plain per-sample PIL loader with hand-written box loops.

    python benchmarks/detection_data.py [--images 256] [--size 640] [--batch 16]
                                        [--workers 1 2] [--threads 1]

Both read the same COCO-format files (``synthetic_coco`` written at ``--size`` px under
``--root``, once), letterbox / scale to ``--size`` with random scale, pad + crop, flip and colour
jitter, normalise, and batch with ``collate_detection``; both go through a torch DataLoader
with the same batch size and worker count. Ours: ``src.engine.data.make_loader`` over
``CocoDetection`` (cv2 decode, one albumentations Compose, boxes as arrays). Reference style:
PIL open / resize / paste / crop / mirror, boxes adjusted one by one in Python loops, as the
reference repos' datasets do. A timed pass is one epoch, worker start-up included (what a
training epoch pays); the first pass (page cache) is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.data.detection import CocoDetection, collate_detection  # noqa: E402
from src.data.synthetic_detection import ensure_synthetic_coco  # noqa: E402
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from src.engine.data import make_loader  # noqa: E402


class ReferenceStyle(Dataset):
    """Per-sample PIL + per-box Python loops (np.random in the worker, as the references)."""

    def __init__(self, ann_file: Path, images: Path, size: int):
        data = json.loads(ann_file.read_text())
        cats = sorted(c["id"] for c in data["categories"])
        self.cat_to_label = {c: i for i, c in enumerate(cats)}
        self.anns: dict[int, list] = {}
        for a in data["annotations"]:
            self.anns.setdefault(a["image_id"], []).append(a)
        self.images = sorted(data["images"], key=lambda im: im["id"])
        self.root, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        info = self.images[index]
        img = Image.open(self.root / info["file_name"]).convert("RGB")
        w, h = img.size
        boxes, labels, crowd = [], [], []
        for a in self.anns.get(info["id"], []):
            x, y, bw, bh = a["bbox"]
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(w, x + bw), min(h, y + bh)
            if x2 > x1 and y2 > y1:
                boxes.append([x1, y1, x2, y2])
                labels.append(self.cat_to_label[a["category_id"]])
                crowd.append(bool(a.get("iscrowd", 0)))
        s = self.size
        long_side = int(s * np.random.uniform(0.5, 1.5))
        r = long_side / max(w, h)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        img = img.resize((nw, nh), Image.BILINEAR)
        cw, ch = max(s, nw), max(s, nh)
        px, py = np.random.randint(0, cw - nw + 1), np.random.randint(0, ch - nh + 1)
        canvas = Image.new("RGB", (cw, ch), (114, 114, 114))
        canvas.paste(img, (px, py))
        cx, cy = np.random.randint(0, cw - s + 1), np.random.randint(0, ch - s + 1)
        img = canvas.crop((cx, cy, cx + s, cy + s))
        flip = np.random.rand() < 0.5
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        out_b, out_l, out_c = [], [], []
        for (x1, y1, x2, y2), lab, cr in zip(boxes, labels, crowd):
            x1, y1 = x1 * r + px - cx, y1 * r + py - cy
            x2, y2 = x2 * r + px - cx, y2 * r + py - cy
            area = (x2 - x1) * (y2 - y1)
            x1, y1, x2, y2 = max(0, x1), max(0, y1), min(s, x2), min(s, y2)
            if x2 <= x1 or y2 <= y1 or (x2 - x1) * (y2 - y1) < 0.2 * area:
                continue
            if flip:
                x1, x2 = s - x2, s - x1
            out_b.append([x1, y1, x2, y2])
            out_l.append(lab)
            out_c.append(cr)
        if np.random.rand() < 0.5:
            img = ImageEnhance.Color(img).enhance(np.random.uniform(0.6, 1.4))
            img = ImageEnhance.Brightness(img).enhance(np.random.uniform(0.8, 1.2))
        a = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return {
            "image": torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32)),
            "boxes": torch.tensor(out_b, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(out_l, dtype=torch.int64),
            "crowd": torch.tensor(out_c, dtype=torch.bool),
            "difficult": torch.zeros(len(out_b), dtype=torch.bool),
            "image_id": info["id"],
            "index": index,
            "orig_size": (h, w),
            "scale": float("nan"),
            "pad": (float("nan"), float("nan")),
        }


def _ours(ds, batch: int, workers: int):
    return make_loader(
        ds,
        train=True,
        batch_size=batch,
        seed=0,
        collate=collate_detection,
        num_workers=workers,
        rank=0,
        world_size=1,
        limit=-1,
    )


def _reference(ds, batch: int, workers: int):
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_detection,
        drop_last=True,
    )


def images_per_second(loader) -> float:
    t = time.perf_counter()
    n = sum(b["image"].shape[0] for b in loader)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes (best is shown)")
    ap.add_argument("--root", default=None, help="where the COCO-format images are written")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    root = Path(args.root or ROOT / "data" / f"bench_detection_coco_{args.images}x{args.size}px")
    ensure_synthetic_coco(root, seed=0, num_train=args.images, num_val=1, source_size=args.size)
    ann, images = root / "annotations/instances_train2017.json", root / "train2017"
    ours = CocoDetection(ann, images, image_size=args.size, augment={"jitter_p": 0.5})
    ref = ReferenceStyle(ann, images, args.size)
    print(
        f"{args.images} COCO-format images, {args.size} px, batch {args.batch}, "
        f"{args.threads} thread(s)"
    )
    print("| loader | workers | images/s |\n|---|---|---|")
    for workers in args.workers:
        for name, make, ds in (
            ("ours (make_loader + albumentations)", _ours, ours),
            ("reference style (PIL + box loops)", _reference, ref),
        ):
            loader = make(ds, args.batch, workers)
            images_per_second(loader)  # warm-up: page cache, imports in workers
            best = max(images_per_second(loader) for _ in range(args.repeats))
            print(f"| {name} | {workers} | {best:.1f} |")


if __name__ == "__main__":
    main()
