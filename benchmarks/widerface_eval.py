"""WIDER FACE evaluation speed: reference-style loops vs our vectorised evaluator.

    python benchmarks/widerface_eval.py [--gt DIR] [--skip-reference] [--seed 0]

Scores the whole validation split (3,226 images) with deterministic synthetic predictions
(jittered ground-truth boxes, misses, duplicates, false positives) and prints seconds and
easy / medium / hard APs for both formulations, then ours alone on a detector-like load
(750 predictions per image, RetinaFace's keep-top-k). The reference-style formulation is the
test oracle in tests/retinaface_data/widerface_reference.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.metrics.widerface import WiderFaceGT, evaluate_widerface  # noqa: E402
from tests.retinaface_data import widerface_reference as ref  # noqa: E402


def heavy_predictions(preds: dict, per_image: int, seed: int) -> dict:
    """Pad every image's predictions with low-score false positives up to ``per_image``."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, a in preds.items():
        m = max(per_image - len(a), 0)
        fp = np.c_[
            rng.uniform(0, 1000, (m, 2)), rng.uniform(4, 60, (m, 2)), rng.uniform(0, 0.02, m)
        ]
        b = np.concatenate([a, fp])[:per_image]
        out[k] = b[np.argsort(-b[:, 4], kind="stable")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", default=str(ROOT.parent / "shared/data/widerface_val_gt"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()

    arrays = ref.load_mat_gt(args.gt)
    fb, ev, fl, hard, med, easy = arrays
    gt = WiderFaceGT.from_mat_arrays(ev, fl, fb, {"easy": easy, "medium": med, "hard": hard})
    preds = ref.synthetic_predictions(fb, ev, fl, seed=args.seed)
    npred = sum(len(v) for v in preds.values())
    rows = []

    t = time.perf_counter()
    ours = evaluate_widerface(preds, gt)
    rows.append(("ours", len(gt), npred, time.perf_counter() - t, ours))
    if not args.skip_reference:
        t = time.perf_counter()
        theirs = ref.reference_evaluation(ref.nested(preds), *arrays)
        rows.append(("reference-style", len(gt), npred, time.perf_counter() - t, theirs))
    heavy = heavy_predictions(preds, 750, args.seed)
    nheavy = sum(len(v) for v in heavy.values())
    t = time.perf_counter()
    aps = evaluate_widerface(heavy, gt)
    rows.append(("ours, 750/image", len(gt), nheavy, time.perf_counter() - t, aps))

    print(
        f"{'formulation':<18}{'images':>7}{'preds':>10}{'seconds':>9}"
        f"{'easy':>20}{'medium':>20}{'hard':>20}"
    )
    for name, n, p, sec, r in rows:
        print(
            f"{name:<18}{n:>7}{p:>10}{sec:>9.2f}"
            + "".join(f"{r[s]:>20.16f}" for s in ("easy", "medium", "hard"))
        )
    if not args.skip_reference:
        same = all(rows[0][4][s] == rows[1][4][s] for s in ("easy", "medium", "hard"))
        print(f"identical APs: {same}")


if __name__ == "__main__":
    main()
