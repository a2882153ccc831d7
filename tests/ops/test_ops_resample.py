"""src.ops.resample: the ops_cpu kernels against a per-image float64 F.interpolate oracle and
against the torch path (grid_sample / matrix products), in both layouts and thread counts."""

import logging

import pytest
import torch
import torch.nn.functional as F

from ops_cpu import build
from ops_cpu import resample as cpu
from src.ops import attention_drop, crop_resize, use_backend
from src.ops.resample import attention_drop_reference, crop_resize_reference

needs_kernels = pytest.mark.skipif(not cpu.available(), reason="no C++ compiler for ops_cpu")


def crop_oracle(images, boxes, size):
    """Per image: slice the box and F.interpolate it in float64 (the reference's formulation)."""
    out = [
        F.interpolate(
            images[i : i + 1, :, y0:y1, x0:x1].double(), size, mode="bilinear", align_corners=True
        )[0]
        for i, (y0, x0, y1, x1) in enumerate(boxes.tolist())
    ]
    return torch.stack(out)


def drop_oracle(images, maps, thr):
    up = F.interpolate(
        maps[:, None].double(), images.shape[-2:], mode="bilinear", align_corners=True
    )
    return images * (up < thr.double()[:, None, None, None]).to(images.dtype)


def random_boxes(b, height, width, g):
    """Boxes of every kind: whole image, one pixel, touching the last row / column, random."""
    fixed = [[0, 0, height, width], [3, 4, 4, 5], [height - 1, width - 1, height, width]]
    boxes = []
    for i in range(b):
        if i < len(fixed):
            boxes.append(fixed[i])
            continue
        y0, x0 = (int(torch.randint(0, s - 1, (1,), generator=g)) for s in (height, width))
        y1 = int(torch.randint(y0 + 1, height + 1, (1,), generator=g))
        x1 = int(torch.randint(x0 + 1, width + 1, (1,), generator=g))
        boxes.append([y0, x0, y1, x1])
    return torch.tensor(boxes)


def layout(x, nhwc):
    return x.contiguous(memory_format=torch.channels_last) if nhwc else x


@needs_kernels
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("channels", [3, 1, 4])
@pytest.mark.parametrize("size", [None, (17, 29)])
def test_crop_matches_per_image_interpolate_in_float64(nhwc, channels, size):
    g = torch.Generator().manual_seed(channels)
    images = layout(torch.randn(7, channels, 23, 31, generator=g, dtype=torch.float64), nhwc)
    boxes = random_boxes(7, 23, 31, g)
    got = crop_resize(images, boxes, size)
    want = crop_oracle(images, boxes, size or (23, 31))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert cpu.is_nhwc(got) == (nhwc and channels > 1)  # the images' layout is kept
    with use_backend("reference"):  # the torch path: one grid_sample
        torch.testing.assert_close(crop_resize(images, boxes, size), want, rtol=0, atol=1e-9)


@needs_kernels
@pytest.mark.parametrize("nhwc", [False, True])
def test_crop_float32_is_closer_to_float64_than_grid_sample(nhwc):
    """float32 at 448 px: the kernel's positions are float64, so it stays within float32
    rounding of the float64 oracle (1e-5 for randn images); grid_sample's float32 grid is
    off by ~3e-5 px, which moves steep pixels by up to ~2e-4."""
    g = torch.Generator().manual_seed(0)
    images = layout(torch.randn(4, 3, 448, 448, generator=g), nhwc)
    boxes = torch.tensor([[10, 20, 300, 410], [0, 0, 448, 448], [100, 37, 333, 250], [5, 6, 7, 9]])
    want = crop_oracle(images, boxes, (448, 448))
    kernel = (crop_resize(images, boxes).double() - want).abs().max()
    torch_path = (crop_resize_reference(images, boxes, (448, 448)).double() - want).abs().max()
    assert kernel < 1e-5 < torch_path


@needs_kernels
@pytest.mark.parametrize("nhwc", [False, True])
def test_threads_split_rows_without_changing_a_bit(nhwc):
    g = torch.Generator().manual_seed(3)
    images = layout(torch.randn(5, 3, 40, 36, generator=g), nhwc)
    boxes = random_boxes(5, 40, 36, g)
    maps = torch.rand(5, 6, 5, generator=g)
    thr = torch.rand(5, generator=g)
    one = cpu.crop_resize(images, boxes, (40, 36), threads=1)
    drop_one = cpu.attention_drop(images, maps, thr, threads=1)
    for threads in (2, 3, 7, 1000):
        assert torch.equal(cpu.crop_resize(images, boxes, (40, 36), threads), one)
        assert torch.equal(cpu.attention_drop(images, maps, thr, threads), drop_one)


@needs_kernels
@pytest.mark.parametrize("box", [[0, 0, 0, 5], [2, 2, 9, 5], [-1, 0, 4, 4], [0, 3, 4, 3]])
def test_a_box_outside_its_image_is_an_error_naming_it(box):
    images = torch.zeros(2, 3, 8, 8)
    boxes = torch.tensor([[0, 0, 8, 8], box])
    with pytest.raises(ValueError, match=r"crop box \[.*\] of image 1 is empty or outside"):
        crop_resize(images, boxes)


@needs_kernels
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_drop_matches_interpolated_mask(nhwc, dtype):
    """float64: the same mask as F.interpolate's and the same values, bit for bit; float32:
    the kernel interpolates the maps in float64, so its mask is the float64 one."""
    g = torch.Generator().manual_seed(5)
    images = layout(torch.randn(6, 3, 45, 38, generator=g, dtype=dtype), nhwc)
    maps = torch.rand(6, 7, 6, generator=g, dtype=dtype)
    thr = 0.2 + 0.6 * torch.rand(6, generator=g, dtype=torch.float64)
    thr[0] = float("inf")  # keeps everything
    got = attention_drop(images, maps, thr)
    want = drop_oracle(images, maps, thr)
    assert torch.equal(got, want)
    assert cpu.is_nhwc(got) == nhwc
    assert torch.equal(got[0], images[0]) and (got == 0).any()
    with use_backend("reference"):
        ref = attention_drop(images, maps, thr)
    mismatch = (ref != want).any(dim=1).double().mean()
    assert mismatch == 0 if dtype == torch.float64 else mismatch < 1e-3


def test_gradients_flow_through_the_torch_path():
    g = torch.Generator().manual_seed(8)
    images = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[1, 0, 5, 6], [0, 2, 6, 7]])
    maps = torch.rand(2, 3, 3, generator=g, dtype=torch.float64)
    thr = torch.tensor([0.5, 0.7], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: crop_resize(x, boxes), (images,))
    assert torch.autograd.gradcheck(lambda x: attention_drop(x, maps, thr), (images,))
    with torch.no_grad():  # the no-grad call (the kernel where built) gives the same values
        torch.testing.assert_close(
            crop_resize(images, boxes), crop_resize_reference(images, boxes, (6, 7))
        )
        torch.testing.assert_close(
            attention_drop(images, maps, thr), attention_drop_reference(images, maps, thr)
        )


def test_without_a_compiler_the_torch_path_runs(monkeypatch, tmp_path, caplog):
    """No C++ compiler: one warning naming what is missing, and the same values from the
    torch path (here against the oracle, since the kernels are not there to compare)."""
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("CV_OPS_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu, "_state", {})
    with caplog.at_level(logging.WARNING, logger="ops_cpu.resample"):
        assert not cpu.available()
        assert not cpu.available()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no-such-compiler" in warnings[0], warnings
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 12, 10, generator=g, dtype=torch.float64)
    boxes = random_boxes(3, 12, 10, g)
    torch.testing.assert_close(
        crop_resize(images, boxes), crop_oracle(images, boxes, (12, 10)), rtol=0, atol=1e-9
    )
    maps, thr = torch.rand(3, 4, 4, generator=g, dtype=torch.float64), torch.full((3,), 0.5)
    assert torch.equal(attention_drop(images, maps, thr), drop_oracle(images, maps, thr))


@needs_kernels
def test_the_library_is_built_once_per_source(monkeypatch, tmp_path):
    monkeypatch.setenv("CV_OPS_CACHE", str(tmp_path))
    code = cpu.SOURCE.read_text()
    first = build.build_library(code, "resample", cpu.FLAGS, kind="cpu")
    mtime = first.stat().st_mtime_ns
    assert build.build_library(code, "resample", cpu.FLAGS, kind="cpu") == first
    assert first.stat().st_mtime_ns == mtime and first.parent == tmp_path / "cpu"
    changed = build.build_library(code + "\n// edited\n", "resample", cpu.FLAGS, kind="cpu")
    assert changed != first and sorted(p.name for p in (tmp_path / "cpu").iterdir()) == sorted(
        [first.name, changed.name]
    )
