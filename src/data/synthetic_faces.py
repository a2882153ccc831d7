"""A synthetic WIDER FACE: drawn faces written in the real formats, read by the real readers.

``ensure_synthetic_faces(root, seed, num_train, num_val, image_size)`` writes (once)::

    root/train/images/<event>/<name>.jpg
    root/train/label.txt                              RetinaFace format, 20 numbers per face
    root/val/images/<event>/<name>.jpg
    root/val/label.txt                                the same format for the validation faces
    root/wider_face_split/wider_face_val_bbx_gt.txt   official validation text format
    root/ground_truth/wider_{face,easy,medium,hard}_val.mat   official evaluation files
    root/synthetic_faces.json                         marker with the parameters, written last

Each image has a smooth random background with non-face clutter and 0..6 faces at sizes from
8 px to 70 % of the short side (log-uniform). A face is an ellipse head with two eyes, a nose and
a mouth drawn *at* its five landmarks (left eye, right eye, nose, left and right mouth corner,
left = smaller x), quantised to 1/16 px and drawn with OpenCV's sub-pixel ``shift=4``, so the
labels are exactly where the features are. About 20 % of faces are written without landmarks
(``-1``) and about 10 % of images have no face. Box corners are integers, as in WIDER.

Settings of the .mat files follow face size like WIDER's: easy keeps faces whose short box side is
>= 32 px, medium >= 16 px, hard all (see ``WiderFaceGT.from_records``).

Every image is drawn from ``default_rng([seed, split, index])``: the same seed gives the same
bytes, and image i does not depend on how many images are generated.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from src.data.base import DataError
from src.data.write_once import write_parts_once

log = logging.getLogger(__name__)

MARKER = "synthetic_faces.json"
OWNED = ("train", "val", "wider_face_split", "ground_truth")
EVENTS = ("0--Synthetic_Portrait", "1--Synthetic_Group", "2--Synthetic_Crowd")
VERSION = 1
# landmark template in box units (x, y): left eye, right eye, nose, left / right mouth corner
TEMPLATE = np.array([[0.32, 0.40], [0.68, 0.40], [0.50, 0.58], [0.35, 0.76], [0.65, 0.76]])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    if rng.integers(2):
        t = np.linspace(0, 1, w)[None, :, None]
    else:
        t = np.linspace(0, 1, h)[:, None, None]
    ramp = (c0 + (c1 - c0) * t).astype(np.int16)  # (1, w, 3) or (h, 1, 3)
    noise = rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
    img = np.clip(ramp + noise, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 5))):  # clutter: boxes and lines, never face-like
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.integers(2):
            cv2.rectangle(img, p1, p2, color, -1 if rng.integers(2) else 2)
        else:
            cv2.line(img, p1, p2, color, int(rng.integers(1, 4)))
    return img


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def draw_face(img: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw a face in integer box ``x y w h``; returns its five landmarks (5, 2) in pixels."""
    x, y, w, h = (float(v) for v in box)
    skin = np.array([rng.uniform(60, 140), rng.uniform(110, 190), rng.uniform(150, 240)])
    center = np.array([x + w / 2, y + h / 2])
    cv2.ellipse(
        img,
        _pt(center),
        (int(w / 2 * 16), int(h / 2 * 16)),
        0,
        0,
        360,
        tuple(float(v) for v in skin),
        -1,
        cv2.LINE_AA,
        4,
    )
    rel = TEMPLATE + rng.uniform(-0.03, 0.03, TEMPLATE.shape)
    rel[2, 0] += rng.uniform(-0.08, 0.08)  # a little yaw: the nose moves sideways
    lm = np.array([x, y]) + rel * np.array([w, h])
    lm = np.round(lm * 16) / 16  # exactly representable, drawn with shift=4 at these points
    dark = tuple(float(v) for v in skin * 0.25)
    r_eye = max(1, int(round(w * 0.07 * 16)))
    for p in lm[:2]:
        cv2.circle(img, _pt(p), r_eye, dark, -1, cv2.LINE_AA, 4)
    cv2.circle(
        img,
        _pt(lm[2]),
        max(1, int(round(w * 0.05 * 16))),
        tuple(float(v) for v in skin * 0.6),
        -1,
        cv2.LINE_AA,
        4,
    )
    lip = (60.0, 50.0, 170.0)
    cv2.line(img, _pt(lm[3]), _pt(lm[4]), lip, max(1, int(round(h * 0.04))), cv2.LINE_AA, 4)
    return lm


def _place_boxes(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    boxes: list[list[int]] = []
    short = min(h, w)
    for _ in range(n):
        for _try in range(30):
            bw = int(np.exp(rng.uniform(np.log(8), np.log(0.7 * short))))
            bh = int(round(bw * rng.uniform(1.1, 1.35)))
            if bh >= h or bw >= w:
                continue
            bx, by = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if all(
                bx + bw + 2 <= ox or ox + ow + 2 <= bx or by + bh + 2 <= oy or oy + oh + 2 <= by
                for ox, oy, ow, oh in boxes
            ):
                boxes.append([bx, by, bw, bh])
                break
    return np.array(boxes, dtype=np.int64).reshape(-1, 4)


def make_image(seed: int, split: int, index: int, image_size: int):
    """One image and its faces: ``(bgr uint8, boxes xywh int, landmarks (K,5,2), has_lm (K,))``."""
    rng = np.random.default_rng([seed, split, index])
    long_side = image_size
    short_side = int(round(image_size * rng.uniform(0.7, 1.0)))
    h, w = (short_side, long_side) if rng.integers(2) else (long_side, short_side)
    img = _background(rng, h, w)
    n = 0 if rng.random() < 0.1 else int(rng.integers(1, 7))
    boxes = _place_boxes(rng, h, w, n)
    lms = np.zeros((len(boxes), 5, 2))
    for k, b in enumerate(boxes):
        lms[k] = draw_face(img, b, rng)
    has_lm = rng.random(len(boxes)) >= 0.2
    return img, boxes, lms, has_lm


def _label_line(box, lm, has_lm) -> str:
    head = " ".join(str(int(v)) for v in box)
    if not has_lm:
        return head + " " + " ".join(["-1.0"] * 16)
    pts = " ".join(f"{p[0]:.4f} {p[1]:.4f} 0.0" for p in lm)
    return f"{head} {pts} 1.0"


def _write_split(tmp: Path, split: str, split_id: int, n: int, seed: int, image_size: int):
    lines, records = [], []
    for i in range(n):
        event = EVENTS[i % len(EVENTS)]
        name = f"{event.split('--')[0]}_{event.split('--')[1]}_{split}_{i}"
        img, boxes, lms, has_lm = make_image(seed, split_id, i, image_size)
        rel = f"{event}/{name}.jpg"
        out = tmp / split / "images" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise DataError(f"{out}: could not write the image")
        lines.append(f"# {rel}")
        lines += [_label_line(b, lm, f) for b, lm, f in zip(boxes, lms, has_lm)]
        records.append((event, name, rel, boxes))
    (tmp / split / "label.txt").write_text("\n".join(lines) + "\n")
    return records


def _write_val_gt(tmp: Path, records) -> None:
    from src.data.widerface_gt import WiderFaceGT

    lines = []
    for _, _, rel, boxes in records:
        lines += [rel, str(len(boxes))]
        if len(boxes) == 0:
            lines.append("0 0 0 0 0 0 0 0 0 0 ")
        lines += [" ".join(str(int(v)) for v in b) + " 0 0 0 0 0 0 " for b in boxes]
    out = tmp / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    # the evaluation files, sorted by event as the official ones
    order = sorted(records, key=lambda r: (r[0], r[1]))
    WiderFaceGT.from_records((e, n, b) for e, n, _, b in order).to_mat(tmp / "ground_truth")


def ensure_synthetic_faces(
    root: str | os.PathLike,
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 48,
    image_size: int = 256,
) -> Path:
    """Create the dataset under ``root`` unless a complete one with these parameters is there.

    Generation happens in a temporary sibling directory; the parts are then moved into ``root``
    and the marker is written last, so an interrupted run is simply redone. A ``root`` holding
    anything else than a previous synthetic dataset is never touched (``DataError``).
    """
    root = Path(root)
    params = {
        "version": VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
    }

    def write(tmp: Path) -> None:
        _write_split(tmp, "train", 0, num_train, seed, image_size)
        val = _write_split(tmp, "val", 1, num_val, seed, image_size)
        _write_val_gt(tmp, val)

    return write_parts_once(root, MARKER, params, OWNED, write)


def synthetic_faces_splits(
    root: str | os.PathLike,
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 48,
    image_size: int = 256,
    train_size: int | None = None,
    eval_size: int | None = None,
    landmark_policy: str = "drop",
    min_face_size: float = 0.0,
    uint8_images: bool = True,
):
    """Ensure the synthetic dataset exists under ``root`` and return ``widerface_splits`` of it.

    ``image_size`` is the size of the generated images (long side); ``train_size`` the square
    training resolution (default ``image_size``); ``eval_size`` None evaluates at original size.
    """
    from src.data.widerface import widerface_splits

    ensure_synthetic_faces(root, seed, num_train, num_val, image_size)
    return widerface_splits(
        root,
        image_size=train_size or image_size,
        eval_size=eval_size,
        landmark_policy=landmark_policy,
        min_face_size=min_face_size,
        uint8_images=uint8_images,
    )


synthetic_faces_splits.kind = "face_detection"  # the dataset kind Tasks declare in `accepts`
