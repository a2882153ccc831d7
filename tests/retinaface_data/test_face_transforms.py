"""Landmark-safe augmentation: worked examples with scripted draws; properties on drawn faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.data import face_transforms as ft
from src.data.synthetic_faces import make_image


class Scripted:
    """Stands in for a numpy Generator: ``integers`` returns scripted values in order."""

    def __init__(self, ints, uniforms=()):
        self.ints, self.uniforms = list(ints), list(uniforms)

    def integers(self, low, high=None, size=None, dtype=None):
        hi = low if high is None else high
        lo = 0 if high is None else low
        v = self.ints.pop(0)
        assert lo <= v < hi, (v, lo, hi)
        return v

    def uniform(self, low, high):
        return self.uniforms.pop(0)


# face A: fully inside every crop below; face B: centre at x=195, cut by the crop's right edge
BOXES = np.array([[120.0, 20, 160, 70], [180, 40, 210, 80]])
LANDMARKS = np.array(
    [
        [130, 40, 150, 40, 140, 52, 132, 62, 148, 62],
        [186, 55, 204, 55, 195, 64, 188, 72, 202, 72],  # eye at x=186 inside, right eye 204 outside
    ]
)
LABELS = np.array([1, 1])


def _crop(policy, ints):
    image = np.zeros((100, 220, 3), np.uint8)
    return ft.random_square_crop(
        image, BOXES, LABELS, LANDMARKS, 64, Scripted(ints), landmark_policy=policy
    )


def test_crop_worked_example_drop_policy():
    # scale index 4 (1.0): side = short side = 100; left = 100 (of 120 choices); top fixed at 0
    img, boxes, labels, landm, pad = _crop("drop", [4, 100])
    assert not pad and img.shape == (100, 100, 3)
    # roi (100, 0, 200, 100): B's centre (195, 60) is inside, B is clipped to the crop
    np.testing.assert_array_equal(boxes, [[20, 20, 60, 70], [80, 40, 100, 80]])
    np.testing.assert_array_equal(landm[0], LANDMARKS[0] - np.tile([100, 0], 5))
    # B's right eye (204) left the crop: B keeps its box but loses its landmarks
    np.testing.assert_array_equal(labels, [1, -1])
    assert (landm[1] == -1).all()


def test_crop_reference_clamp_policy():
    _, _, labels, landm, _ = _crop("clamp", [4, 100])
    np.testing.assert_array_equal(labels, [1, 1])
    np.testing.assert_array_equal(landm[1], [86, 55, 100, 55, 95, 64, 88, 72, 100, 72])
    _, _, labels, landm, _ = _crop("keep", [4, 100])
    np.testing.assert_array_equal(landm[1], LANDMARKS[1] - np.tile([100, 0], 5))


def test_crop_rejects_tries_without_a_whole_face_and_keeps_centres_only():
    # try 1: scale .3 -> side 30 at (0, 0): no face inside -> rejected.
    # try 2: side 60 (scale .6) at (110, 15): A (120..160, 20..70) is whole inside; B's centre
    # (195, 60) is outside (roi x < 170) -> only A kept
    img, boxes, labels, landm, pad = _crop("drop", [0, 0, 0, 2, 110, 15])
    assert not pad and img.shape == (60, 60, 3)
    np.testing.assert_array_equal(boxes, [[10, 5, 50, 55]])
    np.testing.assert_array_equal(labels, [1])


def test_crop_failing_every_try_pads_to_square():
    image = np.zeros((100, 220, 3), np.uint8)
    boxes = np.array([[10.0, 10, 200, 90]])  # wider than any square crop: every try fails
    rng = np.random.default_rng(0)
    img, b, lab, lm, pad = ft.random_square_crop(image, boxes, LABELS[:1], LANDMARKS[:1], 64, rng)
    assert pad and img is image and b is boxes
    sq = ft.pad_to_square(img)
    assert sq.shape == (220, 220, 3) and (sq[100:] == [104, 117, 123]).all()


def test_mirror_swaps_left_and_right():
    image = np.zeros((10, 100, 3), np.uint8)
    boxes = np.array([[10.0, 0, 30, 8]])
    lm = np.array([[12.0, 2, 28, 2, 20, 4, 14, 6, 26, 6]])
    img, b, m = ft.mirror(image, boxes, lm, np.array([1]), Scripted([1]))
    np.testing.assert_array_equal(b, [[70, 0, 90, 8]])
    # x -> 100 - x, then left/right eye and left/right mouth corner swap places
    np.testing.assert_array_equal(m, [[72, 2, 88, 2, 80, 4, 74, 6, 86, 6]])
    _, b2, m2 = ft.mirror(image, boxes, lm, np.array([1]), Scripted([0]))
    assert b2 is boxes and m2 is lm
    # a face without landmarks keeps its -1 row
    _, _, m3 = ft.mirror(image, boxes, -np.ones((1, 10)), np.array([-1]), Scripted([1]))
    assert (m3 == -1).all()


def test_full_pipeline_worked_example():
    image = np.full((100, 220, 3), 128, np.uint8)
    # crop (scale 1.0, left 100) | distort: branch 0, no brightness, no sat, no hue, no contrast |
    # mirror | interpolation index 3 (nearest)
    rng = Scripted([4, 100, 0, 0, 0, 0, 0, 1, 3])
    out, boxes, landm, labels = ft.train_transform(image, BOXES, LANDMARKS, LABELS, 50, rng)
    assert out.shape == (3, 50, 50) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 0], [24, 11, 5])  # 128 - mean
    # crop -> A (20, 20, 60, 70); mirror in a 100 wide crop -> (40, 20, 80, 70); / 100
    np.testing.assert_allclose(boxes[0], [0.4, 0.2, 0.8, 0.7])
    # A's right eye (150 - 100 = 50 -> mirrored 50) becomes the left eye; left eye 30 -> 70
    np.testing.assert_allclose(landm[0], np.array([50, 40, 70, 40, 60, 52, 52, 62, 68, 62]) / 100)
    np.testing.assert_array_equal(labels, [1, -1])
    assert (landm[1] == -1).all()


def _grey(img_chw, x, y):
    img = (img_chw.transpose(1, 2, 0) + np.array(ft.BGR_MEAN)).clip(0, 255).astype(np.uint8)
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(float)
    xi, yi = int(np.clip(x, 1, g.shape[1] - 2)), int(np.clip(y, 1, g.shape[0] - 2))
    return g[yi - 1 : yi + 2, xi - 1 : xi + 2].mean()


@pytest.mark.parametrize("seed", range(12))
def test_landmarks_stay_on_drawn_faces(seed):
    """Crop + distort + mirror + resize on drawn faces: every kept landmark is inside its box,
    left features stay left, and the eye landmarks sit on the dark eyes."""
    img, xywh, lms, _ = make_image(seed, 5, seed, 320)
    boxes = np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]].astype(float)
    labels = np.ones(len(boxes), np.int64)
    size = 160
    checked = 0
    for k in range(6):
        rng = np.random.default_rng([seed, k])
        out, b, lm, lab = ft.train_transform(img, boxes, lms.reshape(-1, 10), labels, size, rng)
        assert ((b >= 0) & (b <= 1)).all()
        for box, pts, la in zip(b * size, lm.reshape(-1, 5, 2) * size, lab):
            if la < 0:
                assert (pts == -size).all()
                continue
            assert (pts[:, 0] >= box[0] - 1e-3).all() and (pts[:, 0] <= box[2] + 1e-3).all()
            assert (pts[:, 1] >= box[1] - 1e-3).all() and (pts[:, 1] <= box[3] + 1e-3).all()
            assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # left is left after mirror
            w, h = box[2] - box[0], box[3] - box[1]
            if w >= 24 and 1.05 <= h / w <= 1.4:  # an uncut face with eyes several px wide
                skin = _grey(out, (box[0] + box[2]) / 2, box[1] + 0.25 * (box[3] - box[1]))
                for e in pts[:2]:
                    assert _grey(out, *e) < skin - 10
                checked += 1
    if len(boxes):
        assert checked > 0 or all(x[2] < 24 for x in xywh)


def test_distort_uses_only_the_generator():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a = ft.distort(img, np.random.default_rng(5))
    b = ft.distort(img, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    ft.distort(img, np.random.default_rng(6))
    assert np.array_equal(
        img, np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    )


def test_min_face_size_filter():
    image = np.zeros((100, 220, 3), np.uint8)
    # side 100 crop -> training size 64: A is 41 px wide * .64 = 26 px, B is 21 * .64 = 13 px
    out = ft.random_square_crop(
        image, BOXES, LABELS, LANDMARKS, 64, Scripted([4, 100]), min_face_size=16
    )
    np.testing.assert_array_equal(out[1], [[20, 20, 60, 70]])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from(ft.LANDMARK_POLICIES))
def test_crop_invariants(seed, n, policy):
    """Kept faces have their centre strictly inside the crop; boxes lie in the crop; a face not
    cut by the crop keeps its exact landmark offsets; the policy decides the rest."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(40, 120)), int(rng.integers(40, 120))
    xy = rng.uniform(0, [width - 6, height - 6], (n, 2))
    wh = rng.uniform(4, 40, (n, 2))
    boxes = np.c_[xy, np.minimum(xy + wh, [width, height])]
    size = boxes[:, None, 2:] - boxes[:, None, :2]
    lm = boxes[:, None, :2] + rng.uniform(0, 1, (n, 5, 2)) * size
    lm = lm.reshape(n, 10)
    labels = np.where(rng.random(n) < 0.7, 1, -1)
    lm[labels < 0] = -1
    image = np.zeros((height, width, 3), np.uint8)
    img, b, lab, m, pad = ft.random_square_crop(
        image, boxes, labels, lm, 64, rng, landmark_policy=policy
    )
    if pad:
        return
    side = img.shape[0]
    assert img.shape[1] == side and len(b) >= 1
    assert ((b >= 0) & (b <= side)).all() and (b[:, 2:] >= b[:, :2]).all()
    pts = m.reshape(-1, 5, 2)
    assert (pts[lab < 0] == -1).all()
    inside = ((pts >= 0) & (pts <= side)).all(axis=(1, 2))
    if policy in ("drop", "clamp"):
        assert inside[lab > 0].all()
    # match kept faces back to the originals by size (crop only translates uncut boxes)
    for bb, pp, la in zip(b, pts, lab):
        same = np.flatnonzero(np.isclose(boxes[:, 2:] - boxes[:, :2], bb[2:] - bb[:2]).all(1))
        if la > 0 and len(same) == 1 and labels[same[0]] > 0:
            k = same[0]
            np.testing.assert_allclose(pp - bb[:2], lm[k].reshape(5, 2) - boxes[k, :2], atol=1e-9)
