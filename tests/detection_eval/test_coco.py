"""COCO AP (src.metrics.coco) vs pycocotools' COCOeval run directly on hand-made json."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.metrics.coco import (
    STAT_NAMES,
    CocoEvalError,
    coco_results,
    evaluate_coco,
    evaluate_coco_results,
    load_coco_gt,
    write_coco_results,
)

try:
    import faster_coco_eval  # noqa: F401

    HAVE_FASTER = True
except ImportError:  # optional backend
    HAVE_FASTER = False

# non-contiguous category ids; contiguous label i <-> CATEGORY_IDS[i]
CATEGORY_IDS = [2, 7, 11]


def gt_json():
    """Four images (ids 3, 8, 21, 42); 42 has no annotation. Boxes of every area range, a crowd
    box on image 8, two categories in image 3."""
    anns = [
        (3, 2, [10, 10, 20, 15], 0),  # small (300)
        (3, 2, [100, 50, 60, 80], 0),  # medium (4800)
        (3, 7, [30, 200, 150, 120], 0),  # large (18000)
        (8, 7, [0, 0, 40, 40], 0),  # medium (1600)
        (8, 11, [200, 100, 120, 90], 1),  # crowd region
        (8, 11, [60, 60, 25, 20], 0),  # small (500)
        (21, 11, [5, 5, 300, 200], 0),  # large
        (21, 2, [150, 20, 12, 12], 0),  # small (144)
    ]
    return {
        "info": {"description": "hand-made"},
        "images": [
            {"id": i, "width": 400, "height": 350, "file_name": f"{i:06d}.jpg"}
            for i in (3, 8, 21, 42)
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, ["cat", "dog", "bird"])],
        "annotations": [
            {
                "id": k + 1,
                "image_id": im,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": crowd,
            }
            for k, (im, c, b, crowd) in enumerate(anns)
        ],
    }


def coco(dataset) -> COCO:
    c = COCO()
    c.dataset = copy.deepcopy(dataset)
    c.createIndex()
    return c


def random_detections(seed, dataset, with_empty=True):
    """Per-image records: jittered copies of the gt (labels contiguous), random boxes, score
    ties, a box on the crowd region; image 42 has false positives or (with_empty) none."""
    rng = np.random.default_rng(seed)
    cat_to_label = {c: i for i, c in enumerate(CATEGORY_IDS)}
    recs = []
    for img in dataset["images"]:
        anns = [a for a in dataset["annotations"] if a["image_id"] == img["id"]]
        boxes, labels = [], []
        for a in anns:
            x, y, w, h = a["bbox"]
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
                lab = cat_to_label[a["category_id"]]
                labels.append(lab if rng.random() < 0.85 else int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, 4))):
            xy = rng.uniform(0, 300, 2)
            boxes.append([*xy, *(xy + rng.uniform(5, 100, 2))])
            labels.append(int(rng.integers(0, 3)))
        if img["id"] == 42 and with_empty:
            boxes, labels = [], []
        scores = rng.choice([0.2, 0.5, 0.5, 0.7, 0.9], len(boxes))
        recs.append(
            {
                "image_id": img["id"],
                "boxes": np.array(boxes).reshape(-1, 4),
                "scores": scores,
                "labels": np.array(labels, int),
            }
        )
    return recs


def direct_stats(dataset, recs, img_ids=None):
    """pycocotools alone: results written by hand (original ids, xywh), loadRes, COCOeval."""
    results = []
    for r in recs:
        for b, s, lab in zip(r["boxes"], r["scores"], r["labels"]):
            x1, y1, x2, y2 = (float(v) for v in b)
            results.append(
                {
                    "image_id": r["image_id"],
                    "category_id": CATEGORY_IDS[lab],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s),
                }
            )
    g = coco(dataset)
    ev = COCOeval(g, g.loadRes(copy.deepcopy(results)), "bbox")  # loadRes edits in place
    if img_ids is not None:
        ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats, results


def as_array(stats):
    return np.array([stats[f"coco_{n}"] for n in STAT_NAMES])


@pytest.mark.parametrize("seed", range(6))
def test_equals_cocoeval_and_maps_category_ids(seed, capsys):
    ds = gt_json()
    recs = random_detections(seed, ds)
    want, results = direct_stats(ds, recs)
    g = coco(ds)
    capsys.readouterr()
    ours = evaluate_coco(g, recs, CATEGORY_IDS)
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured
    np.testing.assert_array_equal(as_array(ours), want)
    assert list(ours) == [f"coco_{n}" for n in STAT_NAMES]
    # the results list carries the original ids and xywh boxes
    mine = coco_results(recs, CATEGORY_IDS)
    assert {r["category_id"] for r in mine} <= set(CATEGORY_IDS)
    assert mine == results
    # a mapping works as the sequence does; a dict gt / a json path as a COCO object
    mapping = {i: c for i, c in enumerate(CATEGORY_IDS)}
    np.testing.assert_array_equal(as_array(evaluate_coco(ds, recs, mapping)), want)


def test_results_json_round_trips_through_loadres(tmp_path):
    ds = gt_json()
    recs = random_detections(1, ds)
    (tmp_path / "gt.json").write_text(json.dumps(ds))
    path = write_coco_results(tmp_path / "sub" / "results.json", recs, CATEGORY_IDS)
    loaded = json.loads(path.read_text())
    assert loaded == coco_results(recs, CATEGORY_IDS)  # lossless floats
    g = coco(ds)
    ev = COCOeval(g, g.loadRes(str(path)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    ours = evaluate_coco(str(tmp_path / "gt.json"), recs, CATEGORY_IDS)
    np.testing.assert_array_equal(as_array(ours), ev.stats)
    from_file = evaluate_coco_results(g, path)
    np.testing.assert_array_equal(as_array(from_file), ev.stats)
    # an already built results list can be written as is
    p2 = write_coco_results(tmp_path / "r2.json", loaded)
    assert json.loads(p2.read_text()) == loaded


def test_subset_evaluates_only_the_images_run():
    ds = gt_json()
    recs = random_detections(2, ds)
    run = [r for r in recs if r["image_id"] in (3, 21)]
    want, _ = direct_stats(ds, run, img_ids=[3, 21])
    ours = evaluate_coco(coco(ds), run, CATEGORY_IDS)  # imgIds = the records' images
    np.testing.assert_array_equal(as_array(ours), want)
    full, _ = direct_stats(ds, run)  # all images: the missing ones count as misses
    assert not np.array_equal(full, want)
    explicit = evaluate_coco(coco(ds), run, CATEGORY_IDS, img_ids=[3, 8, 21, 42])
    np.testing.assert_array_equal(as_array(explicit), full)


def test_perfect_detections_give_ap_one():
    ds = gt_json()
    label = {c: i for i, c in enumerate(CATEGORY_IDS)}
    recs = []
    for img in ds["images"]:
        anns = [a for a in ds["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        b = np.array([a["bbox"] for a in anns], float).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        recs.append(
            {
                "image_id": img["id"],
                "boxes": b,
                "scores": np.ones(len(b)),
                "labels": np.array([label[a["category_id"]] for a in anns], int),
            }
        )
    out = evaluate_coco(coco(ds), recs, CATEGORY_IDS)
    for n in STAT_NAMES:
        if n != "AR1":
            assert out[f"coco_{n}"] == pytest.approx(1.0, abs=1e-12), n
    # AR@1 keeps one detection per image and category: image 3 has two cats, so cat recalls
    # 2 of 3 boxes, dog and bird all -> (2/3 + 1 + 1) / 3
    assert out["coco_AR1"] == pytest.approx(8 / 9, abs=1e-12)
    per = evaluate_coco(coco(ds), recs, CATEGORY_IDS, per_category=True)
    assert per["coco_AP_cat"] == per["coco_AP_dog"] == per["coco_AP_bird"] == 1.0


def test_zero_detections():
    """COCOeval's values: 0 where there is ground truth, -1 where an area range has none."""
    ds = gt_json()
    empty = [
        {"image_id": i["id"], "boxes": np.zeros((0, 4)), "scores": [], "labels": []}
        for i in ds["images"]
    ]
    out = evaluate_coco(coco(ds), empty, CATEGORY_IDS)
    assert all(v == 0.0 for v in out.values())
    only_small = [r for r in empty if r["image_id"] == 42] + [empty[2]]  # 42 and 21
    ds2 = copy.deepcopy(ds)
    ds2["annotations"] = [a for a in ds2["annotations"] if a["image_id"] != 21 or a["area"] < 1000]
    out = evaluate_coco(coco(ds2), only_small, CATEGORY_IDS)
    assert out["coco_AP"] == 0.0 and out["coco_APs"] == 0.0
    assert out["coco_APm"] == -1.0 and out["coco_APl"] == -1.0 and out["coco_ARl"] == -1.0


def test_user_errors(tmp_path):
    ds = gt_json()
    rec = {"image_id": 3, "boxes": [[0, 0, 5, 5]], "scores": [0.5], "labels": [0]}
    with pytest.raises(CocoEvalError, match="image_id 999"):
        evaluate_coco(ds, [{**rec, "image_id": 999}], CATEGORY_IDS)
    with pytest.raises(CocoEvalError, match="label 5 has no category id"):
        evaluate_coco(ds, [{**rec, "labels": [5]}], CATEGORY_IDS)
    with pytest.raises(CocoEvalError, match="category_id 4"):
        evaluate_coco(ds, [rec], [4, 7, 11])
    with pytest.raises(CocoEvalError, match="not found"):
        load_coco_gt(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CocoEvalError, match="bad.json: not a COCO annotation json"):
        load_coco_gt(tmp_path / "bad.json")
    with pytest.raises(CocoEvalError, match="backend"):
        evaluate_coco(ds, [rec], CATEGORY_IDS, backend="detectron")
    with pytest.raises(CocoEvalError, match="detections is empty"):
        evaluate_coco(ds, [], CATEGORY_IDS)


@pytest.mark.skipif(not HAVE_FASTER, reason="faster-coco-eval not installed")
@pytest.mark.parametrize("seed", range(6))
def test_faster_coco_eval_backend_matches_pycocotools(seed):
    """Same matches (recall and score arrays bit-identical), precision entries within 2 ulp;
    its C++ precision division rounds differently from numpy's in the last bit, so the stats
    agree to ~1e-16, not bit for bit (measured: at most 1.2e-16)."""
    from src.metrics.coco import _run_cocoeval

    ds = gt_json()
    recs = random_detections(seed, ds, with_empty=seed % 2 == 0)
    for subset in (None, [3, 21]):
        run = recs if subset is None else [r for r in recs if r["image_id"] in subset]
        res = coco_results(run, CATEGORY_IDS)
        ids = sorted(r["image_id"] for r in run)
        a = _run_cocoeval(coco(ds), res, ids, "pycocotools")
        b = _run_cocoeval(coco(ds), res, ids, "faster_coco_eval")
        for k in ("recall", "scores"):
            np.testing.assert_array_equal(np.asarray(a.eval[k]), np.asarray(b.eval[k]))
        np.testing.assert_allclose(
            np.asarray(b.eval["precision"]), np.asarray(a.eval["precision"]), rtol=0, atol=4.5e-16
        )
        sa = evaluate_coco(coco(ds), run, CATEGORY_IDS, per_category=True)
        sb = evaluate_coco(
            coco(ds), run, CATEGORY_IDS, backend="faster_coco_eval", per_category=True
        )
        assert sa.keys() == sb.keys()
        for k in sa:
            assert abs(sa[k] - sb[k]) <= 1e-15, k
    empty = [{**r, "boxes": np.zeros((0, 4)), "scores": [], "labels": []} for r in recs]
    assert evaluate_coco(ds, empty, CATEGORY_IDS) == evaluate_coco(
        ds, empty, CATEGORY_IDS, backend="faster_coco_eval"
    )
