import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from src.nn import (
    BBoxBatchIOU,
    BipartiteMatcher,
    CompositeMatcher,
    MaximumMatcher,
    bipartite_matching,
)
from tests.nn.helpers import np_bipartite, random_boxes


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_bipartite_mxnet_golden(dtype):
    # apache/mxnet tests/python/unittest/test_contrib_operator.py::test_bipartite_matching_op
    x = torch.tensor([[0.5, 0.6], [0.1, 0.2], [0.3, 0.4]], dtype=dtype)
    row, col = bipartite_matching(x, threshold=1e-12, is_ascend=False)
    assert row.tolist() == [1, -1, 0] and col.tolist() == [2, 0]
    row, col = bipartite_matching(x, threshold=100, is_ascend=True)
    assert row.tolist() == [-1, 0, 1] and col.tolist() == [1, 2]


def test_bipartite_threshold_is_strict_and_stops():
    x = torch.tensor([[0.5, 0.0], [0.0, 0.3]], dtype=torch.float64)
    row, _ = bipartite_matching(x, threshold=0.3)
    assert row.tolist() == [0, -1]  # 0.3 is not strictly above 0.3


@settings(max_examples=80, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 7), st.integers(1, 5)),
        elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0]),
    ),
    st.sampled_from([1e-12, 0.3]),
    st.booleans(),
)
def test_bipartite_equals_mxnet_scan_with_ties(x, thr, asc):
    thr = 0.8 if asc else thr
    ref_row, ref_col = np_bipartite(x, thr, asc)
    for prune in (False, True):  # the full greedy and the exact candidate-row pruning
        row, col = bipartite_matching(torch.from_numpy(x), thr, asc, prune=prune)
        assert row.tolist() == ref_row.tolist() and col.tolist() == ref_col.tolist()
    # a ground truth is never assigned twice, and rows/cols agree
    matched = row[row >= 0]
    assert len(set(matched.tolist())) == len(matched)
    for r, c in enumerate(row.tolist()):
        if c >= 0:
            assert col[c].item() == r


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bipartite_pruned_many_rows_and_ties(prune, dtype):
    gen = torch.Generator().manual_seed(3)
    # coarse values give many ties, including at each column's k-th largest value
    x = (torch.randint(0, 6, (5, 300, 7), generator=gen) / 5).to(dtype)
    x[1, :, 5:] = -1  # padding columns
    x[2] = 0
    x[3, :, 0] = 1.0  # a whole column tied at its top
    row, col = bipartite_matching(x, prune=prune)
    for i in range(5):
        r, c = np_bipartite(x[i].double().numpy(), 1e-12)
        assert row[i].tolist() == r.tolist() and col[i].tolist() == c.tolist()
    row_a, col_a = bipartite_matching(-x, threshold=-0.5, is_ascend=True, prune=prune)
    for i in range(5):
        r, c = np_bipartite(-x[i].double().numpy(), -0.5, True)
        assert row_a[i].tolist() == r.tolist() and col_a[i].tolist() == c.tolist()


def test_bipartite_batched_equals_per_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 40, 7, generator=gen, dtype=torch.float64)
    x[2, :, 4:] = -1  # padding gts
    x[3] = 0  # nothing overlaps
    row, col = bipartite_matching(x)
    for i in range(6):
        r, c = np_bipartite(x[i].numpy(), 1e-12)
        assert row[i].tolist() == r.tolist() and col[i].tolist() == c.tolist()
    assert (row[3] == -1).all() and (row[2] < 4).all()
    # extra leading dims
    row4, _ = bipartite_matching(x.reshape(2, 3, 40, 7))
    assert torch.equal(row4.reshape(6, 40), row)


def _np_bipartite_matcher(x, thr, eps, share_max):
    """GluonCV BipartiteMatcher in numpy, with our threshold fix on the sharing step."""
    match, _ = np_bipartite(x, thr)
    pargmax = x.argmax(-1)
    pmax = x.max(-1)
    gmax = x.max(0)
    out = match.copy()
    for i in range(x.shape[0]):
        if out[i] >= 0:
            continue
        if share_max:
            tie = any(x[i, j] + eps >= gmax[j] and x[i, j] > thr for j in range(x.shape[1]))
        else:
            tie = pmax[i] + eps >= gmax[pargmax[i]] and pmax[i] > thr
        out[i] = pargmax[i] if tie else -1
    return out


@pytest.mark.parametrize("share_max", [True, False])
def test_bipartite_matcher_share_max_against_oracle(share_max):
    x = torch.tensor(
        [
            [0.9, 0.1, 0.0],
            [0.9, 0.2, 0.0],  # ties gt0's best: shared
            [0.3, 0.4, 0.0],  # best for gt1 -> bipartite
            [0.1, 0.4, -1.0],  # ties gt1's best
            [0.05, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    x[:, 2] = -1  # padding gt: must not make every anchor "tie" its max of -1
    out = BipartiteMatcher(share_max=share_max)(x[None])[0]
    assert out.tolist() == _np_bipartite_matcher(x.numpy(), 1e-12, 1e-12, share_max).tolist()
    assert out.tolist() == [0, 0, 1, 1, -1]
    gen = torch.Generator().manual_seed(5)
    for _ in range(20):
        y = torch.randint(0, 4, (9, 4), generator=gen).double() / 4
        got = BipartiteMatcher(share_max=share_max)(y[None])[0].tolist()
        assert got == _np_bipartite_matcher(y.numpy(), 1e-12, 1e-12, share_max).tolist()


def test_bipartite_matcher_ascend_uses_minima():
    d = torch.tensor([[[1.0, 5.0], [0.5, 9.0], [3.0, 2.0]]], dtype=torch.float64)
    out = BipartiteMatcher(threshold=4.0, is_ascend=True)(d)
    # bipartite: (1,0)=0.5 then (2,1)=2.0; row 0 best is gt0 (1.0) not a min of gt0 -> -1
    assert out.tolist() == [[-1, 0, 1]]


def test_maximum_and_composite():
    x = torch.tensor([[[0.2, 0.5], [0.36, 0.1], [0.35, 0.35], [0.1, 0.2], [-1.0, -1.0]]])
    mm = MaximumMatcher(0.35)(x)
    assert mm.tolist() == [[1, 0, 0, -1, -1]]  # >= threshold, ties to the lower index
    comp = CompositeMatcher([BipartiteMatcher(share_max=False), MaximumMatcher(0.35)])(x)
    # bipartite: (0,1)=0.5, then (1,0)=0.36; then maximum fills row 2; row 3 stays -1
    assert comp.tolist() == [[1, 0, 0, -1, -1]]
    with pytest.raises(ValueError):
        CompositeMatcher([])


def test_composite_only_fills_unmatched():
    class Const(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = torch.tensor(v)

        def forward(self, x):
            return self.v

    out = CompositeMatcher([Const([[-1, 2, -1]]), Const([[0, 0, -1]]), Const([[1, 1, 1]])])(None)
    assert out.tolist() == [[0, 2, 1]]


def test_padding_gts_never_matched_end_to_end():
    gen = torch.Generator().manual_seed(1)
    anchors = random_boxes(gen, 200)
    gts = random_boxes(gen, 3, 5)
    gts[0, 2:] = -1
    gts[1, :] = -1  # an image with no ground truth at all
    for offset in (0, 1):
        iou = BBoxBatchIOU(offset=offset)(anchors, gts)
        m = CompositeMatcher([BipartiteMatcher(), MaximumMatcher(0.0)])(iou)
        assert (m[0] < 2).all()
        assert (m[1] == -1).all()
        assert (m[2] >= 0).sum() > 0
