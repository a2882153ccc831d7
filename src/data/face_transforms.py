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
   With ``uint8=True`` (``apply_train_plan`` / ``train_transform`` / ``eval_transform``) the
   last step stops at uint8 CHW (``to_chw``) and the float32 minus-mean conversion is done on
   the device (``src.data.widerface.subtract_mean``): uint8 -> float32 and an integer-valued
   float32 subtraction are exact, so the result is bit-identical to the float path.
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

from dataclasses import dataclass

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


def choose_square_crop(
    height: int,
    width: int,
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
    """The random draws and target arithmetic of ``random_square_crop`` for an image of
    ``height x width``, no pixels: returns ``roi`` (``left, top, right, bottom``, None when
    every try failed), boxes, labels, landmarks (the inputs unchanged on failure)."""
    if landmark_policy not in LANDMARK_POLICIES:
        raise ValueError(
            f"landmark_policy must be one of {LANDMARK_POLICIES}, got {landmark_policy!r}"
        )
    if len(boxes) == 0:
        return None, boxes, labels, landmarks
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
        return roi, boxes_t, labels_t, landms_t
    return None, boxes, labels, landmarks


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
    """Returns ``image, boxes, labels, landmarks, pad_image_flag`` (flag True: every try failed).
    The image is a view of the crop."""
    height, width = image.shape[:2]
    roi, boxes_t, labels_t, landms_t = choose_square_crop(
        height,
        width,
        boxes,
        labels,
        landmarks,
        img_dim,
        rng,
        tries,
        scales,
        min_face_size,
        landmark_policy,
    )
    if roi is None:
        return image, boxes, labels, landmarks, True
    return image[roi[1] : roi[3], roi[0] : roi[2]], boxes_t, labels_t, landms_t, False


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> None:
    """The reference's ``_convert`` (float64 arithmetic, clip, truncation to uint8), in place."""
    tmp = channel.astype(np.float64) * alpha + beta
    np.clip(tmp, 0, 255, out=tmp)
    channel[:] = tmp  # truncation to uint8, as the reference's in-place assignment


_IDENTITY = np.arange(256, dtype=np.uint8)


def _table(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``_convert`` as a lookup table: the same arithmetic on every uint8 value."""
    return np.clip(np.arange(256, dtype=np.float64) * alpha + beta, 0, 255).astype(np.uint8)


def draw_distort(rng: np.random.Generator) -> tuple:
    """The random draws of ``distort`` in the reference's order: ``(contrast_last, beta,
    alpha, saturation, hue)`` with None for a step not taken."""
    first = bool(rng.integers(2))
    beta = rng.uniform(-32, 32) if rng.integers(2) else None
    alpha = None
    if first:
        alpha = rng.uniform(0.5, 1.5) if rng.integers(2) else None
    sat = rng.uniform(0.5, 1.5) if rng.integers(2) else None
    hue = int(rng.integers(-18, 19)) if rng.integers(2) else None
    if not first:
        alpha = rng.uniform(0.5, 1.5) if rng.integers(2) else None
    return (not first, beta, alpha, sat, hue)


def apply_distort(image: np.ndarray, plan: tuple) -> np.ndarray:
    """``distort`` with drawn parameters, as uint8 lookup tables (``cv2.LUT``): brightness then
    contrast compose into one table, saturation and hue into one 3-channel table of the HSV
    image. Equal to the float64 arithmetic of the reference, value for value (every step is a
    function of one uint8 value). Returns a new contiguous array (``image`` may be a view)."""
    contrast_last, beta, alpha, sat, hue = plan
    pre = None if beta is None else _table(beta=beta)
    if alpha is not None and not contrast_last:
        pre = _table(alpha=alpha)[_IDENTITY if pre is None else pre]
    hsv = cv2.cvtColor(image if pre is None else cv2.LUT(image, pre), cv2.COLOR_BGR2HSV)
    if sat is not None or hue is not None:
        h = _IDENTITY if hue is None else ((np.arange(256) + hue) % 180).astype(np.uint8)
        s = _IDENTITY if sat is None else _table(alpha=sat)
        hsv = cv2.LUT(hsv, np.stack([h, s, _IDENTITY], -1).reshape(256, 1, 3))
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if alpha is not None and contrast_last:
        out = cv2.LUT(out, _table(alpha=alpha))
    return out


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric distortion of a BGR uint8 image (reference order and ranges)."""
    return apply_distort(image, draw_distort(rng))


def pad_to_square(image: np.ndarray, fill=BGR_MEAN) -> np.ndarray:
    height, width = image.shape[:2]
    side = max(width, height)
    out = np.empty((side, side, 3), dtype=image.dtype)
    out[:, :] = fill
    out[:height, :width] = image
    return out


def mirror_targets(boxes: np.ndarray, landmarks: np.ndarray, labels: np.ndarray, width: int):
    """Boxes and landmarks of a horizontal flip of a ``width`` wide image (left/right swapped)."""
    boxes = boxes.copy()
    boxes[:, 0::2] = width - boxes[:, 2::-2]
    landmarks = landmarks.copy()
    has = labels > 0
    pts = landmarks[has].reshape(-1, 5, 2)
    pts[:, :, 0] = width - pts[:, :, 0]
    landmarks[has] = pts[:, MIRROR_PERM].reshape(-1, 10)
    return boxes, landmarks


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
    boxes, landmarks = mirror_targets(boxes, landmarks, labels, image.shape[1])
    return image[:, ::-1], boxes, landmarks


def to_chw(image: np.ndarray) -> np.ndarray:
    """uint8 HWC -> uint8 CHW (contiguous), one pass per channel: the pixels of
    ``to_chw_minus_mean`` before the float conversion (a quarter of its bytes)."""
    out = np.empty((image.shape[2], *image.shape[:2]), dtype=image.dtype)
    for c, plane in enumerate(cv2.split(image)):
        out[c] = plane
    return out


def to_chw_minus_mean(image: np.ndarray, mean=BGR_MEAN) -> np.ndarray:
    """uint8 HWC -> float32 CHW minus the mean, in one pass per channel (no float HWC copy)."""
    out = np.empty((image.shape[2], *image.shape[:2]), dtype=np.float32)
    for c, plane in enumerate(cv2.split(image)):
        np.subtract(plane, np.float32(mean[c]), out=out[c], dtype=np.float32)
    return out


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
    return to_chw_minus_mean(out, mean)


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


@dataclass
class TrainPlan:
    """Every random draw of one training sample (``draw_train_plan``), made before any pixel
    is touched, so the image can be decoded knowing the crop (``decode_reduction``)."""

    roi: np.ndarray | None  # left, top, right, bottom in pixels of the file; None: pad
    boxes: np.ndarray  # targets after the crop, pixels of the crop
    labels: np.ndarray
    landmarks: np.ndarray
    distort: tuple
    flip: bool
    interpolation: int

    def decode_reduction(self, img_dim: int, factors=(8, 4, 2)) -> int:
        """The largest factor ``f`` with a crop side of at least ``f * img_dim`` (the image will
        be shrunk at least ``f`` times anyway), 1 when none, when the crop failed, or when the
        drawn interpolation is not ``INTER_AREA``: area resizing averages the pixels the reduced
        decode averages; the others (nearest, linear, cubic, Lanczos at >= 2x shrink) sample the
        full-resolution pixels and keep their aliasing, a part of the augmentation the reduced
        decode would filter away."""
        if self.roi is None or self.interpolation != cv2.INTER_AREA:
            return 1
        side = int(self.roi[2] - self.roi[0])
        return next((f for f in factors if side >= f * img_dim), 1)


def draw_train_plan(
    height: int,
    width: int,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    labels: np.ndarray,
    img_dim: int,
    rng: np.random.Generator,
    min_face_size: float = 0.0,
    landmark_policy: str = "drop",
) -> TrainPlan:
    """The draws of ``train_transform`` for a ``height x width`` image, in its order (crop,
    distortion, mirror, interpolation)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 10)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    roi, boxes_t, labels_t, landm_t = choose_square_crop(
        height,
        width,
        boxes,
        labels,
        landmarks,
        img_dim,
        rng,
        min_face_size=min_face_size,
        landmark_policy=landmark_policy,
    )
    plan = draw_distort(rng)
    flip = bool(rng.integers(2))
    interpolation = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
    return TrainPlan(roi, boxes_t, labels_t, landm_t, plan, flip, interpolation)


def apply_train_plan(
    image: np.ndarray,
    plan: TrainPlan,
    img_dim: int,
    mean=BGR_MEAN,
    reduction: int = 1,
    uint8: bool = False,
):
    """Pixels and targets of a drawn sample. Every step stays uint8 until the one float32 CHW
    output: the crop is a view, the distortion lookup tables make the one copy, the flip
    (``cv2.flip``) commutes with those per-pixel tables so it comes after them, then the resize
    and the mean subtraction into CHW. ``uint8=True``: the output stays uint8 CHW (``to_chw``;
    ``float32(out) - mean`` is the float output, bit for bit).

    ``reduction`` f > 1: ``image`` was decoded at 1/f of the file's size (``cv2.IMREAD_REDUCED_*``,
    only chosen when the crop is shrunk at least f times); the crop is taken at
    ``round(roi / f)``, so the content may sit up to half a reduced pixel (at most half an
    output pixel) off, and the pixels are those of a DCT-domain downscale, not of the full
    decode: the targets, all draws and the output size are unchanged."""
    if plan.roi is None:
        image_t = pad_to_square(apply_distort(image, plan.distort), mean)
    else:
        left, top, right, bottom = (int(v) for v in plan.roi)
        if reduction > 1:
            side = max(1, round((right - left) / reduction))
            left = min(round(left / reduction), image.shape[1] - side)
            top = min(round(top / reduction), image.shape[0] - side)
            right, bottom = left + side, top + side
        image_t = apply_distort(image[top:bottom, left:right], plan.distort)
    height, width = image_t.shape[:2]
    if reduction > 1:
        height = width = int(plan.roi[2] - plan.roi[0])
    boxes_t, landm_t = plan.boxes, plan.landmarks
    if plan.flip:
        boxes_t, landm_t = mirror_targets(boxes_t, landm_t, plan.labels, width)
        image_t = cv2.flip(image_t, 1)
    out = cv2.resize(image_t, (img_dim, img_dim), interpolation=plan.interpolation)
    out = to_chw(out) if uint8 else to_chw_minus_mean(out, mean)
    boxes_t, landm_t = _normalise(boxes_t, landm_t, plan.labels, width, height)
    return out, boxes_t, landm_t, plan.labels


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
    uint8: bool = False,
):
    """BGR uint8 HWC image + pixel ``x1 y1 x2 y2`` boxes, ``(K, 10)`` landmarks, ``(K,)`` labels
    -> float32 CHW image minus the mean (``uint8``: uint8 CHW) of ``img_dim`` square, boxes and
    landmarks normalised to [0, 1], labels. ``draw_train_plan`` then ``apply_train_plan``."""
    height, width = image.shape[:2]
    plan = draw_train_plan(
        height, width, boxes, landmarks, labels, img_dim, rng, min_face_size, landmark_policy
    )
    return apply_train_plan(image, plan, img_dim, mean, uint8=uint8)


def eval_transform(
    image: np.ndarray,
    boxes: np.ndarray,
    landmarks: np.ndarray,
    labels: np.ndarray,
    size: int | None = None,
    mean=BGR_MEAN,
    uint8: bool = False,
):
    """No augmentation. ``size=None`` keeps the original size (the reference's ``origin_size``
    evaluation); an int resizes so the long side is ``size`` (bilinear) and pads bottom/right to a
    ``size`` square with the mean colour (0 after subtraction). Boxes and landmarks are normalised
    by the output canvas. Returns ``image, boxes, landmarks, labels, scale`` where
    ``original_pixels = canvas_pixels / scale``. ``uint8=True``: ``image`` is uint8 CHW (the
    float32 minus-mean conversion left to the device, bit-identical).
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
    out = to_chw(image) if uint8 else to_chw_minus_mean(image, mean)
    h, w = image.shape[:2]
    boxes_n, landm_n = _normalise(boxes, landmarks, labels, w, h)
    return out, boxes_n, landm_n, labels, scale
