import numpy as np
import pytest
import torch

from src.nn import box_nms

# apache/mxnet tests/python/unittest/test_contrib_operator.py::test_box_nms_op
BOXES = [
    [0, 0.5, 0.1, 0.1, 0.2, 0.2],
    [1, 0.4, 0.1, 0.1, 0.2, 0.2],
    [0, 0.3, 0.1, 0.1, 0.14, 0.14],
    [2, 0.6, 0.5, 0.5, 0.7, 0.8],
]
EXPECTED_FORCE = [
    [2, 0.6, 0.5, 0.5, 0.7, 0.8],
    [0, 0.5, 0.1, 0.1, 0.2, 0.2],
    [0, 0.3, 0.1, 0.1, 0.14, 0.14],
    [-1, -1, -1, -1, -1, -1],
]


def run(data, **kw):
    kw.setdefault("id_index", 0)
    return box_nms(torch.tensor(data, dtype=torch.float64), **kw).numpy()


def corner_to_center(data):
    data = np.asarray(data, dtype=np.float64).reshape(-1, 6)
    out = data.copy()
    out[:, 2] = (data[:, 2] + data[:, 4]) / 2.0
    out[:, 3] = (data[:, 3] + data[:, 5]) / 2.0
    out[:, 4] = data[:, 4] - data[:, 2]
    out[:, 5] = data[:, 5] - data[:, 3]
    out[np.where(data[:, 0] < 0)[0], :] = -1
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_nms_mxnet_cases_1_to_4(dtype):
    def go(data, **kw):
        return box_nms(torch.tensor(data, dtype=dtype), id_index=0, **kw).double().numpy()

    np.testing.assert_allclose(
        go(BOXES, overlap_thresh=0.5, force_suppress=True), EXPECTED_FORCE, atol=1e-6
    )
    # case 2: batches, and another leading dim
    np.testing.assert_allclose(
        go([BOXES] * 3, force_suppress=True), [EXPECTED_FORCE] * 3, atol=1e-6
    )
    np.testing.assert_allclose(
        go([[BOXES] * 3] * 2, force_suppress=True), [[EXPECTED_FORCE] * 3] * 2, atol=1e-6
    )
    # case 3: threshold 0.1
    exp3 = [[2, 0.6, 0.5, 0.5, 0.7, 0.8], [0, 0.5, 0.1, 0.1, 0.2, 0.2], [-1] * 6, [-1] * 6]
    np.testing.assert_allclose(go(BOXES, overlap_thresh=0.1, force_suppress=True), exp3, atol=1e-6)
    # case 4: per class
    exp4 = [
        [2, 0.6, 0.5, 0.5, 0.7, 0.8],
        [0, 0.5, 0.1, 0.1, 0.2, 0.2],
        [1, 0.4, 0.1, 0.1, 0.2, 0.2],
        [-1] * 6,
    ]
    np.testing.assert_allclose(go(BOXES, overlap_thresh=0.1), exp4, atol=1e-6)


def test_box_nms_mxnet_case5_formats():
    exp4 = np.array(
        [
            [2, 0.6, 0.5, 0.5, 0.7, 0.8],
            [0, 0.5, 0.1, 0.1, 0.2, 0.2],
            [1, 0.4, 0.1, 0.1, 0.2, 0.2],
            [-1] * 6,
        ]
    )
    boxes5 = corner_to_center(BOXES)
    np.testing.assert_allclose(run(boxes5, overlap_thresh=0.1, in_format="center"), exp4, atol=1e-9)
    exp5 = corner_to_center(exp4)
    np.testing.assert_allclose(run(BOXES, overlap_thresh=0.1, out_format="center"), exp5, atol=1e-9)
    np.testing.assert_allclose(
        run(boxes5, overlap_thresh=0.1, in_format="center", out_format="center"), exp5, atol=1e-9
    )


def test_box_nms_mxnet_case6_positions():
    # columns moved: coords at 3..6, score at 0, id at 7, two filler columns
    data = np.full((4, 8), -1.0)
    exp = np.full((4, 8), -1.0)
    exp4 = np.array(
        [
            [2, 0.6, 0.5, 0.5, 0.7, 0.8],
            [0, 0.5, 0.1, 0.1, 0.2, 0.2],
            [1, 0.4, 0.1, 0.1, 0.2, 0.2],
            [-1] * 6,
        ]
    )
    src = np.array(BOXES)
    data[:, 3:7], data[:, 0], data[:, 7] = src[:, 2:6], src[:, 1], src[:, 0]
    exp[:, 3:7], exp[:, 0], exp[:, 7] = exp4[:, 2:6], exp4[:, 1], exp4[:, 0]
    got = run(data, overlap_thresh=0.1, coord_start=3, score_index=0, id_index=7)
    np.testing.assert_allclose(got, exp, atol=1e-9)


def test_box_nms_mxnet_case7_no_id_is_force():
    np.testing.assert_allclose(run(BOXES, id_index=-1), EXPECTED_FORCE, atol=1e-9)


def test_box_nms_mxnet_case8_valid_and_topk():
    boxes8 = [
        [[c, 1, 0, 0, 10, 10], [c, 0.4, 0, 0, 10, 10], [c, 0.3, 0, 0, 10, 10]] for c in (1, 2, 3)
    ]
    exp8 = [[[c, 1, 0, 0, 10, 10], [-1] * 6, [-1] * 6] for c in (1, 2, 3)]
    np.testing.assert_allclose(run(boxes8, valid_thresh=0.5, topk=2), exp8, atol=1e-9)


def test_box_nms_mxnet_case9_background():
    boxes9 = [
        [0, 0.5, 0.1, 0.1, 0.2, 0.2],
        [0, 0.4, 0.1, 0.1, 0.2, 0.2],
        [1, 0.3, 0.1, 0.1, 0.14, 0.14],
        [-1, 0.6, 0.5, 0.5, 0.7, 0.8],
    ]
    exp9 = [[0, 0.5, 0.1, 0.1, 0.2, 0.2], [1, 0.3, 0.1, 0.1, 0.14, 0.14], [-1] * 6, [-1] * 6]
    np.testing.assert_allclose(run(boxes9, force_suppress=True), exp9, atol=1e-9)
    exp9b = [[-1, 0.6, 0.5, 0.5, 0.7, 0.8], [1, 0.3, 0.1, 0.1, 0.14, 0.14], [-1] * 6, [-1] * 6]
    np.testing.assert_allclose(run(boxes9, force_suppress=True, background_id=0), exp9b, atol=1e-9)


def test_box_nms_topk_applies_before_suppression():
    # topk=1 keeps only the best valid box per image before NMS
    data = [[[0, 0.9, 0, 0, 1, 1], [0, 0.8, 5, 5, 6, 6]], [[0, 0.1, 0, 0, 1, 1], [-1] * 6]]
    got = run(data, topk=1)
    np.testing.assert_allclose(
        got, [[[0, 0.9, 0, 0, 1, 1], [-1] * 6], [[0, 0.1, 0, 0, 1, 1], [-1] * 6]]
    )
