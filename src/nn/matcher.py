"""Matchers for target assignment (port of ``gluoncv.nn.matcher``).

Every matcher takes a score matrix ``x`` of shape ``(..., N, M)`` (usually IoU of N anchors
against M ground truths, batched as ``(B, N, M)``) and returns ``(..., N)`` int64 indices into M,
``-1`` for unmatched. A ``SparseIOU`` (the rows that can matter, see ``src.nn.sparse``) works in
place of a dense ``(B, N, M)`` IoU and gives the same result; a matcher whose thresholds it
cannot serve exactly raises a ``ValueError`` saying which floor to build it with. Padding
ground truths should carry an IoU of -1 (``BBoxBatchIOU`` does this) so that they are never
matched. There is no Python loop over images; the greedy bipartite matcher loops ``min(N, M)``
times over the whole batch at once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .sparse import SparseIOU

__all__ = [
    "bipartite_matching",
    "force_best_anchors",
    "BipartiteMatcher",
    "MaximumMatcher",
    "CompositeMatcher",
]


def bipartite_matching(
    x: torch.Tensor, threshold: float = 1e-12, is_ascend: bool = False, prune: bool | None = None
):
    """Greedy global bipartite matching, batched (MXNet ``contrib.bipartite_matching``).

    Repeatedly takes the best remaining pair (largest score, or smallest if ``is_ascend``) whose
    row and column are both still free, while that score is strictly above ``threshold``
    (strictly below when ascending). Ties go to the first pair in row-major order.

    Args:
        x: ``(..., N, M)`` scores.
        prune: first drop the rows that cannot be chosen (see ``_candidate_rows``). Exact; it
            needs one host read of the candidate count, so by default it runs on CPU only
            (where that read is free) and when ``N`` is much larger than ``M``.

    Returns:
        ``(row_match, col_match)``: ``(..., N)`` column index per row and ``(..., M)`` row index
        per column, int64, -1 where unmatched.
    """
    if isinstance(x, SparseIOU):
        x.check_bipartite("bipartite_matching", threshold, is_ascend, 0.0)
        row, col = bipartite_matching(x.iou, threshold, is_ascend, prune)
        if x.rows.shape[1]:  # compact row ids -> anchor ids
            col = torch.where(col >= 0, x.rows.gather(1, col.clamp(min=0)), col)
        return x.expand(row, -1), col
    *lead, n, m = x.shape
    work = x.reshape(math.prod(lead), n, m)
    if is_ascend:  # smallest-first below threshold == largest-first of the negation above -thr
        work, threshold = -work, -threshold
    bsz = work.shape[0]
    if n == 0 or m == 0 or bsz == 0:
        row_match = torch.full((bsz, n), -1, dtype=torch.long, device=x.device)
        col_match = torch.full((bsz, m), -1, dtype=torch.long, device=x.device)
        return row_match.reshape(*lead, n), col_match.reshape(*lead, m)
    # Candidates strictly above threshold; everything else (and NaN) is -inf for good.
    work = work.masked_fill(~(work > threshold), float("-inf"))
    if prune is None:
        prune = x.device.type == "cpu" and n > 8 * m
    if prune:
        row_match, col_match = _greedy_pruned(work)
    else:
        row_match, col_match = _greedy(work)
    return row_match.reshape(*lead, n), col_match.reshape(*lead, m)


def _greedy(work: torch.Tensor):
    """Greedy on ``(B, N, M)`` scores where -inf marks pairs that may not match (modified)."""
    bsz, n, m = work.shape
    row_match = torch.full((bsz, n), -1, dtype=torch.long, device=work.device)
    col_match = torch.full((bsz, m), -1, dtype=torch.long, device=work.device)
    neg_inf = torch.tensor(float("-inf"), dtype=work.dtype, device=work.device)
    batch = torch.arange(bsz, device=work.device)
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
    return row_match, col_match


def _candidate_rows(work: torch.Tensor) -> torch.Tensor:
    """(B, N) rows that greedy matching can choose: for some column c, a finite score at least
    the k-th largest of that column (k = min(N, M)).

    Why this is exact: when column c is matched at step t <= k, fewer than k rows are taken, so
    its row is among the first k rows of column c in (score desc, row asc) order, all of which
    score >= the k-th largest value. Keeping every row that ties that value keeps ties intact.
    """
    k = min(work.shape[1], work.shape[2])
    kth = work.topk(k, dim=1).values[:, -1:, :]  # (B, 1, M)
    # a column with fewer than k finite scores has kth = -inf: any finite score qualifies
    kth = kth.clamp(min=torch.finfo(work.dtype).min)
    return (work >= kth).any(dim=-1)


def _greedy_pruned(work: torch.Tensor):
    """``_greedy`` on the candidate rows only (kept in ascending order, so ties are unchanged)."""
    bsz, n, m = work.shape
    cand = _candidate_rows(work)
    kmax = int(cand.sum(dim=1).max())  # host read: the size of the reduced problem
    row_match = torch.full((bsz, n), -1, dtype=torch.long, device=work.device)
    if kmax == 0:
        return row_match, torch.full((bsz, m), -1, dtype=torch.long, device=work.device)
    # compact candidate row ids to the left, ascending; empty slots hold n (a dummy row)
    slot = torch.where(cand, cand.cumsum(dim=1) - 1, torch.full_like(cand, kmax, dtype=torch.long))
    rows = torch.full((bsz, kmax + 1), n, dtype=torch.long, device=work.device)
    rows.scatter_(1, slot, torch.arange(n, device=work.device).expand(bsz, n))
    rows = rows[:, :kmax]
    empty = rows == n
    offsets = torch.arange(bsz, device=work.device).unsqueeze(1) * n
    flat = (rows.clamp(max=n - 1) + offsets).reshape(-1)
    sub = work.reshape(-1, m).index_select(0, flat).reshape(bsz, kmax, m)
    sub.masked_fill_(empty.unsqueeze(-1), float("-inf"))
    sub_row, sub_col = _greedy(sub)
    # back to the original row ids
    matched = sub_row >= 0
    row_match.scatter_(
        1,
        torch.where(matched, rows, torch.zeros_like(rows)),
        torch.where(matched, sub_row, torch.full_like(sub_row, -1)),
    )
    # scatter of unmatched slots wrote -1 into row 0; put its true value back
    row0 = torch.where(matched & (rows == 0), sub_row, torch.full_like(sub_row, -1)).amax(dim=1)
    row_match[:, 0] = row0
    col_match = torch.where(
        sub_col >= 0, rows.gather(1, sub_col.clamp(min=0)), torch.full_like(sub_col, -1)
    )
    return row_match, col_match


def _on_kept_rows(matcher: nn.Module, x: SparseIOU) -> torch.Tensor:
    """A matcher on a ``SparseIOU``: check it can serve the matcher exactly, match its kept
    rows (the dense ``(B, R, M)`` IoU), and give every other anchor -1."""
    matcher._check_sparse(x)
    return x.expand(matcher(x.iou), -1)


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

    def __init__(
        self,
        threshold: float = 1e-12,
        is_ascend: bool = False,
        eps: float = 1e-12,
        share_max: bool = True,
    ):
        super().__init__()
        self._threshold = threshold
        self._is_ascend = is_ascend
        self._eps = eps
        self._share_max = share_max

    def _check_sparse(self, x: SparseIOU) -> None:
        x.check_bipartite(type(self).__name__, self._threshold, self._is_ascend, self._eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, SparseIOU):
            return _on_kept_rows(self, x)
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

    def _check_sparse(self, x: SparseIOU) -> None:
        x.check_threshold(type(self).__name__, "threshold", self._threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, SparseIOU):
            return _on_kept_rows(self, x)
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

    def _check_sparse(self, x: SparseIOU) -> None:
        for matcher in self._matchers:
            check = getattr(matcher, "_check_sparse", None)
            if check is None:
                raise TypeError(
                    f"CompositeMatcher: {type(matcher).__name__} does not take a SparseIOU"
                )
            check(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, SparseIOU):  # run on the kept rows, expand once
            return _on_kept_rows(self, x)
        result = self._matchers[0](x)
        for matcher in self._matchers[1:]:
            result = torch.where(result >= 0, result, matcher(x))
        return result


def force_best_anchors(
    best_anchor: torch.Tensor, forcing: torch.Tensor, num_anchors: int
) -> torch.Tensor:
    """For every anchor, the highest-index forcing ground truth whose best anchor it is (the
    SSD / RetinaFace rule "each kept ground truth keeps its best anchor"; unlike
    ``BipartiteMatcher``'s global greedy matching, two ground truths may pick the same anchor,
    and the later one wins, as the reference's sequential loop does).

    Args:
        best_anchor: ``(B, M)`` index of each ground truth's best anchor.
        forcing: ``(B, M)`` bool, the ground truths that force their best anchor.
        num_anchors: N.

    Returns:
        ``(B, N)`` int64 ground-truth index, -1 where no forcing ground truth picked the anchor.
        Deterministic (``scatter_reduce`` with ``amax``): the last ground truth wins, as in a
        sequential ``for j: best_truth_idx[best_prior_idx[j]] = j`` loop.
    """
    b, m = best_anchor.shape
    out = torch.full((b, num_anchors), -1, dtype=torch.long, device=best_anchor.device)
    if m == 0:
        return out
    j = torch.arange(m, device=best_anchor.device).expand(b, m)
    src = torch.where(forcing, j, torch.full_like(j, -1))
    return out.scatter_reduce_(1, best_anchor.long(), src, reduce="amax", include_self=True)
