"""RetinaFace training data pipeline: ours (``WiderFaceDataset`` with ``train_transform``'s draws
made first, uint8 lookup-table distortion, one float32 CHW output, reduced decoding where the crop
allows, one OpenCV thread) vs a port of the reference's ``WiderFaceDetection`` + ``preproc``
(tests/retinaface_data/augment_reference.py, run as the reference runs: OpenCV's default threads).

    python benchmarks/retinaface_data.py [--images 48] [--image-size 1024] [--dim 640]
                                         [--rounds 3] [--ref-cv2-threads -1]

One process, one "worker": samples are loaded in a loop (no DataLoader), ours and the
reference in interleaved rounds over the same images of a synthetic WIDER FACE (written once
under --root by ``src.data.synthetic_faces``, real JPEG files and label.txt). Prints img/s
(median over rounds) and the ratio; a shared machine gives noisy numbers, compare the rows of one
run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.synthetic_faces import ensure_synthetic_faces  # noqa: E402
from src.data.widerface import WiderFaceDataset, parse_retinaface_labels  # noqa: E402
from tests.retinaface_data import augment_reference as AR  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/retinaface_data_bench")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--image-size", type=int, default=1024, help="long side of the files")
    ap.add_argument("--dim", type=int, default=640, help="training resolution")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ref-cv2-threads", type=int, default=-1, help="-1: OpenCV's default")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root) / f"n{args.images}_s{args.image_size}"
    ensure_synthetic_faces(root, 0, args.images, 2, args.image_size)
    labels = root / "train" / "label.txt"
    records = parse_retinaface_labels(labels)
    idx = [i for i, r in enumerate(records) if len(r.boxes)]  # the reference asserts on none
    ours_ds = WiderFaceDataset(records, root / "train" / "images", args.dim, cv2_threads=None)
    ref_ds = AR.WiderFaceDetection(
        labels, root / "train" / "images", AR.Preproc(args.dim, rnd=random.Random(0))
    )
    default_threads = cv2.getNumThreads()
    ref_threads = default_threads if args.ref_cv2_threads < 0 else args.ref_cv2_threads
    rng = np.random.default_rng(0)

    def ours():
        cv2.setNumThreads(1)
        for i in idx:
            ours_ds.load(i, rng)

    def ref():
        cv2.setNumThreads(ref_threads)
        for i in idx:
            ref_ds[i]

    for i in idx:  # header sizes cached, files in the page cache: steady state for both
        ours_ds.file_size(i)
    ours(), ref()
    times = {"reference (WiderFaceDetection + preproc)": [], "ours (WiderFaceDataset)": []}
    for _ in range(args.rounds):
        for name, fn in zip(times, (ref, ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(len(idx) / (time.perf_counter() - t0))
    print(
        f"{len(idx)} images of {args.image_size} px (long side) -> {args.dim}, one process, "
        f"OpenCV threads: reference {ref_threads}, ours 1"
    )
    base = statistics.median(next(iter(times.values())))
    print(f"{'':42s} {'img/s':>8s} {'best':>8s} {'ratio':>6s}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:42s} {med:8.1f} {max(t):8.1f} {med / base:5.2f}x")


if __name__ == "__main__":
    main()
