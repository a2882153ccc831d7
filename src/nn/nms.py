"""Batched detection post-processing with MXNet ``contrib.box_nms`` semantics.

The suppression itself is ``src.ops.batched_nms`` (the one NMS implementation of the repo); this
module adds MXNet's layout handling: rows of ``K`` values holding a class id, a score and 4
coordinates at configurable positions, score / background filtering, per-image top-k, and a
fixed-shape output sorted by score with ``-1`` rows for everything removed.
"""

from __future__ import annotations

import torch

from src.ops import batched_nms

from .bbox import center_to_corner, corner_to_center
from .sampler import select_top_k

__all__ = ["box_nms"]


def box_nms(
    data: torch.Tensor,
    overlap_thresh: float = 0.5,
    valid_thresh: float = 0.0,
    topk: int = -1,
    coord_start: int = 2,
    score_index: int = 1,
    id_index: int = -1,
    background_id: int = -1,
    force_suppress: bool = False,
    in_format: str = "corner",
    out_format: str = "corner",
    offset: float = 0,
) -> torch.Tensor:
    """Non-maximum suppression over ``(..., N, K)`` rows, like ``mx.contrib.nd.box_nms``.

    A row is valid when its score is ``> valid_thresh`` and (with ``id_index >= 0``) its id is
    not ``background_id``. Per image, the ``topk`` best valid rows (all if ``topk < 0``) go
    through greedy NMS: a row is suppressed by a higher-scored kept row whose IoU with it is
    ``> overlap_thresh``, of the same id unless ``force_suppress`` or ``id_index < 0``.

    Returns a tensor shaped like ``data``: per image the kept rows sorted by decreasing score
    (ties: lower input index first), coordinates converted to ``out_format``, then rows of -1.
    Leading dimensions are flattened into one batch; suppression of all images is done with
    ``src.ops.batched_nms`` one image at a time (inference-side; matching needs no NMS).
    """
    if in_format not in ("corner", "center") or out_format not in ("corner", "center"):
        raise ValueError("in_format and out_format must be 'corner' or 'center'")
    shape = data.shape
    n, k = shape[-2], shape[-1]
    x = data.reshape(-1, n, k)
    bsz = x.shape[0]
    scores = x[..., score_index]
    coords = x[..., coord_start : coord_start + 4]
    corners = center_to_corner(coords) if in_format == "center" else coords
    valid = scores > valid_thresh
    if id_index >= 0:
        ids = x[..., id_index]
        valid &= ids != background_id
    if topk >= 0:
        valid = select_top_k(scores, valid, topk)
    if id_index >= 0 and not force_suppress:
        group = ids.round().long() - min(background_id, -1)  # >= 0 for every id >= -1
    else:
        group = torch.zeros_like(scores, dtype=torch.long)

    out = torch.full_like(x, -1)
    for b in range(bsz):  # inference post-processing: one batched_nms call per image
        idx = valid[b].nonzero().squeeze(-1)
        keep = idx[
            batched_nms(
                corners[b, idx], scores[b, idx], group[b, idx], overlap_thresh, offset=offset
            )
        ]
        rows = x[b, keep]
        if out_format != in_format:
            conv = corner_to_center if out_format == "center" else center_to_corner
            rows = rows.clone()
            rows[:, coord_start : coord_start + 4] = conv(rows[:, coord_start : coord_start + 4])
        out[b, : keep.numel()] = rows
    return out.reshape(shape)
