"""Image-to-image readers and synthetic writers: the A|B split and direction, one crop and flip
for both halves, determinism by (seed, epoch, index), the unaligned pairing, layouts written by
the synthetic generators, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from src.app import CONF_DIR
from src.config import register_configs
from src.data.base import DataError
from src.data.image_translation import (
    AlignedImages,
    UnalignedImages,
    build_paired_images,
    to_tensor,
)
from src.data.synthetic_translation import (
    build_synthetic_cyclegan,
    build_synthetic_pix2pix,
    ensure_synthetic_pix2pix,
)
from src.engine.seed import sample_rng
from src.utils.resolvers import register_resolvers

register_resolvers()
register_configs()


def _pairs(folder, n=3, size=20, seed=0):
    """A|B PNGs whose B half is the negative of a random A half."""
    g = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    halves = []
    for i in range(n):
        a = g.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(folder / f"{i}.png")
        halves.append(a)
    return halves


def test_ab_split_direction_and_eval_resize(tmp_path):
    halves = _pairs(tmp_path / "train", size=16)
    ds = AlignedImages(tmp_path / "train", crop_size=16, load_size=16)
    s = ds.load(0, None)
    torch.testing.assert_close(s["A"], to_tensor(Image.fromarray(halves[0])))
    torch.testing.assert_close(s["B"], -s["A"], atol=1e-6, rtol=0)
    assert s["A"].shape == (3, 16, 16) and s["A"].min() >= -1 and s["A"].max() <= 1
    flipped = AlignedImages(tmp_path / "train", crop_size=16, load_size=16, direction="BtoA")
    torch.testing.assert_close(flipped.load(0, None)["A"], s["B"])
    # evaluation: resized straight to the crop size (bicubic), no crop, no flip
    small = AlignedImages(tmp_path / "train", crop_size=8).load(1, None)["A"]
    want = to_tensor(Image.fromarray(halves[1]).resize((8, 8), Image.BICUBIC))
    torch.testing.assert_close(small, want)
    with pytest.raises(DataError, match="direction='AB'"):
        AlignedImages(tmp_path / "train", direction="AB")


def test_both_halves_get_the_same_crop_and_flip_and_it_is_seeded(tmp_path):
    _pairs(tmp_path / "train", size=20)
    ds = AlignedImages(tmp_path / "train", crop_size=16, load_size=24)
    seen = set()
    for epoch in range(6):
        s = ds.load(2, sample_rng(5, epoch, 2))
        assert s["A"].shape == s["B"].shape == (3, 16, 16)
        # the same crop and flip: B stays the negative of A pixel for pixel (1 level of rounding)
        assert float((s["A"] + s["B"]).abs().max()) <= 1.01 / 127.5
        seen.add(s["A"].numpy().tobytes())
        again = ds.load(2, sample_rng(5, epoch, 2))
        assert torch.equal(again["A"], s["A"]) and torch.equal(again["B"], s["B"])
    assert len(seen) > 1  # the crop/flip varies with the epoch
    params = [ds.transform.params(sample_rng(0, e, 0)) for e in range(40)]
    assert {p[2] for p in params} == {True, False}
    assert {p[0] for p in params} == set(range(9))  # left in 0..load - crop
    assert not any(
        AlignedImages(tmp_path / "train", 16, 24, flip=False).transform.params(sample_rng(0, e, 0))[
            2
        ]
        for e in range(10)
    )


def test_unaligned_length_and_pairing(tmp_path):
    for name, n in (("A", 3), ("B", 5)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0) if name == "A" else (0, 0, i * 40)).save(
                tmp_path / name / f"{i}.png"
            )
    ds = UnalignedImages(tmp_path / "A", tmp_path / "B", crop_size=8, load_size=8)
    assert len(ds) == 5
    s = ds.load(4, None)
    assert s["index_b"] == 4 and float(s["A"][0, 0, 0]) == pytest.approx(40 / 127.5 - 1)
    drawn = {ds.load(1, sample_rng(0, e, 1))["index_b"] for e in range(30)}
    assert drawn == set(range(5))
    assert ds.load(1, sample_rng(0, 3, 1))["index_b"] == ds.load(1, sample_rng(0, 3, 1))["index_b"]


def test_synthetic_pix2pix_writes_the_layout_once_and_reads_it_back(tmp_path):
    root = tmp_path / "p2p"
    data = build_synthetic_pix2pix(
        root, image_size=32, num_train=4, num_val=2, num_test=1, source_size=36
    )
    assert sorted(p.name for p in root.iterdir()) == [
        "synthetic_pix2pix.json",
        "test",
        "train",
        "val",
    ]
    files = sorted((root / "train").glob("*.jpg"))
    with Image.open(files[0]) as first:
        assert len(files) == 4 and first.size == (72, 36)
    s = data["train"].load(0, sample_rng(0, 0, 0))
    assert s["A"].shape == (3, 32, 32) and data["val"].crop_size == 32 and len(data["val"]) == 2
    # A: black outlines on white (mostly white); B: grey ground with coloured fills
    a, b = data["val"].load(0, None)["A"], data["val"].load(0, None)["B"]
    assert float(a.mean()) > 0.6 and float(b.mean()) < float(a.mean())
    # deterministic: the same seed writes the same bytes
    other = tmp_path / "again"
    ensure_synthetic_pix2pix(other, num_train=4, num_val=2, num_test=1, source_size=36)
    assert all(f.read_bytes() == (other / "train" / f.name).read_bytes() for f in files)
    with pytest.raises(DataError, match="was generated with"):
        ensure_synthetic_pix2pix(root, num_train=5, num_val=2, num_test=1, source_size=36)


def test_synthetic_cyclegan_layout(tmp_path):
    data = build_synthetic_cyclegan(
        tmp_path / "cg", image_size=32, num_train_a=3, num_train_b=4, num_test=2, source_size=36
    )
    assert {p.name for p in (tmp_path / "cg").iterdir()} >= {"trainA", "trainB", "testA", "testB"}
    assert len(data["train"]) == 4 and len(data["val"]) == 2
    s = data["val"].load(0, None)
    assert float(s["A"].mean()) < float(s["B"].mean())  # dark ground vs light ground


def test_facades_missing_root_is_one_line_with_the_download(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "model=pix2pix",
                "dataset=facades",
                f"paths.data_dir={tmp_path}",
                "paths.output_dir=/tmp/x",
                "paths.work_dir=/tmp",
            ],
        )
    assert cfg.dataset.image_size == 256 and cfg.dataset.direction == "BtoA"
    with pytest.raises(Exception) as e:
        instantiate(cfg.dataset, _convert_="all")
    err = e.value.__cause__ or e.value
    assert isinstance(err, DataError)
    msg = str(err)
    assert "\n" not in msg and str(tmp_path / "facades") in msg
    assert "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz" in msg
    (tmp_path / "facades" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no A\|B images .* in .*facades/train; download"):
        build_paired_images(tmp_path / "facades", hint=cfg.dataset.hint)
