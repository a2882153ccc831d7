"""COCO box evaluation speed: pycocotools vs faster-coco-eval on a val2017-sized synthetic set.

    python benchmarks/coco_eval.py [--images 5000] [--dets 100] [--seed 0] [--skip-faster]

Builds in memory a COCO ground truth shaped like instances_val2017.json (5,000 images of about
640 x 480, ~7.4 boxes per image -> ~36.8k boxes, 80 categories with COCO's ids 1..90 with gaps,
area mix about 41% small / 34% medium / 25% large, ~1% crowd boxes, ~1% images without boxes)
and ``--dets`` detections per image (jittered copies of the ground truth, some with a wrong
class, and false positives; random scores), as per-image arrays. Then runs
``src.metrics.coco.evaluate_coco`` with each backend, prints seconds (results conversion,
then the full COCOeval run: loadRes, evaluate, accumulate, summarize) and checks the stats
agree (max |difference| printed; the C++ precision division may round the last bit
differently, tests/detection_eval/test_coco.py).

The full size takes minutes in pycocotools on one core; on a busy machine run it small
(``--images 200``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.metrics.coco import STAT_NAMES, coco_results, evaluate_coco, load_coco_gt  # noqa: E402

# COCO 2017's 80 category ids (1..90 without 12 26 29 30 45 66 68 69 71 83)
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def synthetic_set(n_images: int, dets_per_image: int, seed: int):
    """(gt dict, per-image detection records) shaped like val2017 + a detector's output."""
    rng = np.random.default_rng(seed)
    images, anns, recs = [], [], []
    ann_id = 1
    for i in range(n_images):
        img_id = 1000 + 7 * i  # sparse ids, as COCO's
        w, h = (640, 480) if rng.random() < 0.7 else (480, 640)
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id:012d}.jpg"})
        m = 0 if rng.random() < 0.01 else int(rng.poisson(7.4))
        # box area: small / medium / large with val2017's ~41 / 34 / 25 %, log-uniform inside
        lo, hi = np.log([16.0, 32.0**2, 96.0**2]), np.log([32.0**2, 96.0**2, 0.5 * w * h])
        r = rng.choice(3, m, p=[0.41, 0.34, 0.25])
        area = np.exp(rng.uniform(lo[r], hi[r]))
        aspect = np.exp(rng.normal(0, 0.5, m))
        bw = np.minimum(np.sqrt(area * aspect), w - 1)
        bh = np.minimum(area / np.maximum(bw, 1e-6), h - 1)
        x = rng.uniform(0, w - bw)
        y = rng.uniform(0, h - bh)
        labels = rng.integers(0, 80, m)
        crowd = rng.random(m) < 0.01
        for k in range(m):
            anns.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": COCO_IDS[labels[k]],
                    "bbox": [float(x[k]), float(y[k]), float(bw[k]), float(bh[k])],
                    "area": float(bw[k] * bh[k]),
                    "iscrowd": int(crowd[k]),
                }
            )
            ann_id += 1
        # detections: ~1.5 jittered copies per box (10% wrong class), the rest false positives
        n_tp = min(int(rng.binomial(2 * m, 0.75)) if m else 0, dets_per_image)
        src = rng.integers(0, max(m, 1), n_tp)
        jit = rng.normal(0, 0.1, (n_tp, 4)) * np.c_[bw[src], bh[src], bw[src], bh[src]] if m else 0
        tp_boxes = (
            np.c_[x[src], y[src], x[src] + bw[src], y[src] + bh[src]] + jit
            if m
            else np.zeros((0, 4))
        )
        tp_lab = labels[src] if m else np.zeros(0, int)
        wrong = rng.random(n_tp) < 0.1
        tp_lab = np.where(wrong, rng.integers(0, 80, n_tp), tp_lab)
        n_fp = dets_per_image - n_tp
        xy = rng.uniform(0, [w, h], (n_fp, 2))
        fp_boxes = np.c_[xy, xy + rng.uniform(4, 200, (n_fp, 2))]
        boxes = np.concatenate([tp_boxes, fp_boxes])
        scores = np.concatenate([rng.uniform(0.3, 1.0, n_tp), rng.uniform(0.0, 0.6, n_fp)])
        recs.append(
            {
                "image_id": img_id,
                "boxes": boxes,
                "scores": scores,
                "labels": np.concatenate([tp_lab, rng.integers(0, 80, n_fp)]),
            }
        )
    cats = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in COCO_IDS]
    return {"images": images, "annotations": anns, "categories": cats}, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-faster", action="store_true")
    args = ap.parse_args()

    t = time.perf_counter()
    gt_dict, recs = synthetic_set(args.images, args.dets, args.seed)
    gt = load_coco_gt(gt_dict)
    t_build = time.perf_counter() - t
    areas = np.array([a["area"] for a in gt_dict["annotations"]])
    n_det = sum(len(r["scores"]) for r in recs)
    print(
        f"{len(gt_dict['images'])} images, {len(areas)} gt boxes "
        f"({np.mean(areas < 32**2):.0%} small / {np.mean((areas >= 32**2) & (areas < 96**2)):.0%}"
        f" medium / {np.mean(areas >= 96**2):.0%} large), {n_det} detections; "
        f"built in {t_build:.1f} s"
    )
    t = time.perf_counter()
    coco_results(recs, COCO_IDS)
    print(f"results conversion (arrays -> COCO results list): {time.perf_counter() - t:.2f} s")

    backends = ["pycocotools"]
    if not args.skip_faster:
        try:
            import faster_coco_eval  # noqa: F401

            backends.append("faster_coco_eval")
        except ImportError:
            print("faster-coco-eval not installed: pip install faster-coco-eval")
    rows = []
    for b in backends:
        t = time.perf_counter()
        stats = evaluate_coco(gt, recs, COCO_IDS, img_ids=gt.getImgIds(), backend=b)
        rows.append((b, time.perf_counter() - t, stats))

    print()
    print(f"| backend | seconds | {' | '.join(STAT_NAMES)} |")
    print(f"|---|---:|{'---:|' * len(STAT_NAMES)}")
    for b, sec, s in rows:
        vals = " | ".join(f"{s[f'coco_{n}']:.4f}" for n in STAT_NAMES)
        print(f"| {b} | {sec:.2f} | {vals} |")
    if len(rows) == 2:
        a, c = rows[0][2], rows[1][2]
        diff = max(abs(a[k] - c[k]) for k in a)
        same = "identical" if diff == 0 else f"max |difference| {diff:.3g}"
        print(f"\nstats: {same}; speed-up x{rows[0][1] / rows[1][1]:.1f}")


if __name__ == "__main__":
    main()
