"""WIDER FACE ground truth: the official .mat files (``wider_face_val.mat`` and
``wider_{easy,medium,hard}_val.mat``) read into, and written from, ``WiderFaceGT``.

Contract: ``WiderFaceGT.keys[i]`` is image i's ``(event, name)``, ``boxes[i]`` its ``(n_i, 4)``
float64 ``x y w h`` and ``keep[setting][i]`` the 0-based indices of the faces that setting keeps
(the .mat ``gt_list`` is 1-based). A missing .mat file raises ``DataError`` naming it.
``load_widerface_gt`` caches one directory, keyed by the files' modification times.

A reader of an on-disk format, so it lives in ``src.data``; ``src.metrics.widerface`` (the
evaluation protocol) imports it from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.base import DataError

SETTINGS = ("easy", "medium", "hard")
GT_FILES = {
    "all": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}

Key = tuple[str, str]  # (event, image name without extension), e.g. ("0--Parade", "0_Parade_..")


@dataclass
class WiderFaceGT:
    """Ground truth in the structure of the official .mat files, flattened.

    ``keys[i]`` is image i's ``(event, name)``; ``boxes[i]`` its ``(n_i, 4)`` float64 ``x y w h``;
    ``keep[setting][i]`` the 0-based indices of the faces that setting keeps.
    """

    keys: list[Key]
    boxes: list[np.ndarray]
    keep: dict[str, list[np.ndarray]]
    _flat: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if len(self.boxes) != n or any(len(v) != n for v in self.keep.values()):
            raise ValueError("WiderFaceGT: keys, boxes and each keep list need one entry per image")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_faces(self) -> int:
        return int(sum(len(b) for b in self.boxes))

    # ----------------------------------------------------------------- builders
    @classmethod
    def from_mat(cls, gt_dir: str | os.PathLike) -> WiderFaceGT:
        """Read the four official .mat files from ``gt_dir`` (scipy.io.loadmat)."""
        from scipy.io import loadmat

        gt_dir = Path(gt_dir)
        mats = {}
        for setting, fname in GT_FILES.items():
            path = gt_dir / fname
            if not path.is_file():
                raise DataError(
                    f"{path}: missing WIDER FACE ground truth file; the directory needs "
                    f"{', '.join(GT_FILES.values())}"
                )
            mats[setting] = loadmat(str(path))
        return cls.from_mat_arrays(
            mats["all"]["event_list"],
            mats["all"]["file_list"],
            mats["all"]["face_bbx_list"],
            {s: mats[s]["gt_list"] for s in SETTINGS},
        )

    @classmethod
    def from_mat_arrays(cls, event_list, file_list, face_bbx_list, gt_lists) -> WiderFaceGT:
        """Build from the arrays ``loadmat`` returns (cell arrays of shape (E, 1))."""
        keys, boxes = [], []
        keep: dict[str, list[np.ndarray]] = {s: [] for s in gt_lists}
        for i in range(len(event_list)):
            event = str(event_list[i][0][0])
            files = file_list[i][0]
            bbx = face_bbx_list[i][0]
            for j in range(len(files)):
                keys.append((event, str(files[j][0][0])))
                boxes.append(np.asarray(bbx[j][0], dtype=np.float64).reshape(-1, 4))
                for s, gl in gt_lists.items():
                    k = np.asarray(gl[i][0][j][0]).reshape(-1).astype(np.int64)
                    keep[s].append(k - 1)
        return cls(keys, boxes, keep)

    @classmethod
    def from_records(
        cls,
        records: Iterable[tuple[str, str, np.ndarray]],
        min_size: Mapping[str, float] | None = None,
    ) -> WiderFaceGT:
        """Ground truth from ``(event, name, boxes_xywh)`` records (e.g. a synthetic split).

        A face is kept by a setting when ``min(w, h) >= min_size[setting]``; the default
        thresholds (easy 32 px, medium 16 px, hard 0 px) imitate WIDER's size-driven settings.
        """
        min_size = dict(min_size or {"easy": 32.0, "medium": 16.0, "hard": 0.0})
        keys, boxes = [], []
        keep: dict[str, list[np.ndarray]] = {s: [] for s in min_size}
        for event, name, b in records:
            b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
            keys.append((str(event), str(name)))
            boxes.append(b)
            side = np.minimum(b[:, 2], b[:, 3])
            for s, m in min_size.items():
                keep[s].append(np.flatnonzero(side >= m).astype(np.int64))
        return cls(keys, boxes, keep)

    def subset(self, events: Iterable[str]) -> WiderFaceGT:
        """The images of the given events only (faster checks on part of the split)."""
        wanted = set(events)
        idx = [i for i, (e, _) in enumerate(self.keys) if e in wanted]
        return WiderFaceGT(
            [self.keys[i] for i in idx],
            [self.boxes[i] for i in idx],
            {s: [v[i] for i in idx] for s, v in self.keep.items()},
        )

    def to_mat(self, gt_dir: str | os.PathLike) -> None:
        """Write the four .mat files in the official structure (for the official tools)."""
        from scipy.io import savemat

        gt_dir = Path(gt_dir)
        gt_dir.mkdir(parents=True, exist_ok=True)
        events: list[str] = []
        per_event: dict[str, list[int]] = {}
        for i, (e, _) in enumerate(self.keys):
            if e not in per_event:
                events.append(e)
                per_event[e] = []
            per_event[e].append(i)

        def cell(items):
            out = np.empty((len(items), 1), dtype=object)
            for r, it in enumerate(items):
                out[r, 0] = it
            return out

        event_list = cell([np.array([e]) for e in events])
        file_list = cell(
            [cell([np.array([self.keys[i][1]]) for i in per_event[e]]) for e in events]
        )
        face_bbx_list = cell(
            [cell([self.boxes[i].astype(np.float64) for i in per_event[e]]) for e in events]
        )
        base = {"event_list": event_list, "file_list": file_list, "face_bbx_list": face_bbx_list}
        savemat(str(gt_dir / GT_FILES["all"]), base)
        for s in SETTINGS:
            gl = cell(
                [
                    cell(
                        [
                            (self.keep[s][i] + 1).astype(np.int32).reshape(-1, 1)
                            for i in per_event[e]
                        ]
                    )
                    for e in events
                ]
            )
            savemat(str(gt_dir / GT_FILES[s]), {**base, "gt_list": gl})

    # --------------------------------------------------------------- flat views
    def flat(self) -> dict:
        """Concatenated boxes (x1 y1 x2 y2 as the reference forms them) and per-image offsets."""
        if not self._flat:
            counts = np.array([len(b) for b in self.boxes], dtype=np.int64)
            starts = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=starts[1:])
            xywh = np.concatenate(self.boxes, axis=0) if len(self.boxes) else np.zeros((0, 4))
            xyxy = xywh.copy()
            xyxy[:, 2] = xywh[:, 2] + xywh[:, 0]
            xyxy[:, 3] = xywh[:, 3] + xywh[:, 1]
            kept = {}
            for s, lists in self.keep.items():
                m = np.zeros(len(xyxy), dtype=bool)
                for i, k in enumerate(lists):
                    if len(k):
                        m[starts[i] + k] = True
                kept[s] = m
            count_face = {s: int(sum(len(k) for k in lists)) for s, lists in self.keep.items()}
            self._flat.update(
                counts=counts, starts=starts, xyxy=xyxy, kept=kept, count_face=count_face
            )
        return self._flat


_GT_CACHE: dict[tuple, WiderFaceGT] = {}


def load_widerface_gt(gt_dir: str | os.PathLike) -> WiderFaceGT:
    """``WiderFaceGT.from_mat`` cached per directory and file modification times."""
    gt_dir = Path(gt_dir).resolve()
    stamp = tuple(
        (gt_dir / f).stat().st_mtime_ns if (gt_dir / f).exists() else None
        for f in GT_FILES.values()
    )
    key = (str(gt_dir), stamp)
    if key not in _GT_CACHE:
        _GT_CACHE.clear()
        _GT_CACHE[key] = WiderFaceGT.from_mat(gt_dir)
    return _GT_CACHE[key]
