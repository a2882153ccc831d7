"""synthetic_cub: deterministic by seed, written in the CUB layout, created once."""

import json

import pytest

from src.data.base import DataError
from src.data.cub import CUB_FILES, read_cub
from src.data.synthetic_cub import MARKER, build_synthetic_cub, class_table, ensure_synthetic_cub

SMALL = dict(num_classes=4, train_per_class=2, test_per_class=1, source_size=48)


def snapshot(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = ensure_synthetic_cub(tmp_path / "a", seed=3, **SMALL)
    b = ensure_synthetic_cub(tmp_path / "b", seed=3, **SMALL)
    c = ensure_synthetic_cub(tmp_path / "c", seed=4, **SMALL)
    sa, sb, sc = snapshot(a), snapshot(b), snapshot(c)
    assert sa == sb
    jpgs = [k for k in sa if k.endswith(".jpg")]
    assert len(jpgs) == 12
    assert any(sa[k] != sc[k] for k in jpgs)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_written_in_cub_layout_and_read_back(tmp_path):
    root = ensure_synthetic_cub(tmp_path / "s", seed=0, **SMALL)
    for name in CUB_FILES:
        assert (root / name).is_file()
    meta = read_cub(root)
    assert len(meta.image_ids) == 12
    assert meta.class_names == [f"{k + 1:03d}.{c}_{s}" for k, (c, s) in enumerate(class_table(4))]
    assert meta.is_train.sum() == 8
    assert sorted(meta.labels.tolist()) == sorted([0, 1, 2, 3] * 3)
    boxes = meta.boxes
    assert (boxes[:, 2] > 0).all() and (boxes[:, 0] + boxes[:, 2] <= 48 + 1e-3).all()
    data = build_synthetic_cub(root, image_size=32, seed=0, **SMALL)
    assert len(data["train"]) == 8 and len(data["val"]) == 4
    assert data["train"].load(0, None)["image"].shape == (3, 32, 32)


def test_idempotent_and_parameter_mismatch(tmp_path):
    root = ensure_synthetic_cub(tmp_path / "s", seed=0, **SMALL)
    stamp = (root / "images.txt").stat().st_mtime_ns
    ensure_synthetic_cub(root, seed=0, **SMALL)
    assert (root / "images.txt").stat().st_mtime_ns == stamp
    assert json.loads((root / MARKER).read_text())["seed"] == 0
    with pytest.raises(DataError, match="delete that folder"):
        ensure_synthetic_cub(root, seed=1, **SMALL)


def test_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match=MARKER):
        ensure_synthetic_cub(root, **SMALL)
    assert (root / "precious.txt").read_text() == "keep me"


def test_empty_folder_is_filled(tmp_path):
    (tmp_path / "s").mkdir()
    root = ensure_synthetic_cub(tmp_path / "s", **SMALL)
    assert (root / MARKER).is_file()


def test_bad_sizes(tmp_path):
    with pytest.raises(DataError, match="num_classes"):
        ensure_synthetic_cub(tmp_path / "s", num_classes=1000)
    with pytest.raises(DataError, match="train_per_class"):
        ensure_synthetic_cub(tmp_path / "t", num_classes=2, train_per_class=0)
