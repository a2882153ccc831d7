"""The uint8 path of WIDER FACE (``uint8_images``): uint8 BGR samples and batches, the mean
subtracted on the device, bit-identical to the float path on seeded train and eval samples,
padding included, and through the Task (training, evaluation, pictures, predict)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from src.data import face_transforms as ft
from src.data import widerface as wf
from src.data.synthetic_faces import ensure_synthetic_faces
from src.losses.multibox import MultiBoxLoss
from src.models.retinaface import RetinaFace
from src.tasks.retinaface import RetinaFaceTask


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces_u8")
    ensure_synthetic_faces(root, 5, 24, 8, 256)
    return root


def train_pair(root, img_dim, **kw):
    recs = wf.parse_retinaface_labels(root / "train" / "label.txt")
    images = root / "train" / "images"
    return (
        wf.WiderFaceDataset(recs, images, img_dim, **kw),
        wf.WiderFaceDataset(recs, images, img_dim, uint8_images=True, **kw),
    )


def val_pair(root, eval_size=None):
    recs = wf.parse_wider_val_gt(root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    images = root / "val" / "images"
    return (
        wf.WiderFaceDataset(recs, images, eval_size=eval_size),
        wf.WiderFaceDataset(recs, images, eval_size=eval_size, uint8_images=True),
    )


def assert_same_sample(f, u):
    assert f["image"].dtype == torch.float32 and u["image"].dtype == torch.uint8
    assert u["image"].is_contiguous() and u["image"].shape == f["image"].shape
    assert torch.equal(wf.subtract_mean(u["image"]), f["image"])  # bit for bit
    for k in ("boxes", "landmarks", "labels"):
        assert torch.equal(f[k], u[k]), k
    for k in ("path", "orig_size"):
        assert f[k] == u[k]
    assert f["scale"] == u["scale"] or (np.isnan(f["scale"]) and np.isnan(u["scale"]))


@pytest.mark.parametrize("reduced_decode", [True, False])
def test_train_samples_bit_identical(faces_root, reduced_decode):
    fl, u8 = train_pair(faces_root, 96, reduced_decode=reduced_decode)
    for i in range(len(fl)):
        for epoch in range(3):
            ra, rb = np.random.default_rng([11, epoch, i]), np.random.default_rng([11, epoch, i])
            assert_same_sample(fl.load(i, ra), u8.load(i, rb))
            assert ra.bit_generator.state == rb.bit_generator.state  # the same draws


@pytest.mark.parametrize("eval_size", [None, 160])
def test_eval_samples_bit_identical(faces_root, eval_size):
    fl, u8 = val_pair(faces_root, eval_size)
    for i in range(len(fl)):
        assert_same_sample(fl.load(i, None), u8.load(i, None))


def test_eval_padding_is_the_mean_colour(faces_root):
    _, u8 = val_pair(faces_root, 300)  # long side to 300, padded to a 300 square
    mean = torch.tensor([104, 117, 123], dtype=torch.uint8).view(3, 1, 1)
    padded = 0
    for i in range(len(u8)):
        s = u8.load(i, None)
        h, w = (max(1, round(v * s["scale"])) for v in s["orig_size"])
        for pad in (s["image"][:, h:, :], s["image"][:, :, w:]):
            assert (pad == mean).all()
            assert (wf.subtract_mean(pad) == 0).all()
            padded += pad.numel()
    assert padded > 0


def test_transforms_uint8_equals_float_output():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 40, 60], [70, 10, 120, 80]], np.float64)
    landmarks = np.tile(np.array([[20, 30, 30, 30, 25, 40, 20, 50, 30, 50]], np.float64), (2, 1))
    landmarks[1] += [60, -10] * 5
    labels = np.array([1, 1])
    for seed in range(20):
        f = ft.train_transform(image, boxes, landmarks, labels, 64, np.random.default_rng(seed))
        u = ft.train_transform(
            image, boxes, landmarks, labels, 64, np.random.default_rng(seed), uint8=True
        )
        assert u[0].dtype == np.uint8 and u[0].flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(
            u[0].astype(np.float32) - np.float32([104, 117, 123])[:, None, None], f[0]
        )
        for a, b in zip(f[1:], u[1:]):
            np.testing.assert_array_equal(a, b)
    for size in (None, 100, 200):
        f = ft.eval_transform(image, boxes, landmarks, labels, size)
        u = ft.eval_transform(image, boxes, landmarks, labels, size, uint8=True)
        assert torch.equal(wf.subtract_mean(torch.from_numpy(u[0])), torch.from_numpy(f[0]))
        for a, b in zip(f[1:4], u[1:4]):
            np.testing.assert_array_equal(a, b)
        assert f[4] == u[4]


def _write(root, sizes):
    (root / "images" / "e").mkdir(parents=True)
    lines = []
    for k, (h, w) in enumerate(sizes):
        img = np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / "e" / f"{k}.png"), img)
        lines += [f"# e/{k}.png", "2 3 10 12 4 5 0 8 5 0 6 7 0 4 10 0 8 10 0 0.9"]
    (root / "label.txt").write_text("\n".join(lines) + "\n")
    return wf.parse_retinaface_labels(root / "label.txt")


def test_collate_of_different_sizes_bit_identical(tmp_path):
    # evaluation at the original size: images of several sizes, padded bottom/right
    recs = _write(tmp_path, [(30, 50), (44, 20), (17, 61)])
    fl = wf.WiderFaceDataset(recs, tmp_path / "images")
    u8 = wf.WiderFaceDataset(recs, tmp_path / "images", uint8_images=True)
    bf = wf.collate_faces([fl.load(i, None) for i in range(3)])
    bu = wf.collate_faces([u8.load(i, None) for i in range(3)])
    assert bu["image"].dtype == torch.uint8 and bu["image"].shape == (3, 3, 44, 61)
    assert torch.equal(wf.subtract_mean(bu["image"]), bf["image"])  # padding exactly 0 too
    assert (bf["image"][0, :, 30:] == 0).all() and (bf["image"][1, :, :, 20:] == 0).all()
    for k in ("boxes", "landmarks", "labels", "num_faces", "orig_size"):
        assert torch.equal(bf[k], bu[k]), k
    # training crops (one size): no fill needed, the same bytes
    fl_t = wf.WiderFaceDataset(recs, tmp_path / "images", 32)
    u8_t = wf.WiderFaceDataset(recs, tmp_path / "images", 32, uint8_images=True)
    rngs = [np.random.default_rng([5, i]) for i in range(6)] + [
        np.random.default_rng([5, i]) for i in range(6)
    ]
    bf = wf.collate_faces([fl_t.load(i % 3, rngs[i]) for i in range(6)])
    bu = wf.collate_faces([u8_t.load(i % 3, rngs[6 + i]) for i in range(6)])
    assert torch.equal(wf.subtract_mean(bu["image"]), bf["image"])


def test_uint8_needs_an_integer_mean(tmp_path):
    recs = _write(tmp_path, [(20, 20)])
    with pytest.raises(ValueError, match="uint8_images=true needs a mean of integers"):
        wf.WiderFaceDataset(recs, tmp_path / "images", mean=(104.5, 117, 123), uint8_images=True)
    wf.WiderFaceDataset(recs, tmp_path / "images", mean=(104.5, 117, 123))  # float path: fine


def test_splits_default_to_uint8(faces_root):
    data = wf.widerface_splits(faces_root, image_size=64)
    assert data["train"].uint8_images and data["val"].uint8_images
    assert data["train"].load(0, np.random.default_rng(0))["image"].dtype == torch.uint8
    data = wf.widerface_splits(faces_root, image_size=64, uint8_images=False)
    assert data["val"].load(0, None)["image"].dtype == torch.float32


def _task(data):
    torch.manual_seed(0)
    net = RetinaFace(backbone="mobilenet0.25", pretrained=False)
    return RetinaFaceTask(net, MultiBoxLoss(), data, confidence_threshold=0.0, vis_threshold=0.0)


def test_task_same_results_from_uint8_and_float_batches(faces_root, tmp_path):
    fl = wf.widerface_splits(faces_root, image_size=64, uint8_images=False)
    u8 = wf.widerface_splits(faces_root, image_size=64)
    tf, tu = _task(fl), _task(u8)
    tu.load_state_dict(tf.state_dict())
    # training: the engine calls on_train_batch_start (normalise), then training_step
    bf = tf.collate([fl["train"].load(i, np.random.default_rng([3, i])) for i in range(4)])
    bu = tu.collate([u8["train"].load(i, np.random.default_rng([3, i])) for i in range(4)])
    assert bu["image"].dtype == torch.uint8
    nb = tu.on_train_batch_start(bu, 0)
    assert torch.equal(nb["image"], bf["image"])
    assert bu["image"].dtype == torch.uint8  # the input batch is left as it was
    tf.train(), tu.train()
    out_f, out_u = tf.training_step(bf, None), tu.training_step(bu, None)  # direct: uint8 too
    for k in out_f:
        assert torch.equal(out_f[k], out_u[k]), k
    # evaluation (WIDER FACE protocol), pictures, predictions on files
    tf.eval(), tu.eval()
    with torch.no_grad():

        def batches(task, data):
            val = data["val"]
            n = len(val)
            rows = [range(j, min(j + 3, n)) for j in range(0, n, 3)]
            return [task.collate([val.load(i, None) for i in r]) for r in rows]

        assert tf.evaluate(batches(tf, fl)) == tu.evaluate(batches(tu, u8))
        vf = tf.visualize(batches(tf, fl)[0])["detections"]
        vu = tu.visualize(batches(tu, u8)[0])["detections"]
        for a, b in zip(vf, vu):
            np.testing.assert_array_equal(a.image, b.image)
            assert torch.equal(a.predictions["boxes"], b.predictions["boxes"])
        paths = [fl["val"].images_dir / r.path for r in fl["val"].records[:2]]
        pf, pu = tf.predict(paths, tmp_path / "f"), tu.predict(paths, tmp_path / "u")
    assert [p["detections"] for p in pf] == [p["detections"] for p in pu]


def test_normalise_keeps_channels_last_and_float_batches():
    task = RetinaFaceTask.__new__(RetinaFaceTask)
    torch.nn.Module.__init__(task)
    task.mean = ft.BGR_MEAN
    u = torch.randint(0, 256, (2, 3, 8, 9), dtype=torch.uint8)
    want = u.float() - torch.tensor(ft.BGR_MEAN).view(3, 1, 1)
    got = task.normalise({"image": u.contiguous(memory_format=torch.channels_last)})["image"]
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
    batch = {"image": want}
    assert task.normalise(batch) is batch  # the float path: untouched
