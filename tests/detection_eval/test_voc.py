"""VOC mAP (src.metrics.voc) vs hand-derived values and an independent port of ``voc_eval``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.metrics.voc import evaluate_voc, voc_ap, voc_tp_fp
from tests.detection_eval.voc_reference import reference_voc_ap, reference_voc_eval


def det(boxes, scores, labels):
    return {
        "boxes": np.array(boxes, float).reshape(-1, 4),
        "scores": np.array(scores, float),
        "labels": np.array(labels, int),
    }


def gt(boxes, labels, difficult=None):
    d = {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, int)}
    if difficult is not None:
        d["difficult"] = np.array(difficult, bool)
    return d


def worked_example():
    """Class 0 "a": img0 has g1=[0,0,9,9] and a difficult g2=[50,50,59,59]; img1 has
    g3=[0,0,19,19]. Detections (score): d1 .9 img0 on g1 -> TP; d2 .8 img0 on g1 again -> FP;
    d3 .7 img0 on g2 -> ignored; d4 .6 img1 far away -> FP; d5 .5 img1 on g3 -> TP.
    Class 1 "b": one difficult box only, one detection on it. Class 2 "c": a box, no detection.
    Image 2 has no ground truth and one stray detection of class 0 at the lowest score."""
    dets = [
        det(
            [[0, 0, 9, 9], [0, 0, 9, 9], [50, 50, 59, 59], [50, 50, 59, 59]],
            [0.9, 0.8, 0.7, 0.95],
            [0, 0, 0, 1],
        ),
        det([[100, 100, 110, 110], [0, 0, 19, 19]], [0.6, 0.5], [0, 0]),
        det([[5, 5, 30, 30]], [0.1], [0]),
    ]
    gts = [
        gt([[0, 0, 9, 9], [50, 50, 59, 59], [50, 50, 59, 59]], [0, 0, 1], [False, True, True]),
        gt([[0, 0, 19, 19], [40, 40, 60, 60]], [0, 2]),
        gt(np.zeros((0, 4)), []),
    ]
    return dets, gts


def test_worked_example_by_hand():
    """By hand, class a (npos 2), detections in score order d1 d2 d3 d4 d5 d6(img2, FP):
    tp 1 1 1 1 2 2, fp 0 1 1 2 2 3 -> rec .5 .5 .5 .5 1 1, prec 1 .5 .5 1/3 .5 .4.
    area: envelope 1 up to rec .5, .5 up to rec 1 -> .5 * 1 + .5 * .5 = 0.75.
    11-point: t = 0 .. .5 (6 points) -> 1; t = .6 .. 1 (5 points) -> .5 -> 8.5 / 11.
    Class b: no non-difficult box -> NaN, not in the mean; class c: 0.
    """
    dets, gts = worked_example()
    names = ["a", "b", "c"]
    area = evaluate_voc(dets, gts, names, metric="area")
    assert area["voc_AP_a"] == pytest.approx(0.75, abs=1e-15)
    assert math.isnan(area["voc_AP_b"])
    assert area["voc_AP_c"] == 0.0
    assert area["voc_mAP"] == pytest.approx(0.375, abs=1e-15)
    v07 = evaluate_voc(dets, gts, names, metric="voc07")
    assert v07["voc_AP_a"] == pytest.approx(8.5 / 11, abs=1e-15)
    assert v07["voc_mAP"] == pytest.approx(8.5 / 22, abs=1e-15)
    (tp, fp, npos), (tpb, fpb, nposb), (tpc, _, nposc) = voc_tp_fp(dets, gts, 3)
    assert tp.tolist() == [1, 0, 0, 0, 1, 0] and fp.tolist() == [0, 1, 0, 1, 0, 1]
    assert (npos, nposb, nposc) == (2, 0, 1)
    assert tpb.tolist() == [0] and fpb.tolist() == [0]  # on a difficult box: neither
    assert len(tpc) == 0
    # the reference agrees with the same hand values
    for c, (want_area, want_07) in enumerate([(0.75, 8.5 / 11), (None, None), (0.0, 0.0)]):
        if want_area is None:
            continue
        assert reference_voc_eval(dets, gts, c)[2] == pytest.approx(want_area, abs=1e-15)
        assert reference_voc_eval(dets, gts, c, use_07_metric=True)[2] == pytest.approx(
            want_07, abs=1e-15
        )


def test_iou_threshold_is_strict_and_uses_plus_one_widths():
    """gt [0,0,9,9] (+1: 10x10 = 100); det [0,0,9,19] (10x20 = 200) overlaps 100: IoU exactly
    0.5 -> not a match (the devkit needs > 0.5). det [0,0,9,18] (190): IoU 100/190 -> match.
    With offset 0 the first pair would be 81/171 < 0.5 as well, the second 81/162 = 0.5."""
    g = [gt([[0, 0, 9, 9]], [0])]
    assert evaluate_voc([det([[0, 0, 9, 19]], [1.0], [0])], g, ["a"])["voc_mAP"] == 0.0
    d = [det([[0, 0, 9, 18]], [1.0], [0])]
    assert evaluate_voc(d, g, ["a"], metric="area")["voc_mAP"] == 1.0
    assert evaluate_voc(d, g, ["a"])["voc_mAP"] == pytest.approx(1.0, abs=1e-15)  # 11 x 1/11
    assert evaluate_voc(d, g, ["a"], metric="area", offset=0)["voc_mAP"] == 0.0
    r = reference_voc_eval([det([[0, 0, 9, 19]], [1.0], [0])], g, 0)
    assert r[2] == 0.0


def test_max_iou_box_taken_then_duplicate_is_fp():
    """Two gt boxes; both detections overlap the first best. The second detection is an FP
    even though it also overlaps the free second box above 0.5 (greedy to the max-IoU box)."""
    g = [gt([[0, 0, 9, 9], [0, 0, 9, 11]], [0, 0])]
    d = [det([[0, 0, 9, 9], [0, 0, 9, 9]], [0.9, 0.8], [0])]
    d[0]["labels"] = np.array([0, 0])
    ((tp, fp, npos),) = voc_tp_fp(d, g, 1)
    assert tp.tolist() == [1, 0] and fp.tolist() == [0, 1] and npos == 2


def test_no_detections_at_all():
    g = [gt([[0, 0, 9, 9]], [0]), gt(np.zeros((0, 4)), [])]
    d = [det(np.zeros((0, 4)), [], []), det(np.zeros((0, 4)), [], [])]
    for metric in ("voc07", "area"):
        out = evaluate_voc(d, g, ["a", "b"], metric=metric)
        assert out["voc_AP_a"] == 0.0 and math.isnan(out["voc_AP_b"]) and out["voc_mAP"] == 0.0
        assert reference_voc_eval(d, g, 0, use_07_metric=metric == "voc07")[2] == 0.0
    out = evaluate_voc([], [], ["a"])
    assert math.isnan(out["voc_mAP"]) and math.isnan(out["voc_AP_a"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="aligned"):
        evaluate_voc([det([], [], [])], [], ["a"])
    with pytest.raises(ValueError, match="labels must be in 0..0"):
        evaluate_voc([det([[0, 0, 1, 1]], [1.0], [3])], [gt([[0, 0, 1, 1]], [0])], ["a"])
    with pytest.raises(ValueError, match="metric"):
        evaluate_voc([], [], ["a"], metric="coco")


def test_voc_ap_functions_agree_on_raw_curves():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 30))
        tp = rng.random(n) < 0.5
        fp = (~tp).astype(float)
        npos = int(tp.sum()) + int(rng.integers(0, 4)) or 1
        tpc, fpc = np.cumsum(tp), np.cumsum(fp)
        rec = tpc / npos
        prec = tpc / np.maximum(tpc + fpc, np.finfo(np.float64).eps)
        for m07 in (False, True):
            assert abs(voc_ap(rec, prec, m07) - reference_voc_ap(rec, prec, m07)) <= 1e-12


# ------------------------------------------------------------------ random cases
@st.composite
def voc_case(draw):
    """Small integer boxes on a 40x40 canvas (many exact IoU ties and IoU = 0.5 cases), scores
    from a few values (score ties), difficult flags, gt-less images, images without detections,
    classes absent from gt or from detections."""
    C = draw(st.integers(1, 4))
    n_img = draw(st.integers(0, 6))
    coord = st.integers(0, 30)
    size = st.integers(0, 12)

    def box():
        x, y, w, h = draw(coord), draw(coord), draw(size), draw(size)
        return [x, y, x + w, y + h]

    dets, gts = [], []
    for _ in range(n_img):
        m = draw(st.integers(0, 5))
        g_boxes = [box() for _ in range(m)]
        g_lab = [draw(st.integers(0, C - 1)) for _ in range(m)]
        g_diff = [draw(st.booleans()) and draw(st.booleans()) for _ in range(m)]
        k = draw(st.integers(0, 8))
        d_boxes = []
        for _ in range(k):
            if g_boxes and draw(st.booleans()):  # near a gt box
                b = list(draw(st.sampled_from(g_boxes)))
                j = draw(st.integers(-2, 2))
                b = [min(b[0] + j, b[2]), b[1], b[2], b[3] + draw(st.integers(0, 2))]
                d_boxes.append(b)
            else:
                d_boxes.append(box())
        d_lab = [draw(st.integers(0, C - 1)) for _ in range(k)]
        d_score = [draw(st.sampled_from([0.1, 0.3, 0.5, 0.5, 0.7, 0.9, 1.0])) for _ in range(k)]
        dets.append(det(d_boxes, d_score, d_lab))
        gts.append(gt(g_boxes, g_lab, g_diff))
    return C, dets, gts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(voc_case(), st.sampled_from([0.5, 0.3, 0.7]))
def test_random_cases_equal_reference(case, thresh):
    C, dets, gts = case
    names = [f"c{i}" for i in range(C)]
    for metric in ("voc07", "area"):
        ours = evaluate_voc(dets, gts, names, iou_thresh=thresh, metric=metric)
        aps = []
        for c in range(C):
            rec, prec, ap, npos = reference_voc_eval(
                dets, gts, c, ovthresh=thresh, use_07_metric=metric == "voc07"
            )
            if npos == 0:
                assert math.isnan(ours[f"voc_AP_c{c}"])
                continue
            assert abs(ours[f"voc_AP_c{c}"] - ap) <= 1e-12, (metric, c)
            aps.append(ap)
        if aps:
            assert abs(ours["voc_mAP"] - float(np.mean(aps))) <= 1e-12
        else:
            assert math.isnan(ours["voc_mAP"])
    # the per-detection flags give the reference's curves exactly
    for c, (tp, fp, npos) in enumerate(voc_tp_fp(dets, gts, C, iou_thresh=thresh)):
        rec, prec, _, npos_ref = reference_voc_eval(dets, gts, c, ovthresh=thresh)
        assert npos == npos_ref
        tpc, fpc = np.cumsum(tp), np.cumsum(fp)
        np.testing.assert_array_equal(tpc / np.maximum(tpc + fpc, np.finfo(float).eps), prec)
        if npos:
            np.testing.assert_array_equal(tpc / npos, rec)


def test_chunked_pairs_equal_unchunked():
    """The flat IoU pairs are processed in chunks; a tiny chunk gives the same flags."""
    rng = np.random.default_rng(3)
    dets, gts = [], []
    for _ in range(20):
        m, k = int(rng.integers(0, 6)), int(rng.integers(0, 10))
        xy = rng.integers(0, 50, (m, 2))
        gts.append(gt(np.c_[xy, xy + rng.integers(0, 20, (m, 2))], rng.integers(0, 3, m)))
        xy = rng.integers(0, 50, (k, 2))
        dets.append(
            det(np.c_[xy, xy + rng.integers(0, 20, (k, 2))], rng.random(k), rng.integers(0, 3, k))
        )
    from src.metrics import voc

    big = voc.voc_tp_fp(dets, gts, 3)
    small = voc.voc_tp_fp(dets, gts, 3, max_pairs=3)
    for (a, b, n), (c, d, m) in zip(big, small):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
        assert n == m
