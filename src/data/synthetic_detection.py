"""Synthetic object-detection datasets WRITTEN in the COCO, Pascal VOC and YOLO txt formats and
read back by the real readers (``src.data.detection``).

Every image (``make_image(seed, split, index, size)``, drawn from
``default_rng([seed, split, index])``: the same seed gives the same bytes, and image i does not
depend on how many are written) has a smooth noisy background with clutter lines and 0..8
shapes of four classes (``SHAPES``: ellipse, rectangle, triangle, star) at sizes from 6 px to
80 % of the short side (log-uniform) and aspect ratios 1:3..3:1, in random colours, overlapping
(a shape may cover up to 70 % IoU of an earlier one) and partly outside the image (at least 30 %
of a shape's box inside); about 10 % of images have no shape and about 10 % are written as
grayscale files. A box is the bounds of the drawn polygon, clipped to the image.

* COCO (``ensure_synthetic_coco``): ``annotations/instances_{train,val}2017.json`` +
  ``{train,val}2017/*.jpg``; category ids 1, 3, 5, 8 (gaps, as COCO's); ``area`` is the
  shape's pixel count, ``segmentation`` its polygon (vertices clipped to the image); about 15 %
  of the images with shapes also hold a crowd: a cluster of small shapes of one class written
  as ONE ``iscrowd=1`` annotation (RLE segmentation of the cluster, its bounds as ``bbox``).
* VOC (``ensure_synthetic_voc``): ``VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main}``
  with ``train`` / ``val`` / ``trainval`` (``num_train`` images) and ``test`` (``num_val``);
  1-based integer corners (``xmin = round(x1) + 1``, ``xmax = round(x2)``, VOC's last-pixel
  convention); ``truncated`` for shapes cut by the border; ``difficult`` for shapes whose box
  short side is under 12 px or with less than half of their box inside the image.
* YOLO (``ensure_synthetic_yolo``, for tests): ``images/{train,val}``, ``labels/{train,val}``,
  ``data.yaml``.

Each is written once under its root (the dataset yaml puts the options in the folder name):
built in a temporary sibling folder, moved into place, and the marker json (the parameters)
written last, so an interrupted or concurrent run never reads half a dataset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from src.data.base import DataError
from src.data.write_once import write_parts_once

log = logging.getLogger(__name__)

VERSION = 1
SHAPES = ("ellipse", "rectangle", "triangle", "star")
COCO_CATEGORY_IDS = (1, 3, 5, 8)


# ---- drawing ---------------------------------------------------------------------------------
def _unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of a shape in [-1, 1]^2 (reaching the bounds in x and y)."""
    if shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.c_[np.cos(t), np.sin(t)]
    if shape == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == "triangle":
        apex = rng.uniform(-1, 1)
        tri = np.array([[apex, -1], [1, 1], [-1, 1]], dtype=np.float64)
        return tri if rng.integers(2) else tri * [1, -1]
    # star: five points, normalised to fill [-1, 1]^2
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2 + rng.uniform(0, 2 * np.pi / 5)
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    pts = np.c_[r * np.cos(t), r * np.sin(t)]
    lo, hi = pts.min(0), pts.max(0)
    return (pts - lo) / (hi - lo) * 2 - 1


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = (
        np.linspace(0, 1, w)[None, :, None]
        if rng.integers(2)
        else np.linspace(0, 1, h)[:, None, None]
    )
    img = (c0 + (c1 - c0) * t) + rng.integers(-8, 9, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # clutter lines, never a shape
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p1, p2, tuple(int(v) for v in rng.integers(0, 256, 3)), 1)
    return img


def _raster(pts: np.ndarray) -> list[np.ndarray]:
    """OpenCV polygon points (1/16 px) for continuous coordinates: OpenCV puts pixel i's centre
    at i, the boxes put it at i + 0.5 (pixel i covers [i, i + 1))."""
    return [np.round((pts - 0.5) * 16).astype(np.int32)]


def _fill(img: np.ndarray, mask: np.ndarray, pts: np.ndarray, color) -> None:
    poly = _raster(pts)
    cv2.fillPoly(img, poly, color, cv2.LINE_8, 4)
    cv2.fillPoly(mask, poly, 1, cv2.LINE_8, 4)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_image(seed: int, split: int, index: int, size: int, crowd: bool = False):
    """One picture: ``(image, objects)``; ``image`` RGB uint8 (H, W, 3), or (H, W) for a
    grayscale one; ``objects`` dicts with ``label``, ``box`` (x1 y1 x2 y2 float pixels, clipped),
    ``polygon`` (N, 2), ``area`` (pixels), ``crowd``, ``truncated`` and ``difficult``."""
    rng = np.random.default_rng([seed, split, index])
    long_side, short_side = size, int(round(size * rng.uniform(0.6, 1.0)))
    h, w = (short_side, long_side) if rng.integers(2) else (long_side, short_side)
    img = _background(rng, h, w)
    objects: list[dict] = []
    n = 0 if rng.random() < 0.1 else int(rng.integers(1, 9))
    for _ in range(n):
        for _try in range(20):
            k = int(rng.integers(len(SHAPES)))
            side = float(np.exp(rng.uniform(np.log(6), np.log(0.8 * min(h, w)))))
            aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
            bw, bh = side * np.sqrt(aspect), side / np.sqrt(aspect)
            cx, cy = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
            pts = _unit_polygon(SHAPES[k], rng) * [bw / 2, bh / 2] + [cx, cy]
            full = np.r_[pts.min(0), pts.max(0)]
            box = np.clip(full, 0, [w, h, w, h])
            inside = (
                (box[2] - box[0]) * (box[3] - box[1]) / ((full[2] - full[0]) * (full[3] - full[1]))
            )
            if inside < 0.3 or min(box[2] - box[0], box[3] - box[1]) < 2:
                continue
            if any(_iou(box, o["box"]) > 0.7 for o in objects):
                continue
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            mask = np.zeros((h, w), np.uint8)
            _fill(img, mask, pts, color)
            objects.append(
                {
                    "label": k,
                    "box": box,
                    "polygon": np.clip(pts, 0, [w, h]),
                    "area": float(mask.sum()),
                    "crowd": False,
                    "truncated": bool(inside < 1),
                    "difficult": bool(min(box[2] - box[0], box[3] - box[1]) < 12 or inside < 0.5),
                }
            )
            break
    if crowd and objects and rng.random() < 0.15:
        objects.append(_draw_crowd(img, rng))
    if rng.random() < 0.1:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img, objects


def _draw_crowd(img: np.ndarray, rng: np.random.Generator) -> dict:
    h, w = img.shape[:2]
    rw, rh = int(w * rng.uniform(0.2, 0.4)), int(h * rng.uniform(0.2, 0.4))
    x0, y0 = int(rng.integers(0, w - rw)), int(rng.integers(0, h - rh))
    k = int(rng.integers(len(SHAPES)))
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(6, 16))):
        s = rng.uniform(4, max(5.0, min(rw, rh) / 3))
        c = [rng.uniform(x0 + s / 2, x0 + rw - s / 2), rng.uniform(y0 + s / 2, y0 + rh - s / 2)]
        pts = _unit_polygon(SHAPES[k], rng) * (s / 2) + c
        _fill(img, mask, pts, tuple(int(v) for v in rng.integers(0, 256, 3)))
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    return {
        "label": k,
        "box": box,
        "mask": mask,
        "area": float(mask.sum()),
        "crowd": True,
        "truncated": False,
        "difficult": False,
        "polygon": None,
    }


def _write_image(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise DataError(f"{path}: could not write the image")


# ---- writers ---------------------------------------------------------------------------------
def _coco_split(tmp: Path, name: str, split: int, n: int, seed: int, size: int) -> dict:
    from pycocotools import mask as mask_utils

    images, anns = [], []
    for i in range(n):
        img, objects = make_image(seed, split, i, size, crowd=True)
        image_id = split * 100_000 + i + 1
        file_name = f"{image_id:012d}.jpg"
        _write_image(tmp / f"{name}2017" / file_name, img)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": int(img.shape[0]),
                "width": int(img.shape[1]),
            }
        )
        for o in objects:
            x1, y1, x2, y2 = (float(v) for v in o["box"])
            if o["crowd"]:
                rle = mask_utils.encode(np.asfortranarray(o["mask"]))
                seg = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                seg = [[round(float(v), 2) for v in o["polygon"].reshape(-1)]]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORY_IDS[o["label"]],
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "area": o["area"],
                    "iscrowd": int(o["crowd"]),
                    "segmentation": seg,
                }
            )
    cats = [
        {"id": c, "name": s, "supercategory": "shape"} for c, s in zip(COCO_CATEGORY_IDS, SHAPES)
    ]
    data = {
        "info": {"description": f"synthetic shapes ({name})", "version": str(VERSION)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
    out = tmp / "annotations" / f"instances_{name}2017.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return data


def _voc_xml(stem: str, img: np.ndarray, objects: list[dict]) -> str:
    h, w = img.shape[:2]
    lines = [
        "<annotation>",
        "  <folder>VOC2007</folder>",
        f"  <filename>{stem}.jpg</filename>",
        f"  <size><width>{w}</width><height>{h}</height>"
        f"<depth>{1 if img.ndim == 2 else 3}</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for o in objects:
        x1, y1, x2, y2 = (int(round(float(v))) for v in o["box"])
        xmin, ymin = x1 + 1, y1 + 1
        xmax, ymax = max(x2, xmin), max(y2, ymin)
        lines += [
            "  <object>",
            f"    <name>{escape(SHAPES[o['label']])}</name>",
            "    <pose>Unspecified</pose>",
            f"    <truncated>{int(o['truncated'])}</truncated>",
            f"    <difficult>{int(o['difficult'])}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
            f"<ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join([*lines, "</annotation>", ""])


def _write_voc(tmp: Path, seed: int, num_train: int, num_val: int, size: int) -> None:
    base = tmp / "VOCdevkit" / "VOC2007"
    stems: dict[str, list[str]] = {"trainval": [], "test": []}
    for split, n, offset in (("trainval", num_train, 0), ("test", num_val, num_train)):
        for i in range(n):
            img, objects = make_image(seed, 0 if split == "trainval" else 1, i, size)
            stem = f"{offset + i + 1:06d}"
            _write_image(base / "JPEGImages" / f"{stem}.jpg", img)
            xml = base / "Annotations" / f"{stem}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(_voc_xml(stem, img, objects))
            stems[split].append(stem)
    n_train = (3 * len(stems["trainval"])) // 4
    stems["train"], stems["val"] = stems["trainval"][:n_train], stems["trainval"][n_train:]
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for split, ids in stems.items():
        (main / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))


def _write_yolo(tmp: Path, seed: int, num_train: int, num_val: int, size: int) -> None:
    for split, sid, n in (("train", 0, num_train), ("val", 1, num_val)):
        for i in range(n):
            img, objects = make_image(seed, sid, i, size)
            h, w = img.shape[:2]
            _write_image(tmp / "images" / split / f"{i:06d}.jpg", img)
            lines = []
            for o in objects:
                x1, y1, x2, y2 = (float(v) for v in o["box"])
                lines.append(
                    f"{o['label']} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                    f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                )
            lab = tmp / "labels" / split / f"{i:06d}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_text("".join(ln + "\n" for ln in lines))
    names = "\n".join(f"  {k}: {s}" for k, s in enumerate(SHAPES))
    (tmp / "data.yaml").write_text(
        f"path: .\ntrain: images/train\nval: images/val\nnc: {len(SHAPES)}\nnames:\n{names}\n"
    )


def _params(seed, num_train, num_val, source_size) -> dict:
    return {
        "version": VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "source_size": int(source_size),
    }


def ensure_synthetic_coco(
    root, seed: int = 0, num_train: int = 128, num_val: int = 32, source_size: int = 256
) -> Path:
    def write(tmp: Path) -> None:
        _coco_split(tmp, "train", 0, num_train, seed, source_size)
        _coco_split(tmp, "val", 1, num_val, seed, source_size)

    return write_parts_once(
        Path(root),
        "synthetic_coco.json",
        _params(seed, num_train, num_val, source_size),
        ("annotations", "train2017", "val2017"),
        write,
    )


def ensure_synthetic_voc(
    root, seed: int = 0, num_train: int = 128, num_val: int = 32, source_size: int = 256
) -> Path:
    return write_parts_once(
        Path(root),
        "synthetic_voc.json",
        _params(seed, num_train, num_val, source_size),
        ("VOCdevkit",),
        lambda tmp: _write_voc(tmp, seed, num_train, num_val, source_size),
    )


def ensure_synthetic_yolo(
    root, seed: int = 0, num_train: int = 16, num_val: int = 8, source_size: int = 128
) -> Path:
    """A small YOLO-txt dataset (``data.yaml`` at the root), for tests."""
    return write_parts_once(
        Path(root),
        "synthetic_yolo.json",
        _params(seed, num_train, num_val, source_size),
        ("images", "labels", "data.yaml"),
        lambda tmp: _write_yolo(tmp, seed, num_train, num_val, source_size),
    )


def synthetic_coco_splits(
    root,
    seed: int = 0,
    num_train: int = 128,
    num_val: int = 32,
    source_size: int = 256,
    image_size: int = 256,
    skip_empty: bool = False,
    augment=None,
    normalize: str = "imagenet",
    keep_uint8: bool = False,
):
    """Write (once) the synthetic COCO dataset under ``root`` and read it with ``coco_splits``."""
    from src.data.detection.coco import coco_splits

    ensure_synthetic_coco(root, seed, num_train, num_val, source_size)
    return coco_splits(
        root,
        image_size=image_size,
        skip_empty=skip_empty,
        augment=augment,
        normalize=normalize,
        keep_uint8=keep_uint8,
    )


def synthetic_voc_splits(
    root,
    seed: int = 0,
    num_train: int = 128,
    num_val: int = 32,
    source_size: int = 256,
    image_size: int = 256,
    augment=None,
    normalize: str = "imagenet",
    keep_uint8: bool = False,
):
    """Write (once) the synthetic VOC dataset under ``root`` and read it with ``voc_splits``
    (trainval / test of ``root/VOCdevkit/VOC2007``, the four shape classes)."""
    from src.data.detection.voc import voc_splits

    ensure_synthetic_voc(root, seed, num_train, num_val, source_size)
    voc = Path(root) / "VOCdevkit" / "VOC2007"
    return voc_splits(
        [voc],
        [voc],
        "trainval",
        "test",
        image_size=image_size,
        class_names=SHAPES,
        augment=augment,
        normalize=normalize,
        keep_uint8=keep_uint8,
    )


synthetic_coco_splits.kind = "detection"  # the dataset kind Tasks declare in `accepts`
synthetic_voc_splits.kind = "detection"
