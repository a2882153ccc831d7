"""CUB-200-2011 reader on a tiny hand-written tree, its transforms, and each bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.base import DataError
from src.data.cub import CUB_FILES, CUBDataset, build_cub, read_cub
from src.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationTransform,
    normalize_batch,
)


def finished(sample):
    """The network input of a sample: uint8 samples (``uint8_images``, the default) are
    finished on the device by the Task (``normalize_batch``), float ones already are."""
    jitter = sample.get("jitter")
    return normalize_batch(sample["image"][None], None if jitter is None else jitter[None])[0]


def write_tree(root, gray_second=True):
    """3 images, 2 classes (ids 1-based); image 2 is grayscale; images 1, 3 train."""
    (root / "images" / "001.Red_bird").mkdir(parents=True)
    (root / "images" / "002.Gray_bird").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "images/001.Red_bird/a.jpg", quality=100)
    mode = "L" if gray_second else "RGB"
    Image.new(mode, (20, 20), 128).save(root / "images/002.Gray_bird/b.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(root / "images/001.Red_bird/c.png")
    (root / "images.txt").write_text(
        "1 001.Red_bird/a.jpg\n2 002.Gray_bird/b.png\n3 001.Red_bird/c.png\n"
    )
    (root / "image_class_labels.txt").write_text("1 1\n2 2\n3 1\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    (root / "classes.txt").write_text("1 001.Red_bird\n2 002.Gray_bird\n")
    (root / "bounding_boxes.txt").write_text("1 1.0 2.0 30.0 20.0\n2 0 0 20 20\n3 5 5 10 10\n")
    return root


@pytest.fixture
def cub(tmp_path):
    return write_tree(tmp_path / "CUB_200_2011")


def test_reader_parses_official_layout(cub):
    meta = read_cub(cub)
    assert meta.image_ids == [1, 2, 3]
    assert meta.labels.tolist() == [0, 1, 0]
    assert meta.is_train.tolist() == [True, False, True]
    assert meta.class_names == ["001.Red_bird", "002.Gray_bird"]
    np.testing.assert_allclose(meta.boxes[0], [1, 2, 30, 20])
    data = build_cub(cub, image_size=8, num_classes=2)
    assert len(data["train"]) == 2 and len(data["val"]) == 1
    assert data["train"].class_names == ["Red bird", "Gray bird"]


def test_samples_and_grayscale_to_rgb(cub):
    data = build_cub(cub, image_size=8)
    sample = data["val"].load(0, None)
    assert set(sample) == {"image", "label", "index"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 8, 8)
    sample["image"] = finished(sample)
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 8, 8)
    assert sample["label"].dtype == torch.int64 and sample["label"].item() == 1
    # grey 128 in all three channels after conversion, ImageNet-normalised
    want = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    np.testing.assert_allclose(sample["image"].mean(dim=(1, 2)).numpy(), want, atol=1e-5)
    red = finished(data["train"].load(0, None))
    want_red = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1]]
    np.testing.assert_allclose(red[:2, 4, 4].numpy(), want_red, atol=0.03)  # jpeg


def test_train_transform_uses_only_the_given_rng(cub):
    ds = build_cub(cub, image_size=16)["train"]
    a = finished(ds.load(1, np.random.default_rng([7, 0, 1])))
    np.random.seed(0)
    torch.manual_seed(0)
    b = finished(ds.load(1, np.random.default_rng([7, 0, 1])))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    differ = [finished(ds.load(1, np.random.default_rng([7, e, 1]))) for e in range(1, 6)]
    assert any(not torch.equal(a, d) for d in differ)
    torch.testing.assert_close(ds.load(1, None)["image"], ds[1]["image"])


def test_transform_hand_worked_crop_and_flip():
    # 8x8 image whose pixel (y, x) is red = 10 * x; size 7 -> resize to int(7 / .875) = 8
    # (identity), eval = centre crop at round(0.5) = 0 -> columns 0..6.
    array = np.zeros((8, 8, 3), np.uint8)
    array[..., 0] = (np.arange(8) * 10)[None, :]
    image = Image.fromarray(array)
    t = ClassificationTransform(7, brightness=0, saturation=0, hflip=1.0)
    red = lambda out: out[0, 0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # noqa: E731
    np.testing.assert_allclose(red(t(image, None)) * 255, np.arange(7) * 10, atol=1e-3)
    # with an rng: crop offset drawn from it, then a flip (p=1)
    oracle = np.random.default_rng(3)
    _top, left = oracle.integers(0, 2), oracle.integers(0, 2)  # same draws, same order
    out = red(t(image, np.random.default_rng(3))) * 255
    np.testing.assert_allclose(out, (np.arange(7) * 10 + 10 * left)[::-1], atol=1e-3)


def test_missing_root_names_path_and_synthetic(tmp_path):
    with pytest.raises(DataError) as err:
        build_cub(tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "dataset=synthetic_cub" in msg and "CUB_200_2011.tgz" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", CUB_FILES)
def test_each_missing_file_is_named(cub, name):
    (cub / name).unlink()
    with pytest.raises(DataError, match=name) as err:
        read_cub(cub)
    assert "dataset=synthetic_cub" in str(err.value)


def test_missing_images_dir(cub):
    import shutil

    shutil.rmtree(cub / "images")
    with pytest.raises(DataError, match="images"):
        read_cub(cub)


def test_corrupt_image_names_the_file(cub):
    (cub / "images/001.Red_bird/c.png").write_bytes(b"not a png at all")
    ds = build_cub(cub, image_size=8)["train"]
    with pytest.raises(DataError, match="c.png"):
        ds.load(1, None)
    (cub / "images/001.Red_bird/a.jpg").unlink()
    with pytest.raises(DataError, match="a.jpg"):
        ds.load(0, None)


@pytest.mark.parametrize(
    "name, text, pattern",
    [
        ("image_class_labels.txt", "1 1\n2 3\n3 1\n", "class 3, outside 1..2"),
        ("image_class_labels.txt", "1 1\n3 1\n", "no row for image id 2"),
        ("train_test_split.txt", "1 1\n2 2\n3 1\n", "expected 1 \\(train\\) or 0"),
        ("images.txt", "1 001.Red_bird/a.jpg\nx y\n", "line 2"),
        ("bounding_boxes.txt", "1 1 2 3\n2 0 0 1 1\n3 0 0 1 1\n", "line 1"),
        ("classes.txt", "1 001.Red_bird\n3 002.Gray_bird\n", "1..N"),
    ],
)
def test_bad_metadata_messages(cub, name, text, pattern):
    (cub / name).write_text(text)
    with pytest.raises(DataError, match=pattern) as err:
        read_cub(cub)
    assert name in str(err.value)


def test_num_classes_mismatch(cub):
    with pytest.raises(DataError, match="num_classes=200"):
        build_cub(cub, num_classes=200)


def test_dataset_split_argument(cub):
    assert len(CUBDataset(cub, "test", 8)) == 1
    with pytest.raises(ValueError, match="split"):
        CUBDataset(cub, "holdout", 8)
