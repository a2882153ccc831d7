"""The fast training pipeline (draws first, uint8 lookup tables, flip after the distortion, one
float32 CHW output, reduced decoding) against (a) the step-by-step float64 formulation it
replaced, value for value, and (b) the port of the reference's pipeline
(tests/retinaface_data/augment_reference.py), in distribution over seeded samples."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
from scipy.stats import ks_2samp

from src.data import face_transforms as ft
from src.data import widerface as wf
from src.data.synthetic_faces import ensure_synthetic_faces
from tests.retinaface_data import augment_reference as AR


def slow_distort(image, rng):
    """The float64 ``_convert`` formulation (reference arithmetic) with our generator's draws."""
    image = image.copy()

    def brightness():
        if rng.integers(2):
            ft._convert(image, beta=rng.uniform(-32, 32))

    def contrast(img):
        if rng.integers(2):
            ft._convert(img, alpha=rng.uniform(0.5, 1.5))

    def saturation_hue(img):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        if rng.integers(2):
            ft._convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
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


def slow_train_transform(image, boxes, landmarks, labels, img_dim, rng):
    """The pipeline as it was: crop, float64 distortion, pad, mirror (negative-stride view),
    resize, float HWC minus mean, transpose copy."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    landmarks = np.asarray(landmarks, np.float64).reshape(-1, 10)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    img, b, lab, lm, pad = ft.random_square_crop(image, boxes, labels, landmarks, img_dim, rng)
    img = slow_distort(img, rng)
    if pad:
        img = ft.pad_to_square(img)
    img, b, lm = ft.mirror(img, b, lm, lab, rng)
    h, w = img.shape[:2]
    interp = ft.INTERPOLATIONS[int(rng.integers(len(ft.INTERPOLATIONS)))]
    out = cv2.resize(np.ascontiguousarray(img), (img_dim, img_dim), interpolation=interp)
    out = np.ascontiguousarray(
        (out.astype(np.float32) - np.asarray(ft.BGR_MEAN, np.float32)).transpose(2, 0, 1)
    )
    b, lm = ft._normalise(b, lm, lab, w, h)
    return out, b, lm, lab


def random_image(seed, h=90, w=120):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_lookup_table_distortion_equals_float64_arithmetic():
    # every combination of steps appears among 200 seeds; a crop view as input too
    image = random_image(0)
    seen = set()
    for seed in range(200):
        plan = ft.draw_distort(np.random.default_rng(seed))
        seen.add(tuple(v is None for v in plan[1:]) + (plan[0],))
        for img in (image, image[5:80, 7:100]):
            fast = ft.distort(img, np.random.default_rng(seed))
            slow = slow_distort(img, np.random.default_rng(seed))
            assert fast.flags["C_CONTIGUOUS"]
            np.testing.assert_array_equal(fast, slow)
    assert len(seen) == 32


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_equals_the_step_by_step_pipeline(seed):
    image = random_image(seed, 110, 150)
    boxes = np.array([[10.0, 12, 40, 50], [60, 20, 100, 70], [120, 60, 145, 100]])
    landmarks = np.tile(boxes[:, :2], 5) + 3
    labels = np.array([1, -1, 1])
    if seed == 11:  # no face: the crop fails, the image is padded
        boxes, landmarks, labels = boxes[:0], landmarks[:0], labels[:0]
    a = ft.train_transform(image, boxes, landmarks, labels, 64, np.random.default_rng(seed))
    b = slow_train_transform(image, boxes, landmarks, labels, 64, np.random.default_rng(seed))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].dtype == np.float32 and a[0].flags["C_CONTIGUOUS"]


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    ensure_synthetic_faces(root, 3, 40, 2, 384)
    return root


def dataset(root, img_dim, **kw):
    recs = wf.parse_retinaface_labels(root / "train" / "label.txt")
    return wf.WiderFaceDataset(recs, root / "train" / "images", img_dim, **kw)


def test_dataset_exact_path_equals_train_transform(faces_root):
    ds = dataset(faces_root, 64, reduced_decode=False)
    for i in range(8):
        rec = ds.records[i]
        img = cv2.imread(str(ds.images_dir / rec.path))
        boxes, lms, labels = ds._clip(rec, *img.shape[:2])
        want = ft.train_transform(img, boxes, lms, labels, 64, np.random.default_rng(i))
        got = ds.load(i, np.random.default_rng(i))
        np.testing.assert_array_equal(got["image"].numpy(), want[0])
        np.testing.assert_array_equal(got["boxes"].numpy(), want[1])
        np.testing.assert_array_equal(got["landmarks"].numpy(), want[2])


def test_reduced_decode_same_draws_and_targets_close_pixels(faces_root):
    # 384 px files to 64: crops of 115..384 px are shrunk 2x or more; the samples drawn with
    # INTER_AREA are decoded at 1/2 or 1/4, the others in full (pixel-exact); draws and
    # targets never change
    exact, fast = dataset(faces_root, 64, reduced_decode=False), dataset(faces_root, 64)
    reduced = 0
    for i in range(len(exact)):
        ra, rb = np.random.default_rng(i), np.random.default_rng(i)
        a, b = exact.load(i, ra), fast.load(i, rb)
        assert ra.bit_generator.state == rb.bit_generator.state
        for k in ("boxes", "landmarks", "labels"):
            np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
        diff = np.abs(a["image"].numpy() - b["image"].numpy())
        plan = ft.draw_train_plan(
            *exact.file_size(i),
            *exact._clip(exact.records[i], *exact.file_size(i)),
            64,
            np.random.default_rng(i),
        )
        if plan.decode_reduction(64) == 1:
            assert diff.max() == 0
        else:
            reduced += 1
            # area averages of nearly the same pixels, up to half a reduced pixel apart (noisy
            # drawn backgrounds: a mean difference of 2-3 of 255), no bias
            assert diff.mean() < 4.0, (i, diff.mean())
            assert abs(float(a["image"].mean() - b["image"].mean())) < 0.5
    assert reduced >= 3


def test_header_size_wrong_falls_back_with_the_same_draws(faces_root):
    ds, exact = dataset(faces_root, 64), dataset(faces_root, 64, reduced_decode=False)
    ds._sizes[0] = (1000, 1200)  # as if the header had lied (an EXIF turn)
    a, b = ds.load(0, np.random.default_rng(7)), exact.load(0, np.random.default_rng(7))
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    np.testing.assert_array_equal(a["boxes"].numpy(), b["boxes"].numpy())
    assert ds._sizes[0] == b["orig_size"]


def test_cv2_threads_set_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(wf.cv2, "setNumThreads", calls.append)
    monkeypatch.setattr(wf, "_CV2_THREADS_SET", {})
    wf.set_cv2_threads(1)
    wf.set_cv2_threads(1)
    wf.set_cv2_threads(None)
    assert calls == [1]


def sample_stats(images, targets):
    """Per sample: mean pixel (BGR + mean), face count, box widths, flip-sensitive and
    crop-scale-sensitive statistics (box centre x, box area)."""
    mean = np.array([np.asarray(img, np.float64).mean() for img in images])
    count = np.array([len(t) for t in targets])
    t = np.concatenate(targets)
    width, height = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
    return {
        "mean_pixel": mean,
        "faces": count,
        "box_width": width,
        "box_area": width * height,
        "box_cx": (t[:, 0] + t[:, 2]) / 2,
        "left_eye_minus_right": (t[:, 4] - t[:, 6])[t[:, 14] > 0],
    }


def reference_samples(root, n, img_dim, scales=None):
    ref = AR.WiderFaceDetection(
        root / "train" / "label.txt",
        root / "train" / "images",
        AR.Preproc(img_dim, rnd=random.Random(0)),
    )
    old = list(AR.PRE_SCALES)
    if scales is not None:
        AR.PRE_SCALES[:] = scales
    try:
        idx = [i for i in range(len(ref)) if len(ref.words[i])]
        images, targets = [], []
        for k in range(n):
            img, t = ref[idx[k % len(idx)]]
            images.append(img.numpy())
            targets.append(t)
    finally:
        AR.PRE_SCALES[:] = old
    return images, targets


def our_samples(root, n, img_dim):
    ds = dataset(root, img_dim, landmark_policy="clamp")
    idx = [i for i, r in enumerate(ds.records) if len(r.boxes)]
    rng = np.random.default_rng(0)
    images, targets = [], []
    for k in range(n):
        s = ds.load(idx[k % len(idx)], rng)
        images.append(s["image"].numpy())
        t = np.c_[s["boxes"].numpy(), s["landmarks"].numpy(), s["labels"].numpy()[:, None]]
        targets.append(t)
    return images, targets


def test_same_augmentation_distribution_as_the_reference(faces_root):
    # 600 seeded samples each (15 passes over 40 images): two-sample KS tests per statistic;
    # the same tests tell a pipeline with other crop scales apart (the check has power)
    n, dim = 600, 64
    ours = sample_stats(*our_samples(faces_root, n, dim))
    ref = sample_stats(*reference_samples(faces_root, n, dim))
    for key in ours:
        p = ks_2samp(ours[key], ref[key]).pvalue
        assert p > 1e-3, (key, p)
    assert abs(ours["mean_pixel"].mean() - ref["mean_pixel"].mean()) < 2.0
    other = sample_stats(*reference_samples(faces_root, n, dim, scales=[1.0]))
    assert ks_2samp(ours["box_area"], other["box_area"]).pvalue < 1e-3
