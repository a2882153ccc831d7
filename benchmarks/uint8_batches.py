"""DataLoader throughput of uint8 batches (``dataset.uint8_images=true``, the default) against
float32 batches (``false``), for RetinaFace (WIDER FACE format) and WS-DAN (CUB format).

    OMP_NUM_THREADS=1 python benchmarks/uint8_batches.py [--workers 2] [--rounds 3]
        [--batches 12] [--device cpu|cuda] [--only retinaface|ws_dan]

Each dataset at its experiment size (retinaface: 640 px crops, batch 8, from 1024 px files;
ws_dan: 448 px, batch 12, from 500 px files), written once under --root by the synthetic
writers (real JPEG files read by the real readers). The two variants run round-robin (float,
uint8, float, uint8, ...; each pass a fresh loader through the engine's ``make_loader`` with the
Task's collate, so the worker start-up is in every pass alike) and the median img/s is printed,
with the bytes of one batch's ``image``. With ``--device cuda`` each batch is also pinned,
copied to the device and normalised there (``Task.normalise``), as a training step sees it.
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

from src.data.cub import build_cub  # noqa: E402
from src.data.synthetic_cub import ensure_synthetic_cub  # noqa: E402
from src.data.synthetic_faces import ensure_synthetic_faces  # noqa: E402
from src.data.widerface import widerface_splits  # noqa: E402
from src.engine.data import make_loader  # noqa: E402


def retinaface_data(root: Path, uint8: bool):
    from src.tasks.retinaface import RetinaFaceTask

    path = root / "faces_1024"
    ensure_synthetic_faces(path, 0, 96, 2, 1024)
    data = widerface_splits(path, image_size=640, uint8_images=uint8)
    task = RetinaFaceTask.__new__(RetinaFaceTask)  # collate / normalise need no network
    torch.nn.Module.__init__(task)
    task.mean = data["train"].mean
    return data["train"], task, 8


def ws_dan_data(root: Path, uint8: bool):
    from src.tasks.ws_dan import WSDANTask

    path = root / "cub_500"
    ensure_synthetic_cub(path, 0, 4, 24, 1, 500)
    task = WSDANTask.__new__(WSDANTask)
    torch.nn.Module.__init__(task)
    return build_cub(path, image_size=448, uint8_images=uint8)["train"], task, 12


def one_pass(dataset, task, batch, workers, batches, device, epoch):
    loader = make_loader(
        dataset,
        train=True,
        batch_size=batch,
        seed=epoch,
        collate=task.collate,
        num_workers=workers,
        rank=0,
        world_size=1,
        limit=batches,
        pin_memory=device.type == "cuda",
    )
    n, nbytes = 0, 0
    start = time.perf_counter()
    for b in loader:
        nbytes = b["image"].numel() * b["image"].element_size()
        if device.type == "cuda":
            b = {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in b.items()
            }
            b = task.normalise(b)
        n += b["image"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start), nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "data" / "bench_uint8"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=12, help="batches per pass")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=("retinaface", "ws_dan"), default=None)
    args = ap.parse_args()
    root, device = Path(args.root), torch.device(args.device)
    builders = {"retinaface": retinaface_data, "ws_dan": ws_dan_data}
    for name, build in builders.items():
        if args.only and name != args.only:
            continue
        variants = {"float32": build(root, False), "uint8": build(root, True)}
        rates: dict[str, list[float]] = {k: [] for k in variants}
        sizes = {}
        for r in range(args.rounds):
            for key, (ds, task, batch) in variants.items():
                rate, nbytes = one_pass(ds, task, batch, args.workers, args.batches, device, r)
                rates[key].append(rate)
                sizes[key] = nbytes
        batch = variants["uint8"][2]
        print(
            f"{name}: batch {batch}, {args.workers} workers, "
            f"{args.batches} batches x {args.rounds} rounds"
        )
        for key in variants:
            runs = ", ".join(f"{v:.1f}" for v in rates[key])
            print(
                f"  {key:8s} median {statistics.median(rates[key]):7.1f} img/s  ({runs})  "
                f"image bytes/batch {sizes[key] / 2**20:.1f} MiB"
            )
        speed = statistics.median(rates["uint8"]) / statistics.median(rates["float32"])
        print(f"  uint8 / float32: {speed:.2f}x")


if __name__ == "__main__":
    main()
