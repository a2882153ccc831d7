import io
import warnings

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from src.nn import (
    BBoxArea,
    BBoxBatchIOU,
    BBoxCenterToCorner,
    BBoxClipToImage,
    BBoxCornerToCenter,
    BBoxSplit,
)
from tests.nn.helpers import np_box_iou, random_boxes


def test_corner_center_worked_example_and_split():
    x = torch.tensor([[[0.0, 2.0, 10.0, 6.0]]], dtype=torch.float64)
    c = BBoxCornerToCenter()(x)
    assert c.tolist() == [[[5.0, 4.0, 10.0, 4.0]]]
    parts = BBoxCornerToCenter(split=True)(x)
    assert len(parts) == 4 and parts[2].shape == (1, 1, 1) and parts[2].item() == 10.0
    back = BBoxCenterToCorner()(c)
    assert torch.equal(back, x)
    xs = BBoxCenterToCorner(split=True)(c)
    assert [p.item() for p in xs] == [0.0, 2.0, 10.0, 6.0]


def test_conversions_other_axis_round_trip():
    gen = torch.Generator().manual_seed(0)
    x = random_boxes(gen, 3, 5).transpose(1, 2)  # (3, 4, 5): coordinates on axis 1
    c = BBoxCornerToCenter(axis=1)(x)
    assert torch.allclose(BBoxCenterToCorner(axis=1)(c), x)
    assert torch.allclose(c[:, 2], x[:, 2] - x[:, 0])


def test_bbox_split_squeeze():
    x = torch.arange(24.0).reshape(2, 3, 4)
    a = BBoxSplit(axis=-1)(x)
    assert [p.shape for p in a] == [(2, 3, 1)] * 4
    b = BBoxSplit(axis=-1, squeeze_axis=True)(x)
    assert [p.shape for p in b] == [(2, 3)] * 4
    assert torch.equal(b[3], x[..., 3])
    with pytest.raises(ValueError):
        BBoxSplit(axis=1)(x)


def test_bbox_area_clamps_negative_sizes():
    x = torch.tensor([[[0.0, 0.0, 10.0, 5.0], [5.0, 5.0, 2.0, 9.0]]])
    assert BBoxArea()(x).squeeze(-1).tolist() == [[50.0, 0.0]]
    center = torch.tensor([[[1.0, 1.0, 4.0, 3.0], [0.0, 0.0, -2.0, 3.0]]])
    assert BBoxArea(fmt="center")(center).squeeze(-1).tolist() == [[12.0, 0.0]]
    assert BBoxArea()(x).shape == (1, 2, 1)
    with pytest.raises(ValueError):
        BBoxArea(fmt="xywh")


def test_iou_worked_example_offsets():
    a = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]], dtype=torch.float64)
    b = torch.tensor([[[5.0, 5.0, 15.0, 15.0]]], dtype=torch.float64)
    assert BBoxBatchIOU()(a, b).item() == pytest.approx(25 / 175, abs=1e-12)
    assert round(BBoxBatchIOU()(a, b).item(), 6) == 0.142857
    assert round(BBoxBatchIOU(offset=1)(a, b).item(), 6) == 0.174757
    assert BBoxBatchIOU(offset=1)(a, b).item() == pytest.approx(36 / 206, abs=1e-12)


@pytest.mark.parametrize("offset", [0, 1])
def test_iou_padding_never_matches(offset):
    # a padding gt of -1 would overlap a box near the origin with offset=1 in GluonCV
    a = torch.tensor([[[-1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 3.0]]], dtype=torch.float64)
    b = torch.tensor([[[-1.0, -1.0, -1.0, -1.0], [0.0, 0.0, 3.0, 3.0]]], dtype=torch.float64)
    iou = BBoxBatchIOU(offset=offset)(a, b)
    assert torch.all(iou[..., 0] == -1)
    assert iou[0, 1, 1].item() == pytest.approx(1.0)
    # padding on the anchor side too
    iou2 = BBoxBatchIOU(offset=offset)(b, a)
    assert torch.all(iou2[:, 0] == -1)
    # center format padding
    iou3 = BBoxBatchIOU(fmt="center", offset=offset)(a, b)
    assert torch.all(iou3[..., 0] == -1)


def test_iou_matches_mxnet_numpy_oracle_corner_and_center():
    gen = torch.Generator().manual_seed(1)
    for offset in (0, 1):
        for _ in range(5):
            xy = torch.rand(2, 7, 2, generator=gen, dtype=torch.float64) * 50
            wh = torch.rand(2, 7, 2, generator=gen, dtype=torch.float64) * 30 + 0.5
            xywh = torch.cat((xy, wh), -1)
            ltrb = torch.cat((xy - wh / 2, xy + wh / 2), -1)
            a, b = ltrb[0], ltrb[1, :5]
            ours = BBoxBatchIOU(offset=offset)(a[None], b[None])[0].numpy()
            np.testing.assert_allclose(
                ours, np_box_iou(a.numpy(), b.numpy(), offset=offset), rtol=1e-12, atol=1e-12
            )
            ours_c = BBoxBatchIOU(fmt="center", offset=offset)(xywh[0][None], xywh[1, :5][None])
            ref_c = np_box_iou(xywh[0].numpy(), xywh[1, :5].numpy(), fmt="center", offset=offset)
            np.testing.assert_allclose(ours_c[0].numpy(), ref_c, rtol=1e-12, atol=1e-12)


def test_iou_torchvision_oracle_batched_and_broadcast():
    gen = torch.Generator().manual_seed(2)
    anchors = random_boxes(gen, 50)
    gts = random_boxes(gen, 4, 6)
    iou = BBoxBatchIOU()(anchors, gts)  # (N, 4) anchors broadcast against (B, M, 4)
    assert iou.shape == (4, 50, 6)
    for i in range(4):  # batched == per image == torchvision
        ref = torchvision.ops.box_iou(anchors, gts[i])
        torch.testing.assert_close(iou[i], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(BBoxBatchIOU()(anchors[None], gts[i : i + 1])[0], ref)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            *[st.floats(-50, 50, allow_nan=False)] * 2, *[st.floats(0.0, 40, allow_nan=False)] * 2
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(
        st.tuples(
            *[st.floats(-50, 50, allow_nan=False)] * 2, *[st.floats(0.0, 40, allow_nan=False)] * 2
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([0, 1]),
)
def test_iou_symmetric_and_bounded(la, lb, offset):
    def corner(rows):
        t = torch.tensor(rows, dtype=torch.float64)
        return torch.cat((t[:, :2], t[:, :2] + t[:, 2:]), -1)[None]

    a, b = corner(la), corner(lb)
    iou = BBoxBatchIOU(offset=offset)
    ab, ba = iou(a, b), iou(b, a)
    torch.testing.assert_close(ab, ba.transpose(-1, -2), rtol=0, atol=1e-12)
    assert torch.all(ab >= 0) and torch.all(ab <= 1 + 1e-12)
    assert not torch.isnan(ab).any()


def test_clip_to_image_keeps_padding():
    x = torch.tensor([[[-5.0, 3.0, 700.0, 500.0], [-1.0, -1.0, -1.0, -1.0]]])
    img = torch.zeros(1, 3, 480, 640)
    out = BBoxClipToImage()(x, img)
    assert out.tolist() == [[[0.0, 3.0, 640.0, 480.0], [-1.0, -1.0, -1.0, -1.0]]]


def test_iou_onnx_export_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    gen = torch.Generator().manual_seed(3)
    a = random_boxes(gen, 2, 9, dtype=torch.float32)
    b = random_boxes(gen, 2, 5, dtype=torch.float32)
    b[1, 3:] = -1
    model = BBoxBatchIOU(offset=1).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (a, b),
            f,
            dynamo=False,
            input_names=["a", "b"],
            output_names=["iou"],
            dynamic_axes={"a": {0: "B", 1: "N"}, "b": {0: "B", 1: "M"}},
        )
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    a2 = random_boxes(gen, 3, 11, dtype=torch.float32)  # other sizes than traced
    b2 = random_boxes(gen, 3, 4, dtype=torch.float32)
    b2[0, 2:] = -1
    (got,) = sess.run(None, {"a": a2.numpy(), "b": b2.numpy()})
    np.testing.assert_allclose(got, model(a2, b2).numpy(), rtol=1e-5, atol=1e-6)
