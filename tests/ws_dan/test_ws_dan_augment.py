"""Attention cropping / dropping / map sampling: batched versions against per-sample loops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.models.ws_dan import (
    attention_crop,
    attention_drop,
    crop_boxes,
    drop_mask,
    sample_attention_maps,
)
from src.models.ws_dan.augment import (
    _ends,
    _resize_matrices,
    _rows_cols_reaching,
    segment_ends,
    upsample_maps,
)
from tests.ws_dan.oracles import crop_loop, drop_loop


def draws(seed: int, shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("padding", [0.0, 0.1])
def test_crop_matches_loop(seed, padding):
    g = torch.Generator().manual_seed(100 + seed)
    images = torch.randn(5, 3, 40, 48, generator=g, dtype=torch.float64)
    maps = torch.rand(5, 1, 5, 6, generator=g, dtype=torch.float64) ** 4
    maps[1] = 0.0  # all-zero map: threshold 0, every pixel passes -> whole image
    lo, hi = 0.4, 0.6
    thetas = lo + (hi - lo) * draws(seed, 5)
    want, want_boxes = crop_loop(images, maps, thetas, padding)
    got_boxes = crop_boxes(maps, (40, 48), (lo, hi), padding, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(got_boxes, want_boxes)
    got = attention_crop(images, maps, (lo, hi), padding, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    torch.testing.assert_close(got[1], images[1], rtol=0, atol=1e-9)


def test_crop_hand_worked_box():
    # 3x3 map with one hot cell in the middle, upsampled to 9x9 (align_corners: cell k at
    # pixel 4k). theta 0.5: pixels whose interpolated value >= 0.5 are rows/cols 2..6.
    # padding 0.1 * 9 = 0.9: y0 = int(2 - 0.9) = 1, y1 = int(6 + 1 + 0.9) = 7.
    a = torch.zeros(1, 1, 3, 3)
    a[0, 0, 1, 1] = 1.0
    assert crop_boxes(a, (9, 9), 0.5, 0.1).tolist() == [[1, 1, 7, 7]]
    assert crop_boxes(a, (9, 9), 0.5, 0.0).tolist() == [[2, 2, 7, 7]]
    # Box (0, 0)-(9, 9) resamples the identity.
    images = torch.arange(81.0).view(1, 1, 9, 9)
    torch.testing.assert_close(attention_crop(images, a, 0.0, 0.0), images)


def test_crop_of_nan_map_falls_back_to_whole_image():
    a = torch.full((2, 1, 3, 3), float("nan"))
    assert crop_boxes(a, (8, 10), 0.5, 0.1).tolist() == [[0, 0, 8, 10]] * 2


@pytest.mark.parametrize("seed", [0, 1])
def test_drop_matches_loop(seed):
    g = torch.Generator().manual_seed(200 + seed)
    images = torch.randn(6, 3, 20, 24, generator=g, dtype=torch.float64)
    maps = torch.rand(6, 1, 5, 6, generator=g, dtype=torch.float64)
    maps[2] = 0.0  # nothing would be kept (0 < 0 is false): keep the whole image
    thetas = 0.2 + 0.3 * draws(seed, 6)
    want = drop_loop(images, maps, thetas)
    got = attention_drop(images, maps, (0.2, 0.5), torch.Generator().manual_seed(seed))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got[2], images[2])
    assert (got == 0).any()


def test_drop_hand_worked():
    a = torch.tensor([[[[0.0, 1.0]]]])  # upsampled to 1x5: 0, .25, .5, .75, 1
    keep = drop_mask(a, (1, 5), 0.5)
    assert keep[0, 0, 0].tolist() == [True, True, False, False, False]


def test_sampling_matches_inverse_cdf_loop():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(7, 5, 4, 4, generator=g) ** 3
    maps[0, :4] = 0.0  # only map 4 has mass (others get sqrt(eps) weight)
    picked, index = sample_attention_maps(maps, num=2, generator=torch.Generator().manual_seed(9))
    u = draws(9, (7, 2))
    for i in range(7):
        weights = [float(torch.sqrt(maps[i, k].sum() + 1e-12)) for k in range(5)]
        total = sum(weights)
        for j in range(2):
            acc, k = 0.0, 0
            for k in range(5):
                acc += weights[k] / total
                if u[i, j] < acc:
                    break
            assert index[i, j].item() == k
            torch.testing.assert_close(picked[i, j], maps[i, k])
    assert index[0].tolist() == [4, 4]


def test_sampling_frequencies_follow_sqrt_mass():
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 0] = 1.0  # sum 4 -> weight 2
    maps[0, 1] = 0.25  # sum 1 -> weight 1
    maps[0, 2] = 0.0  # weight ~0
    _, index = sample_attention_maps(
        maps.expand(20000, -1, -1, -1), num=1, generator=torch.Generator().manual_seed(0)
    )
    freq = np.bincount(index.flatten().numpy(), minlength=3) / index.numel()
    np.testing.assert_allclose(freq, [2 / 3, 1 / 3, 0.0], atol=0.015)


def test_global_rng_drives_randomness():
    images = torch.randn(4, 3, 16, 16)
    maps = torch.rand(4, 1, 4, 4)
    torch.manual_seed(5)
    a = attention_crop(images, maps)
    b = attention_drop(images, maps)
    torch.manual_seed(5)
    torch.testing.assert_close(attention_crop(images, maps), a)
    torch.testing.assert_close(attention_drop(images, maps), b)


def test_crop_and_drop_compile_as_one_graph():
    """No per-sample Python and no host sync: torch.compile(fullgraph=True) traces crop and
    drop without a graph break (backend "eager": the trace is the check, not the codegen),
    and the compiled functions give the eager values."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(7)
    images = torch.randn(4, 3, 32, 40, generator=g)
    maps = torch.rand(4, 1, 6, 5, generator=g) ** 3

    def both(images, maps):
        return attention_crop(images, maps, 0.5, 0.1), attention_drop(images, maps, 0.35)

    compiled = torch.compile(both, fullgraph=True, backend="eager")
    for got, want in zip(compiled(images, maps), both(images, maps)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_crop_float32_within_stated_tolerance_of_float64_loop():
    """float32 images: the sampling points are rounded once to float32 (about size * 6e-8 px,
    ~3e-5 px at 448), so values differ from the float64 loop by at most that shift times the
    image's steepest pixel step (< 8 for these randn images) plus float32 rounding: 5e-4 holds;
    the boxes (from the same float32 maps) are identical."""
    g = torch.Generator().manual_seed(11)
    images = torch.randn(4, 3, 448, 448, generator=g)
    centre = torch.rand(4, 2, 1, 1, generator=g) * 26  # one blob per map: boxes inside
    side = torch.arange(26.0)
    d2 = (side[:, None] - centre[:, :1]) ** 2 + (side[None, :] - centre[:, 1:]) ** 2
    maps = torch.exp(-d2 / 18.0)  # (4, 1, 26, 26)
    thetas = 0.4 + 0.2 * draws(4, 4)
    want, want_boxes = crop_loop(images.double(), maps, thetas, 0.1)
    gen = torch.Generator().manual_seed(4)
    got_boxes = crop_boxes(maps, (448, 448), (0.4, 0.6), 0.1, gen)
    torch.testing.assert_close(got_boxes, want_boxes)
    assert (want_boxes[:, 2:] - want_boxes[:, :2] < 448).all()
    got = attention_crop(images, maps, (0.4, 0.6), 0.1, torch.Generator().manual_seed(4))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=5e-4)


@pytest.mark.parametrize(
    "size_in, size_out",
    [((5, 6), (40, 48)), ((26, 26), (448, 448)), ((1, 4), (3, 4)), ((3, 3), (1, 1))],
)
def test_upsample_maps_matches_interpolate(size_in, size_out):
    """The two matrix products give ``F.interpolate(bilinear, align_corners=True)``'s values
    to 1e-12 in float64. In float32 they stay within a few ulps (3e-7 for maps in [0, 1]) of
    that float64 truth; float32 ``F.interpolate`` itself strays further (1.8e-6 at 448 px: it
    rounds its scale to float32 before multiplying by the pixel index)."""
    g = torch.Generator().manual_seed(sum(size_in) + sum(size_out))
    maps = torch.rand(3, 1, *size_in, generator=g, dtype=torch.float64)
    want = F.interpolate(maps, size=size_out, mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(upsample_maps(maps, size_out), want, rtol=0, atol=1e-12)
    got32 = upsample_maps(maps.float(), size_out)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=0, atol=3e-7)


SIZES = [(26, 448), (5, 40), (6, 48), (7, 97), (26, 300), (2, 448), (26, 26), (30, 17), (1, 5)]


@pytest.mark.parametrize("size_in, size_out", SIZES)
def test_segment_ends_hold_every_intervals_first_and_last_point(size_in, size_out):
    """Oracle: the source interval each output point falls in, read off the interpolation
    matrix itself (its first non-zero column); every interval's first and last point must be
    in ``segment_ends``, and nothing outside the output range."""
    from src.models.ws_dan.augment import interpolation_matrix

    weights = interpolation_matrix(size_in, size_out, torch.float64, torch.device("cpu"))
    lo = [int(torch.nonzero(row)[0]) for row in weights]
    ends = set(segment_ends(size_in, size_out, torch.device("cpu")).tolist())
    assert ends <= set(range(size_out))
    for k in set(lo):
        points = [j for j, v in enumerate(lo) if v == k]
        assert points[0] in ends and points[-1] in ends, (k, points)


@pytest.mark.parametrize("size_in, size_out", SIZES)
def test_row_and_column_maxima_and_minimum_from_segment_ends(size_in, size_out):
    """The crop's rows / columns reaching the threshold and the drop's smallest value, taken
    from the ``segment_ends`` rows and columns only, equal the full upsampled maps' (float64,
    to 1e-13; bool results identical), on smooth maps, spiky maps and a constant one."""
    g = torch.Generator().manual_seed(size_in * 1000 + size_out)
    size = (size_out, size_out + 3)
    maps = torch.rand(6, 1, size_in, size_in + 1, generator=g, dtype=torch.float64)
    maps[1] = maps[1] ** 8  # spiky
    maps[2] = 0.25  # constant
    full = upsample_maps(maps, size)
    ry, rx = _resize_matrices(maps, size)
    ry_ends, rx_ends = _ends(ry, rx, maps.shape[-2:])
    sub_min = (ry_ends @ maps[:, 0] @ rx_ends.T).amin(dim=(1, 2))
    torch.testing.assert_close(sub_min, full.amin(dim=(1, 2)), rtol=0, atol=1e-13)
    for fraction in (0.0, 0.3, 0.6, 0.95, 1.0):
        thr = fraction * maps.amax(dim=(1, 2, 3))
        rows, cols = _rows_cols_reaching(maps, size, thr)
        for got, full_max in ((rows, full.amax(dim=2)), (cols, full.amax(dim=1))):
            # The full maps' verdicts, away from float ties at the threshold.
            clear = (full_max - thr[:, None]).abs() > 1e-12
            assert torch.equal(got[clear], (full_max >= thr[:, None])[clear])


def test_float32_masks_match_interpolate_away_from_the_threshold():
    """At the paper's 26 -> 448 on trained-looking maps, the crop boxes are the reference's and
    the drop masks differ from float32 ``F.interpolate``'s only where the map is within that
    function's own rounding error (2e-6 of its max, see above) of the threshold."""
    from benchmarks.ws_dan import make_maps

    maps = make_maps(12, 2, 26, seed=3)
    thetas = 0.2 + 0.3 * draws(8, 12)
    want = F.interpolate(maps[:, 1:], size=(448, 448), mode="bilinear", align_corners=True)
    thr = (thetas * maps[:, 1:].amax(dim=(1, 2, 3)))[:, None, None, None]
    keep = drop_mask(maps[:, 1:], (448, 448), (0.2, 0.5), torch.Generator().manual_seed(8))
    differ = keep != (want < thr)
    near = (want - thr).abs() <= 4e-6 * maps[:, 1:].amax()
    assert not (differ & ~near).any()
    thetas = 0.4 + 0.2 * draws(9, 12)
    _, want_boxes = crop_loop(torch.zeros(12, 1, 448, 448), maps[:, :1], thetas, 0.1)
    gen = torch.Generator().manual_seed(9)
    got_boxes = crop_boxes(maps[:, :1], (448, 448), (0.4, 0.6), 0.1, gen)
    torch.testing.assert_close(got_boxes, want_boxes)


def test_map_with_a_nan_counts_as_empty():
    """One NaN (or inf) cell: the map is taken as all zero, like an empty one (whole image for
    the crop, nothing dropped); the other samples are untouched."""
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(3, 1, 5, 5, generator=g)
    images = torch.randn(3, 3, 20, 20, generator=g)
    bad = maps.clone()
    bad[0, 0, 2, 3] = float("nan")
    bad[1, 0, 0, 0] = float("inf")
    boxes = crop_boxes(bad, (20, 20), 0.5, 0.1)
    assert boxes[:2].tolist() == [[0, 0, 20, 20]] * 2
    assert boxes[2].tolist() == crop_boxes(maps, (20, 20), 0.5, 0.1)[2].tolist()
    dropped = attention_drop(images, bad, 0.35)
    torch.testing.assert_close(dropped[:2], images[:2], rtol=0, atol=0)
    torch.testing.assert_close(dropped[2], attention_drop(images, maps, 0.35)[2], rtol=0, atol=0)


def test_masks_ignore_autocast():
    """Under CPU autocast (bfloat16) the upsampled maps stay in float32: same boxes and masks."""
    maps = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(5)) ** 2
    want_boxes, want_keep = crop_boxes(maps, (64, 64), 0.5, 0.1), drop_mask(maps, (64, 64), 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert upsample_maps(maps, (64, 64)).dtype == torch.float32
        torch.testing.assert_close(crop_boxes(maps, (64, 64), 0.5, 0.1), want_boxes)
        torch.testing.assert_close(drop_mask(maps, (64, 64), 0.3), want_keep)
