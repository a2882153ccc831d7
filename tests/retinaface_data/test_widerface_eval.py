"""WIDER FACE evaluator: identical APs to the straightforward reference formulation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat

from src.data.base import DataError
from src.metrics.widerface import (
    WiderFaceGT,
    boxes_to_widerface,
    evaluate_widerface,
    load_widerface_gt,
    read_widerface_predictions,
    write_widerface_predictions,
)
from tests.retinaface_data import widerface_reference as ref

REAL_GT = Path(__file__).resolve().parents[3] / "shared" / "data" / "widerface_val_gt"
needs_real = pytest.mark.skipif(
    not (REAL_GT / "wider_face_val.mat").is_file(), reason="../shared/data/widerface_val_gt absent"
)


def _oracle_on(gt: WiderFaceGT, preds: dict, tmp_path: Path, guard: bool = False) -> dict:
    """Run the oracle on the .mat files ``gt`` writes (checks the writer's structure too)."""
    gt.to_mat(tmp_path / "gt")
    arrays = ref.load_mat_gt(str(tmp_path / "gt"))
    nested = ref.nested(preds)
    for key in gt.keys:  # the reference needs an entry (maybe empty) for every gt image
        nested.setdefault(key[0], {}).setdefault(key[1], np.zeros((0, 5)))
    return ref.reference_evaluation(nested, *arrays, equal_scores_guard=guard)


def _same(ours: dict, oracle: dict, gt: WiderFaceGT | None = None) -> bool:
    """Equal APs; where a setting keeps no face the oracle's NaN is our documented 0.0."""
    for s in oracle:
        no_face = gt is not None and sum(len(k) for k in gt.keep[s]) == 0
        if no_face and math.isnan(oracle[s]) and ours[s] == 0.0:
            continue
        if ours[s] != oracle[s]:
            return False
    return True


# ----------------------------------------------------------------- hand-made cases
def test_worked_example_ap_five_sixths():
    # two kept faces; file order: hit A (0.9), false positive (0.8), hit B (0.7).
    # normalised scores 1, .5, 0 -> (P, R) = (1, .5) above .5, (.5, .5) down to 0, (2/3, 1) at 0.
    gt = WiderFaceGT.from_records(
        [("e", "img", [[0, 0, 20, 20], [100, 100, 20, 20]])],
        min_size={"easy": 0, "medium": 0, "hard": 0},
    )
    preds = {
        ("e", "img"): np.array(
            [[0, 0, 20, 20, 0.9], [50, 50, 20, 20, 0.8], [100, 100, 20, 20, 0.7]]
        )
    }
    aps = evaluate_widerface(preds, gt)
    assert aps["easy"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)


def test_iou_uses_plus_one_widths():
    # gt 10x10 px in +1 convention (x2 = 9); pred covers its top half: IoU = 50/100 = 0.5 with
    # +1 widths (matched, threshold is >=), 36/81 = 0.44 without (would not match).
    gt = WiderFaceGT.from_records([("e", "a", [[0, 0, 9, 9]])], min_size={"easy": 0})
    hit = {("e", "a"): np.array([[0, 0, 9, 4, 0.9], [200, 200, 5, 5, 0.1]])}
    assert evaluate_widerface(hit, gt, settings=["easy"])["easy"] == pytest.approx(1.0)
    miss = {("e", "a"): np.array([[0, 0, 9, 3, 0.9], [200, 200, 5, 5, 0.1]])}  # 40/100
    assert evaluate_widerface(miss, gt, settings=["easy"])["easy"] == 0.0


def test_ignored_faces_are_neither_hits_nor_false_positives():
    # easy keeps only the big face; a prediction on the small (ignored) face is not a proposal
    gt = WiderFaceGT.from_records(
        [("e", "a", [[0, 0, 40, 40], [100, 100, 8, 8]])], min_size={"easy": 32, "hard": 0}
    )
    preds = {("e", "a"): np.array([[100, 100, 8, 8, 0.9], [0, 0, 40, 40, 0.5]])}
    aps = evaluate_widerface(preds, gt, settings=["easy", "hard"])
    assert aps["easy"] == pytest.approx(1.0)  # precision 1 at every recall
    # hard keeps both faces: the small one is found first, then the big one -> AP 1
    assert aps["hard"] == pytest.approx(1.0)
    # a false positive ranked first costs precision in both settings alike
    preds[("e", "a")] = np.r_[[[300, 300, 10, 10, 0.95]], preds[("e", "a")]]
    aps = evaluate_widerface(preds, gt, settings=["easy", "hard"])
    # hard: (P, R) = (1/2, 1/2) then (2/3, 1); the envelope lifts the first to 2/3
    assert aps["easy"] == pytest.approx(0.5) and aps["hard"] == pytest.approx(2 / 3)


def test_equal_scores_guard(tmp_path):
    gt = WiderFaceGT.from_records([("e", "a", [[0, 0, 40, 40], [60, 60, 40, 40]])])
    preds = {("e", "a"): np.array([[0, 0, 40, 40, 0.7], [300, 0, 40, 40, 0.7]])}
    ours = evaluate_widerface(preds, gt)
    assert all(np.isfinite(v) for v in ours.values())
    assert ours["hard"] == pytest.approx(0.5 * 0.5)  # one PR point: P = 1/2 at R = 1/2
    # the reference divides by zero: NaN scores pass no threshold and every AP is a silent 0.0;
    # with the same guard it agrees with us
    assert _oracle_on(gt, preds, tmp_path) == {"easy": 0.0, "medium": 0.0, "hard": 0.0}
    assert _same(ours, _oracle_on(gt, preds, tmp_path, guard=True))


def test_missing_prediction_entry_counts_as_no_detections(tmp_path):
    gt = WiderFaceGT.from_records([("e", "a", [[0, 0, 40, 40]]), ("e", "b", [[0, 0, 40, 40]])])
    preds = {("e", "a"): np.array([[0, 0, 40, 40, 0.9], [90, 0, 40, 40, 0.2]])}
    ours = evaluate_widerface(preds, gt)
    assert ours["easy"] == pytest.approx(0.5)  # one of two faces found, with precision 1
    assert _same(ours, _oracle_on(gt, preds, tmp_path))


def _random_case(rng: np.random.Generator):
    records, preds = [], {}
    for i in range(int(rng.integers(1, 6))):
        n = int(rng.integers(0, 7))
        b = np.c_[rng.integers(0, 80, (n, 2)), rng.integers(1, 50, (n, 2))].astype(float)
        records.append((f"ev{i // 3}", f"im{i}", b))
        rows = []
        if n:
            pick = b[rng.integers(0, n, int(rng.integers(0, 2 * n + 1)))]
            rows.append(pick + rng.normal(0, 3, pick.shape).round(1))
        m = int(rng.integers(0, 4))
        rows.append(np.c_[rng.integers(0, 100, (m, 2)), rng.integers(1, 40, (m, 2))])
        boxes = np.concatenate(rows)
        # coarse scores make ties; file order is random (not sorted), as the protocol allows
        scores = rng.integers(0, 6, len(boxes)) / 5.0 * 0.9 + 0.05
        preds[(f"ev{i // 3}", f"im{i}")] = np.c_[boxes, scores]
    sizes = {"easy": float(rng.integers(10, 40)), "medium": float(rng.integers(0, 20)), "hard": 0.0}
    return WiderFaceGT.from_records(records, min_size=sizes), preds


@pytest.mark.parametrize("seed", range(25))
def test_random_small_cases_identical_to_reference(seed, tmp_path):
    gt, preds = _random_case(np.random.default_rng(seed))
    assert _same(evaluate_widerface(preds, gt), _oracle_on(gt, preds, tmp_path), gt)


def test_pair_chunking_does_not_change_results():
    gt, preds = _random_case(np.random.default_rng(123))
    assert evaluate_widerface(preds, gt) == evaluate_widerface(preds, gt, max_pairs=3)


# -------------------------------------------------------------- prediction files
def test_prediction_files_round_trip_and_score_the_same(tmp_path):
    gt, preds = _random_case(np.random.default_rng(7))
    write_widerface_predictions(preds, tmp_path / "pred")
    text = (tmp_path / "pred" / "ev0" / "im0.txt").read_text().splitlines()
    assert text[0] == "im0" and int(text[1]) == len(preds[("ev0", "im0")])
    assert len(text[2].split()) == 5
    back = read_widerface_predictions(tmp_path / "pred")
    assert back.keys() == preds.keys()
    for k in preds:
        np.testing.assert_array_equal(back[k], preds[k])
    assert evaluate_widerface(back, gt) == evaluate_widerface(preds, gt)


def test_reading_reference_style_files(tmp_path):
    d = tmp_path / "pred" / "0--Parade"
    d.mkdir(parents=True)
    # RetinaFace's test_widerface.py writes a trailing space on each box line; an empty image
    (d / "a.txt").write_text("a\n2\n1 2 3 4 0.9 \n5 6 7 8 0.5 \n")
    (d / "b.txt").write_text("0--Parade/b.jpg\n0\n")
    got = read_widerface_predictions(tmp_path / "pred")
    np.testing.assert_array_equal(got[("0--Parade", "a")], [[1, 2, 3, 4, 0.9], [5, 6, 7, 8, 0.5]])
    assert got[("0--Parade", "b")].shape == (0, 5)


@pytest.mark.parametrize(
    "body, where",
    [
        ("a\n1\n1 2 3 oops 0.9\n", "a.txt:3"),
        ("a\n2\n1 2 3 4 0.9\n", "count line says 2"),
        ("a\nx\n", "a.txt:2"),
        ("a\n", "needs a name line"),
    ],
)
def test_bad_prediction_files_name_file_and_line(tmp_path, body, where):
    d = tmp_path / "pred" / "ev"
    d.mkdir(parents=True)
    (d / "a.txt").write_text(body)
    with pytest.raises(DataError, match=where):
        read_widerface_predictions(tmp_path / "pred")


def test_legacy_int_conversion_matches_test_widerface():
    dets = np.array([[10.7, 20.2, 30.9, 45.5, 0.99]])
    np.testing.assert_array_equal(
        boxes_to_widerface(dets, legacy_int=True), [[10, 20, 20, 25, 0.99]]
    )
    np.testing.assert_allclose(boxes_to_widerface(dets), [[10.7, 20.2, 20.2, 25.3, 0.99]])


def test_bad_prediction_shape_is_rejected():
    gt = WiderFaceGT.from_records([("e", "a", [[0, 0, 4, 4]])])
    with pytest.raises(ValueError, match="must be"):
        evaluate_widerface({("e", "a"): np.zeros((3, 4))}, gt)


def test_mat_round_trip(tmp_path):
    gt, _ = _random_case(np.random.default_rng(3))
    gt.to_mat(tmp_path)
    back = WiderFaceGT.from_mat(tmp_path)
    assert back.keys == gt.keys
    for a, b in zip(back.boxes, gt.boxes):
        np.testing.assert_array_equal(a, b)
    for s in ("easy", "medium", "hard"):
        for a, b in zip(back.keep[s], gt.keep[s]):
            np.testing.assert_array_equal(a, b)
    m = loadmat(str(tmp_path / "wider_hard_val.mat"))
    assert {"event_list", "file_list", "face_bbx_list", "gt_list"} <= set(m)


def test_missing_gt_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="wider_face_val.mat"):
        load_widerface_gt(tmp_path)


# ------------------------------------------------------------------ real files
@needs_real
def test_real_ground_truth_structure():
    gt = load_widerface_gt(REAL_GT)
    assert len(gt) == 3226 and gt.num_faces == 39708
    counts = {s: sum(len(k) for k in gt.keep[s]) for s in ("easy", "medium", "hard")}
    assert counts == {"easy": 7211, "medium": 13319, "hard": 31958}
    assert gt.keys[0] == ("0--Parade", "0_Parade_marchingband_1_465")


@needs_real
def test_real_ground_truth_subset_identical_to_reference():
    fb, ev, fl, hard, med, easy = ref.load_mat_gt(str(REAL_GT))
    sl = [1, 3, 7, 11]  # four events, 118 images, 1,286 faces: a few seconds for the oracle
    fb, ev, fl, hard, med, easy = fb[sl], ev[sl], fl[sl], hard[sl], med[sl], easy[sl]
    preds = ref.synthetic_predictions(fb, ev, fl, seed=0)
    gt = WiderFaceGT.from_mat_arrays(ev, fl, fb, {"easy": easy, "medium": med, "hard": hard})
    ours = evaluate_widerface(preds, gt)
    oracle = ref.reference_evaluation(ref.nested(preds), fb, ev, fl, hard, med, easy)
    assert ours == oracle
    assert 0.3 < ours["easy"] < 0.9  # a meaningful, non-degenerate operating point


@pytest.mark.slow
@needs_real
def test_real_ground_truth_full_identical_to_reference(request):
    # about 2-3 minutes (the oracle): only when slow tests are asked for
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow: run with -m slow")
    arrays = ref.load_mat_gt(str(REAL_GT))
    preds = ref.synthetic_predictions(*arrays[:3], seed=1)
    ours = evaluate_widerface(preds, load_widerface_gt(REAL_GT))
    assert ours == ref.reference_evaluation(ref.nested(preds), *arrays)


def test_written_files_read_by_the_reference_reader(tmp_path):
    gt, preds = _random_case(np.random.default_rng(11))
    preds[("ev0", "empty_9")] = np.zeros((0, 5))
    write_widerface_predictions(preds, tmp_path / "pred")
    # (the reference's reader strips names with rstrip('.jpg'): a name ending in j, p or g would
    # lose letters there; WIDER names end in digits, and our reader strips the suffix only)
    theirs = ref.get_preds(str(tmp_path / "pred"))
    assert {(e, n) for e, d in theirs.items() for n in d} == set(preds)
    for (e, n), a in preds.items():
        np.testing.assert_array_equal(theirs[e][n].reshape(-1, 5), a)
    assert _same(evaluate_widerface(preds, gt), _oracle_on(gt, preds, tmp_path), gt)
