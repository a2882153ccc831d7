"""RetinaFace training augmentation, landmark-safe, with every random draw from a numpy Generator.

The pipeline of biubug6/Pytorch_Retinaface (``data/data_augment.py``, seed 004), step by step:

1. ``random_square_crop``: up to 250 tries; a square side ``int(scale * short_side)`` with
   ``scale`` drawn from ``PRE_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)``, left/top from
   ``integers(W - side)`` / ``integers(H - side)`` (0 when the side fills the dimension). A try is
   accepted when at least one face lies entirely inside it (``matrix_iof >= 1``) and at least one
   face centre lies strictly inside; faces whose centre is inside are kept, their boxes clipped to
   the crop. The reference's "min face size" filter compares ``(x2 - x1 + 1) / side * img_dim``
   with ``0.0`` (its comment says 16 px), so it never drops a face: ``min_face_size=0.0`` keeps
   that; a positive value turns it into a real filter at training resolution.
2. ``distort``: brightness / contrast / saturation / hue in the reference's two orders (uint8
   arithmetic, truncation, OpenCV HSV with H in [0, 180)).
3. ``pad_to_square`` with the mean colour, only when every crop try failed (top-left aligned).
4. ``mirror`` with probability 0.5: ``x -> W - x``, boxes ``(W - x2, W - x1)``, landmarks swap
   left/right eye (0 <-> 1) and left/right mouth corner (3 <-> 4).
5. ``resize_subtract_mean``: to ``img_dim`` x ``img_dim`` with an interpolation drawn from
   (linear, cubic, area, nearest, lanczos4), float32, minus the BGR mean (104, 117, 123), CHW.
6. boxes and landmarks divided by the (square) image size before the resize.

Landmarks go through our own arithmetic (never albumentations keypoints, which the seed reports
as giving wrong landmarks here).

Deviations, decided and documented:

* Landmarks outside the crop. The reference clamps them onto the crop border, a wrong target
  (the point is not on the border). Default ``landmark_policy="drop"``: a face with any of its five
  points outside the crop keeps its box but loses its landmarks (label -1, landmarks -1), so the
  landmark loss only sees true positions. ``"clamp"`` restores the reference; ``"keep"`` keeps the
  exact (outside, normalised < 0 or > 1) coordinates.
* Faces without landmarks (label -1) keep ``-1`` landmarks through every step; the reference
  shifts, clamps and mirrors those ``-1`` values into meaningless numbers (often 0).
* Images with no face: the reference asserts. Here the crop cannot succeed, so it is skipped (no
  random draws), the image is padded to square and the rest of the pipeline runs; the sample has
  zero faces.
"""

from __future__ import annotations

import cv2
import numpy as np

PRE_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
BGR_MEAN = (104.0, 117.0, 123.0)
INTERPOLATIONS = (
    cv2.INTER_LINEAR,
    cv2.INTER_CUBIC,
    cv2.INTER_AREA,
    cv2.INTER_NEAREST,
    cv2.INTER_LANCZOS4,
)
MIRROR_PERM = np.array([1, 0, 2, 4, 3])  # left eye <-> right eye, left mouth <-> right mouth
LANDMARK_POLICIES = ("drop", "clamp", "keep")


def matrix_iof(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of ``a`` (reference formula, areas clamped to >= 1)."""
    lt = np.maximum(a[:, np.newaxis, :2], b[:, :2])
    rb = np.minimum(a[:, np.newaxis, 2:], b[:, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return area_i / np.maximum(area_a[:, np.newaxis], 1)


def random_square_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    landmarks: np.ndarray,
    img_dim: int,
    rng: np.random.Generator,
    tries: int = 250,
    scales=PRE_SCALES,
    min_face_size: float = 0.0,
    landmark_policy: str = "drop",
):
    """Returns ``image, boxes, labels, landmarks, pad_image_flag`` (flag True: every try failed)."""
    if landmark_policy not in LANDMARK_POLICIES:
        raise ValueError(
            f"landmark_policy must be one of {LANDMARK_POLICIES}, got {landmark_policy!r}"
        )
    height, width = image.shape[:2]
    if len(boxes) == 0:
        return image, boxes, labels, landmarks, True
    short_side = min(width, height)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    for _ in range(tries):
        scale = scales[int(rng.integers(len(scales)))]
        w = h = int(scale * short_side)
        left = 0 if width == w else int(rng.integers(width - w))
        top = 0 if height == h else int(rng.integers(height - h))
        roi = np.array((left, top, left + w, top + h))
        if not (matrix_iof(boxes, roi[np.newaxis]) >= 1).any():
            continue
        inside = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
        if not inside.any():
            continue
        boxes_t = boxes[inside].copy()
        labels_t = labels[inside].copy()
        landms_t = landmarks[inside].copy().reshape(-1, 5, 2)

        boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2]) - roi[:2]
        boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:]) - roi[:2]

        has = labels_t > 0
        pts = landms_t[has] - roi[:2]
        if landmark_policy == "clamp":
            pts = np.minimum(np.maximum(pts, 0), roi[2:] - roi[:2])
        elif landmark_policy == "drop":
            out = ((pts < 0) | (pts > roi[2:] - roi[:2])).any(axis=(1, 2))
            pts[out] = -1
            idx = np.flatnonzero(has)[out]
            labels_t[idx] = -1
        landms_t[has] = pts
        landms_t = landms_t.reshape(-1, 10)

        if min_face_size > 0:
            bw = (boxes_t[:, 2] - boxes_t[:, 0] + 1) / w * img_dim
            bh = (boxes_t[:, 3] - boxes_t[:, 1] + 1) / h * img_dim
            big = np.minimum(bw, bh) > min_face_size
            boxes_t, labels_t, landms_t = boxes_t[big], labels_t[big], landms_t[big]
            if len(boxes_t) == 0:
                continue
        image_t = image[roi[1] : roi[3], roi[0] : roi[2]]
        return image_t, boxes_t, labels_t, landms_t, False
    return image, boxes, labels, landmarks, True


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> None:
    tmp = channel.astype(np.float64) * alpha + beta
    np.clip(tmp, 0, 255, out=tmp)
    channel[:] = tmp  # truncation to uint8, as the reference's in-place assignment


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric distortion of a BGR uint8 image (reference order and ranges)."""
    image = image.copy()

    def brightness():
        if rng.integers(2):
            _convert(image, beta=rng.uniform(-32, 32))

    def contrast(img):
        if rng.integers(2):
            _convert(img, alpha=rng.uniform(0.5, 1.5))

    def saturation_hue(img):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if rng.integers(2):
            _convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        if rng.integers(2):
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + int(rng.integers(-18, 19))) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    if rng.integers(2):
        brightness()
        contrast(image)
        image = saturation_hue(image)
    else:
        brightness()
        image = saturation_hue(image)
        contrast(image)
    return image


def pad_to_square(image: np.ndarray, fill=BGR_MEAN) -> np.ndarray:
    height, width = image.shape[:2]
    side = max(width, height)
    out = np.empty((side, side, 3), dtype=image.dtype)
    out[:, :] = fill
    out[:height, :width] = image
    return out


def mirror(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
):
    """Horizontal flip with probability 0.5, swapping left/right landmarks."""
    if not rng.integers(2):
        return image, boxes, landmarks
    width = image.shape[1]
    image = image[:, ::-1]
    boxes = boxes.copy()
    boxes[:, 0::2] = width - boxes[:, 2::-2]
    landmarks = landmarks.copy()
    has = labels > 0
    pts = landmarks[has].reshape(-1, 5, 2)
    pts[:, :, 0] = width - pts[:, :, 0]
    landmarks[has] = pts[:, MIRROR_PERM].reshape(-1, 10)
    return image, boxes, landmarks


def resize_subtract_mean(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator | None,
    mean=BGR_MEAN,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Square resize (random interpolation when ``rng``), float32, minus the mean, CHW."""
    if rng is not None:
        interpolation = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
    out = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interpolation)
    out = out.astype(np.float32) - np.asarray(mean, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _normalise(boxes, landmarks, labels, width, height):
    boxes = boxes.astype(np.float32).copy()
    landmarks = landmarks.astype(np.float32).copy()
    boxes[:, 0::2] /= width
    boxes[:, 1::2] /= height
    has = labels > 0
    landmarks[has, 0::2] /= width
    landmarks[has, 1::2] /= height
    landmarks[~has] = -1
    return boxes, landmarks


def train_transform(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    labels: np.ndarray,
    img_dim: int,
    rng: np.random.Generator,
    mean=BGR_MEAN,
    min_face_size: float = 0.0,
    landmark_policy: str = "drop",
):
    """BGR uint8 HWC image + pixel ``x1 y1 x2 y2`` boxes, ``(K, 10)`` landmarks, ``(K,)`` labels
    -> float32 CHW image (``img_dim`` square), boxes and landmarks normalised to [0, 1], labels.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 10)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    image_t, boxes_t, labels_t, landm_t, pad = random_square_crop(
        image,
        boxes,
        labels,
        landmarks,
        img_dim,
        rng,
        min_face_size=min_face_size,
        landmark_policy=landmark_policy,
    )
    image_t = distort(image_t, rng)
    if pad:
        image_t = pad_to_square(image_t, mean)
    image_t, boxes_t, landm_t = mirror(image_t, boxes_t, landm_t, labels_t, rng)
    height, width = image_t.shape[:2]
    out = resize_subtract_mean(image_t, img_dim, rng, mean)
    boxes_t, landm_t = _normalise(boxes_t, landm_t, labels_t, width, height)
    return out, boxes_t, landm_t, labels_t


def eval_transform(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    labels: np.ndarray,
    size: int | None = None,
    mean=BGR_MEAN,
):
    """No augmentation. ``size=None`` keeps the original size (the reference's ``origin_size``
    evaluation); an int resizes so the long side is ``size`` (bilinear) and pads bottom/right to a
    ``size`` square with the mean colour (0 after subtraction). Boxes and landmarks are normalised
    by the output canvas. Returns ``image, boxes, landmarks, labels, scale`` where
    ``original_pixels = canvas_pixels / scale``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 10)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    height, width = image.shape[:2]
    scale = 1.0
    if size is not None:
        scale = size / max(height, width)
        nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        canvas = np.empty((size, size, 3), dtype=image.dtype)
        canvas[:, :] = mean
        canvas[:nh, :nw] = resized
        image = canvas
        boxes = boxes * scale
        has = labels > 0
        landmarks = landmarks.copy()
        landmarks[has] = landmarks[has] * scale
    out = image.astype(np.float32) - np.asarray(mean, dtype=np.float32)
    out = np.ascontiguousarray(out.transpose(2, 0, 1))
    h, w = image.shape[:2]
    boxes_n, landm_n = _normalise(boxes, landmarks, labels, w, h)
    return out, boxes_n, landm_n, labels, scale
