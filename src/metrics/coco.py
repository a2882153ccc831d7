"""COCO box AP through ``COCOeval`` (pycocotools, or faster-coco-eval's C++ port of it).

Inputs are plain arrays, one record per image that was run::

    {"image_id": 397133, "boxes": (K, 4) x1 y1 x2 y2 in original pixels,
     "scores": (K,), "labels": (K,) contiguous 0..C-1}

plus ``label_to_category_id`` (a sequence indexed by label, or a mapping), because results are
written with the dataset's ORIGINAL category ids (COCO's 80 classes have ids 1..90 with gaps)
and boxes as ``x y w h`` with ``w = x2 - x1`` (COCO's continuous pixel convention, no +1).

* ``coco_results``: the standard results list (``image_id, category_id, bbox, score``);
  ``write_coco_results`` writes it as the json accepted by the evaluation server and by
  ``COCO.loadRes``. Values are Python floats, written with the shortest round-trip repr, so a
  written file evaluates exactly as the in-memory list.
* ``evaluate_coco``: the 12 ``COCOeval.stats`` as ``coco_AP, coco_AP50, coco_AP75, coco_APs,
  coco_APm, coco_APl, coco_AR1, coco_AR10, coco_AR100, coco_ARs, coco_ARm, coco_ARl`` (the Task
  adds ``val/``); ``per_category=True`` adds ``coco_AP_<category name>`` (spaces -> ``_``;
  AP@[.5:.95], area all, 100 detections; -1 for a category without ground truth in the
  evaluated images).

Subsets: only the images that were run are evaluated (``params.imgIds`` = the image ids of the
records, also those with zero detections), so ``trainer.limit_val_batches`` gives the AP of
those images, not an AP dragged down by images never shown to the model. Pass ``img_ids`` to
choose the set explicitly (``gt.getImgIds()`` for all).

Zero detections: pycocotools' ``loadRes`` fails on an empty list; an empty results set is built
directly instead and COCOeval runs as usual: AP / AR are 0.0 where the ground truth has boxes
and -1.0 (COCOeval's "undefined") for an area range with no ground-truth box. These values are
reported as COCOeval gives them; -1 is not a score.

pycocotools prints its progress and the summary table to stdout; here it is captured and sent to
this module's logger at DEBUG level. ``backend="faster_coco_eval"`` (``pip install
faster-coco-eval``) runs the same evaluation in C++; tests/detection_eval checks that its stats
match pycocotools' on our cases (the same matches: identical recall and score arrays; its C++
precision division can differ from numpy's in the last bit, so stats agree to ~1e-16, not always
bit for bit) and ``benchmarks/coco_eval.py`` compares them at val2017 size. pycocotools stays
the default.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.utils.errors import UserError

log = logging.getLogger(__name__)

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
BACKENDS = ("pycocotools", "faster_coco_eval")


class CocoEvalError(UserError):
    """Detections that do not fit the ground truth (unknown image, label or category)."""


# ---------------------------------------------------------------------- helpers
def _to_numpy(x: Any, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@contextlib.contextmanager
def _quiet(what: str):
    """Capture pycocotools' prints and pass them to the log (DEBUG)."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            log.debug("%s:\n%s", what, text)


def load_coco_gt(gt: Any) -> Any:
    """A ``pycocotools.coco.COCO`` from a COCO object, an annotations json path or its dict."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    coco = COCO()
    if isinstance(gt, Mapping):
        coco.dataset = copy.deepcopy(dict(gt))
    else:
        path = Path(gt)
        if not path.is_file():
            raise CocoEvalError(f"{path}: COCO annotation file not found")
        try:
            coco.dataset = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CocoEvalError(f"{path}: not a COCO annotation json ({e})") from None
        if not isinstance(coco.dataset, dict):
            raise CocoEvalError(f"{path}: not a COCO annotation json (top level is not an object)")
    with _quiet("COCO index"):
        coco.createIndex()
    return coco


def _category_lookup(label_to_category_id: Mapping[int, int] | Sequence[int]) -> dict[int, int]:
    if isinstance(label_to_category_id, Mapping):
        return {int(k): int(v) for k, v in label_to_category_id.items()}
    return {i: int(c) for i, c in enumerate(label_to_category_id)}


# ---------------------------------------------------------------------- results
def coco_results(
    detections: Iterable[Mapping[str, Any]],
    label_to_category_id: Mapping[int, int] | Sequence[int],
) -> list[dict[str, Any]]:
    """Per-image ``{"image_id", "boxes" xyxy, "scores", "labels"}`` -> COCO results list.

    Each result is ``{"image_id": int, "category_id": original id, "bbox": [x, y, w, h],
    "score": float}`` with ``w = x2 - x1``, ``h = y2 - y1``. A label missing from the mapping
    raises ``CocoEvalError``.
    """
    lookup = _category_lookup(label_to_category_id)
    out: list[dict[str, Any]] = []
    for rec in detections:
        image_id = int(rec["image_id"])
        boxes = _to_numpy(rec["boxes"], np.float64).reshape(-1, 4)
        scores = _to_numpy(rec["scores"], np.float64).reshape(-1)
        labels = _to_numpy(rec["labels"]).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise CocoEvalError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(labels)} labels (must be equal)"
            )
        xywh = boxes.copy()
        xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
        for b, s, lab in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            cat = lookup.get(int(lab))
            if cat is None:
                raise CocoEvalError(
                    f"image {image_id}: label {int(lab)} has no category id "
                    f"(label_to_category_id knows {sorted(lookup)[:10]}...)"
                )
            out.append({"image_id": image_id, "category_id": cat, "bbox": b, "score": s})
    return out


def write_coco_results(
    path: str | os.PathLike,
    detections: Iterable[Mapping[str, Any]] | list[dict[str, Any]],
    label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
) -> Path:
    """Write the COCO results json (a list of ``image_id, category_id, bbox, score``).

    ``detections`` are per-image records (then ``label_to_category_id`` is required) or an
    already built results list (``label_to_category_id=None``). Atomic write.
    """
    if label_to_category_id is None:
        results = list(detections)
    else:
        results = coco_results(detections, label_to_category_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results))
    os.replace(tmp, path)
    return path


def _check_results(gt: Any, results: list[dict[str, Any]]) -> None:
    img_ids = set(gt.getImgIds())
    cat_ids = set(gt.getCatIds())
    for r in results:
        if r["image_id"] not in img_ids:
            raise CocoEvalError(
                f"detections name image_id {r['image_id']}, not in the ground truth"
            )
        if r["category_id"] not in cat_ids:
            raise CocoEvalError(
                f"detections name category_id {r['category_id']}, not in the ground truth "
                f"categories {sorted(cat_ids)}"
            )


# ---------------------------------------------------------------------- evaluation
def _empty_results(gt: Any, coco_cls: Any) -> Any:
    dt = coco_cls()
    dt.dataset = {
        "images": list(gt.dataset.get("images", [])),
        "categories": copy.deepcopy(gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with _quiet("COCO index"):
        dt.createIndex()
    return dt


def _run_cocoeval(gt: Any, results: list[dict[str, Any]], img_ids, backend: str):
    """Run evaluate / accumulate / summarize; return the evaluator."""
    results = copy.deepcopy(results)  # loadRes adds area, id, iscrowd, segmentation in place
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        with _quiet("pycocotools COCOeval"):
            dt = gt.loadRes(results) if results else _empty_results(gt, type(gt))
            ev = COCOeval(gt, dt, "bbox")
            if img_ids is not None:
                ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval
        except ImportError:
            raise CocoEvalError(
                "backend=faster_coco_eval needs `pip install faster-coco-eval`"
            ) from None
        fgt = faster_coco_eval.COCO(copy.deepcopy(gt.dataset))
        with _quiet("faster_coco_eval COCOeval"):
            dt = fgt.loadRes(results)
            ev = faster_coco_eval.COCOeval_faster(
                fgt, dt, "bbox", print_function=lambda *a: log.debug(" ".join(map(str, a)))
            )
            if img_ids is not None:
                ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev
    raise CocoEvalError(f"COCO eval backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def _per_category_ap(ev: Any, gt: Any) -> dict[str, float]:
    """AP@[.5:.95] per category (area all, maxDets 100), -1 where COCOeval has no value."""
    prec = np.asarray(ev.eval["precision"])  # (T, R, K, A, M)
    out = {}
    cat_ids = list(ev.params.catIds)
    for k, cid in enumerate(cat_ids):
        p = prec[:, :, k, 0, -1]
        p = p[p > -1]
        name = str(gt.cats[cid].get("name", cid)).replace(" ", "_")  # "traffic_light"
        out[f"coco_AP_{name}"] = float(np.mean(p)) if p.size else -1.0
    return out


def evaluate_coco_results(
    gt: Any,
    results: list[dict[str, Any]] | str | os.PathLike,
    img_ids: Iterable[int] | None = None,
    backend: str = "pycocotools",
    per_category: bool = False,
) -> dict[str, float]:
    """COCOeval (bbox) stats of a COCO results list or results json against ``gt``.

    gt: ``pycocotools.coco.COCO``, annotation json path or its dict. img_ids: the images to
    evaluate (``params.imgIds``); None = every ground-truth image (COCOeval's default).
    """
    gt = load_coco_gt(gt)
    if not isinstance(results, list):
        path = Path(results)
        if not path.is_file():
            raise CocoEvalError(f"{path}: COCO results file not found")
        results = json.loads(path.read_text())
        if not isinstance(results, list):
            raise CocoEvalError(f"{path}: a COCO results json is a list of detections")
    _check_results(gt, results)
    ids = None
    if img_ids is not None:
        ids = sorted({int(i) for i in img_ids})
        unknown = set(ids) - set(gt.getImgIds())
        if unknown:
            raise CocoEvalError(f"img_ids not in the ground truth: {sorted(unknown)[:10]}")
    ev = _run_cocoeval(gt, results, ids, backend)
    stats = np.asarray(ev.stats, dtype=np.float64)[: len(STAT_NAMES)]
    out = {f"coco_{n}": float(v) for n, v in zip(STAT_NAMES, stats)}
    if per_category:
        out.update(_per_category_ap(ev, gt))
    return out


def evaluate_coco(
    gt: Any,
    detections: Iterable[Mapping[str, Any]],
    label_to_category_id: Mapping[int, int] | Sequence[int],
    img_ids: Iterable[int] | None = None,
    backend: str = "pycocotools",
    per_category: bool = False,
) -> dict[str, float]:
    """COCO box AP / AR of per-image detections (see the module docstring).

    img_ids: None = the images that have a record in ``detections`` (a record with zero boxes
    still counts: the image was run), so a partial validation pass is scored on what it ran.
    """
    detections = list(detections)
    if img_ids is None:
        img_ids = [int(r["image_id"]) for r in detections]
        if not img_ids:
            raise CocoEvalError("no images to evaluate: detections is empty")
    results = coco_results(detections, label_to_category_id)
    return evaluate_coco_results(gt, results, img_ids, backend, per_category)
