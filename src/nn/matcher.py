"""Matchers for target assignment (port of ``gluoncv.nn.matcher``).

Every matcher takes a score matrix ``x`` of shape ``(..., N, M)`` (usually IoU of N anchors
against M ground truths, batched as ``(B, N, M)``) and returns ``(..., N)`` int64 indices into M,
``-1`` for unmatched. Padding ground truths should carry an IoU of -1 (``BBoxBatchIOU`` does this)
so that they are never matched. There is no Python loop over images; the greedy bipartite matcher
loops ``min(N, M)`` times over the whole batch at once.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["bipartite_matching", "BipartiteMatcher", "MaximumMatcher", "CompositeMatcher"]


def bipartite_matching(x: torch.Tensor, threshold: float = 1e-12, is_ascend: bool = False):
    """Greedy global bipartite matching, batched (MXNet ``contrib.bipartite_matching``).

    Repeatedly takes the best remaining pair (largest score, or smallest if ``is_ascend``) whose
    row and column are both still free, while that score is strictly above ``threshold``
    (strictly below when ascending). Ties go to the first pair in row-major order.

    Args:
        x: ``(..., N, M)`` scores.

    Returns:
        ``(row_match, col_match)``: ``(..., N)`` column index per row and ``(..., M)`` row index
        per column, int64, -1 where unmatched.
    """
    *lead, n, m = x.shape
    work = x.reshape(-1, n, m)
    if is_ascend:  # smallest-first below threshold == largest-first of the negation above -thr
        work, threshold = -work, -threshold
    bsz = work.shape[0]
    row_match = torch.full((bsz, n), -1, dtype=torch.long, device=x.device)
    col_match = torch.full((bsz, m), -1, dtype=torch.long, device=x.device)
    if n == 0 or m == 0 or bsz == 0:
        return row_match.reshape(*lead, n), col_match.reshape(*lead, m)
    # Candidates strictly above threshold; everything else (and NaN) is -inf for good.
    neg_inf = torch.tensor(float("-inf"), dtype=work.dtype, device=x.device)
    work = torch.where(work > threshold, work, neg_inf)
    batch = torch.arange(bsz, device=x.device)
    for _ in range(min(n, m)):
        best, flat = work.reshape(bsz, -1).max(dim=1)  # first max in row-major order
        ok = best > neg_inf
        r = torch.div(flat, m, rounding_mode="floor")
        c = flat % m
        # write the pair where ok, else a harmless self-assignment of the current value
        row_match[batch, r] = torch.where(ok, c, row_match[batch, r])
        col_match[batch, c] = torch.where(ok, r, col_match[batch, c])
        # remove the row and the column of the chosen pair
        work[batch, r, :] = torch.where(ok[:, None], neg_inf, work[batch, r, :])
        work[batch, :, c] = torch.where(ok[:, None], neg_inf, work[batch, :, c])
    return row_match.reshape(*lead, n), col_match.reshape(*lead, m)


class BipartiteMatcher(nn.Module):
    """Bipartite (greedy global best pair) matching, then best-match sharing.

    After the bipartite step, an anchor left unmatched is also matched to its best ground truth
    ``j`` when its score equals (within ``eps``) the best score any anchor reaches for a ground
    truth (``share_max=True``: for any ground truth; ``share_max=False``: for ``j`` itself), so that
    anchors tying the bipartite winner are not turned into negatives.

    Args:
        threshold: only scores strictly above it match (strictly below when ``is_ascend``).
        is_ascend: smaller scores are better (e.g. distances).
        eps: tolerance of the tie test.
        share_max: see above (GluonCV recommends True for Faster R-CNN, False for SSD).

    Deviation from GluonCV: the sharing step also requires the score to pass ``threshold``, so a
    padding ground truth (IoU -1 everywhere, whose "best score" is -1) cannot match every anchor;
    with ``is_ascend`` the sharing uses minima.
    """

    def __init__(self, threshold: float = 1e-12, is_ascend: bool = False, eps: float = 1e-12,
                 share_max: bool = True):
        super().__init__()
        self._threshold = threshold
        self._is_ascend = is_ascend
        self._eps = eps
        self._share_max = share_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        match, _ = bipartite_matching(x, self._threshold, self._is_ascend)
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            return match
        s, thr = (-x, -self._threshold) if self._is_ascend else (x, self._threshold)
        pmax, pargmax = s.max(dim=-1)  # (..., N) best gt per anchor (first on ties)
        gmax = s.max(dim=-2, keepdim=True).values  # (..., 1, M) best anchor score per gt
        if self._share_max:
            tie = ((s + self._eps >= gmax) & (s > thr)).any(dim=-1)
        else:
            best_of_gt = gmax.squeeze(-2).gather(-1, pargmax)
            tie = (pmax + self._eps >= best_of_gt) & (pmax > thr)
        shared = torch.where(tie, pargmax, torch.full_like(pargmax, -1))
        return torch.where(match < 0, shared, match)


class MaximumMatcher(nn.Module):
    """Match each anchor to its best ground truth when that score is ``>= threshold``.

    Ties between ground truths go to the lowest index.
    """

    def __init__(self, threshold: float):
        super().__init__()
        self._threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 0:
            return torch.full(x.shape[:-1], -1, dtype=torch.long, device=x.device)
        best, argmax = x.max(dim=-1)
        return torch.where(best >= self._threshold, argmax, torch.full_like(argmax, -1))


class CompositeMatcher(nn.Module):
    """Combine matchers: each later matcher only fills entries that are still -1."""

    def __init__(self, matchers):
        super().__init__()
        matchers = list(matchers)
        if not matchers:
            raise ValueError("At least one matcher required.")
        for m in matchers:
            if not isinstance(m, nn.Module):
                raise TypeError(f"matchers must be nn.Modules, got {type(m).__name__}")
        self._matchers = nn.ModuleList(matchers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self._matchers[0](x)
        for matcher in self._matchers[1:]:
            result = torch.where(result >= 0, result, matcher(x))
        return result
