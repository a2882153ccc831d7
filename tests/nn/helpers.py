"""Independent numpy oracles (float64) for the detection-toolkit tests."""

from __future__ import annotations

import numpy as np
import torch


def random_boxes(
    gen: torch.Generator, *shape: int, scale: float = 100.0, dtype=torch.float64
) -> torch.Tensor:
    """Corner boxes with positive sizes: (*shape, 4)."""
    xy = torch.rand(*shape, 2, generator=gen, dtype=dtype) * scale
    wh = torch.rand(*shape, 2, generator=gen, dtype=dtype) * scale * 0.5 + 1.0
    return torch.cat((xy, xy + wh), dim=-1)


def np_box_iou(a: np.ndarray, b: np.ndarray, fmt: str = "corner", offset: float = 0.0):
    """MXNet's numpy oracle from test_contrib_operator.test_box_iou_op, plus offset."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if fmt == "center":
        a = np.concatenate([a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2], axis=1)
        b = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)
    out = np.zeros((len(a), len(b)))
    for i, (al, at, ar, ab) in enumerate(a):
        for j, (bl, bt, br, bb) in enumerate(b):
            w = max(0.0, min(ar, br) - max(al, bl) + offset)
            h = max(0.0, min(ab, bb) - max(at, bt) + offset)
            inter = w * h
            area_a = max(0.0, ar - al + offset) * max(0.0, ab - at + offset)
            area_b = max(0.0, br - bl + offset) * max(0.0, bb - bt + offset)
            union = area_a + area_b - inter
            out[i, j] = inter / union if inter > 0 else 0.0
    return out


def np_bipartite(scores: np.ndarray, threshold: float, is_ascend: bool = False):
    """MXNet's bipartite_matching kernel: stable sort, scan, stop at the first bad score."""
    n, m = scores.shape
    flat = scores.reshape(-1)
    order = np.argsort(flat if is_ascend else -flat, kind="stable")
    row = -np.ones(n, dtype=np.int64)
    col = -np.ones(m, dtype=np.int64)
    for idx in order:
        r, c = divmod(int(idx), m)
        if row[r] == -1 and col[c] == -1:
            s = flat[idx]
            if (not is_ascend and s > threshold) or (is_ascend and s < threshold):
                row[r] = c
                col[c] = r
            else:
                break
    return row, col
