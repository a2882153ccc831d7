import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.nn import HardNegativeSampler, NaiveSampler, OHEMSampler, QuotaSampler, select_top_k


def test_naive_sampler():
    x = torch.tensor([[0, -1, 3, -1]])
    assert NaiveSampler()(x).tolist() == [[1.0, -1.0, 1.0, -1.0]]


def test_select_top_k_ties_and_quota_larger_than_eligible():
    s = torch.tensor([[0.5, 0.9, 0.5, 0.5, float("nan")], [1.0, 2.0, 3.0, 4.0, 5.0]])
    e = torch.tensor([[True, False, True, True, True], [True, True, False, False, True]])
    out = select_top_k(s, e, torch.tensor([2, 10]))
    assert out.tolist() == [[True, False, True, False, False], [True, True, False, False, True]]


def _np_ohem(x, logits, ious, ratio, min_samples, thresh):
    """Per-image numpy oracle: GluonCV OHEMSampler with negatives limited to eligible ones."""
    out = np.zeros(x.shape)
    for b in range(x.shape[0]):
        pos = x[b] >= 0
        npos = int(pos.sum())
        nneg = min(max(min_samples, int(math.floor(ratio * npos))), x.shape[1] - npos)
        lg = logits[b]
        mx = lg.max(-1, keepdims=True)
        score = -(lg[:, 0] - mx[:, 0] - np.log(np.exp(lg - mx).sum(-1)))
        elig = ~pos & (ious[b].max(-1) < thresh)
        cand = [i for i in np.argsort(-score, kind="stable") if elig[i]][:nneg]
        out[b, pos] = 1
        out[b, cand] = -1
    return out


def test_ohem_against_per_image_oracle():
    gen = torch.Generator().manual_seed(0)
    b, n, m, c = 4, 60, 3, 5
    x = torch.randint(-1, m, (b, n), generator=gen)
    x[1] = -1  # no positive: min_samples still gives negatives
    x[2, :50] = torch.randint(0, m, (50,), generator=gen)  # few negatives left
    logits = torch.randn(b, n, c, generator=gen, dtype=torch.float64)
    ious = torch.rand(b, n, m, generator=gen, dtype=torch.float64)
    for ratio, min_samples, thresh in [(3.0, 0, 0.5), (1.5, 4, 0.7), (7.0, 2, 1.1)]:
        got = OHEMSampler(ratio, min_samples, thresh)(x, logits, ious)
        ref = _np_ohem(x.numpy(), logits.numpy(), ious.numpy(), ratio, min_samples, thresh)
        np.testing.assert_array_equal(got.numpy(), ref)
        # a positive is never turned into a negative
        assert (got[x >= 0] == 1).all()


def test_ohem_accepts_max_ious():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-1, 2, (2, 20), generator=gen)
    logits = torch.randn(2, 20, 3, generator=gen)
    ious = torch.rand(2, 20, 2, generator=gen)
    a = OHEMSampler(2.0)(x, logits, ious)
    b = OHEMSampler(2.0)(x, logits, ious.max(-1).values)
    assert torch.equal(a, b)


def test_hard_negative_sampler_retinaface_7_to_1():
    gen = torch.Generator().manual_seed(2)
    b, n = 3, 500
    matches = torch.full((b, n), -1)
    matches[0, torch.randperm(n, generator=gen)[:10]] = 0
    matches[2, :3] = 1
    losses = torch.rand(b, n, generator=gen, dtype=torch.float64)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[2, 3:400] = False  # only 100 anchors may be negative in image 2
    out = HardNegativeSampler(ratio=7)(matches, losses, valid)
    assert (out > 0).sum(1).tolist() == [10, 0, 3]
    assert (out < 0).sum(1).tolist() == [70, 0, 21]
    assert ((out < 0) & ~valid).sum() == 0
    # the chosen negatives are the hardest: biubug6 formulation (loss of positives set to 0,
    # sort descending, rank < num_neg) on image 0
    lc = losses[0].clone()
    lc[matches[0] >= 0] = 0
    rank = torch.empty(n, dtype=torch.long)
    rank[lc.argsort(descending=True, stable=True)] = torch.arange(n)
    assert torch.equal(out[0] < 0, rank < 70)
    out2 = HardNegativeSampler(ratio=7, min_samples=5)(matches, losses)
    assert (out2 < 0).sum(1).tolist() == [70, 5, 21]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 80),
    st.integers(1, 64),
    st.floats(0.1, 0.9),
    st.sampled_from([None, 0.3]),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_quota_sampler_exact_quotas(b, n, num_sample, pos_ratio, neg_ratio, fill, seed):
    if neg_ratio is not None and neg_ratio + pos_ratio > 1:
        neg_ratio = 1 - pos_ratio
    gen = torch.Generator().manual_seed(seed)
    matches = torch.randint(-1, 3, (b, n), generator=gen)
    ious = torch.rand(b, n, 3, generator=gen)
    sampler = QuotaSampler(
        num_sample,
        0.7,
        0.3,
        0.05,
        pos_ratio,
        neg_ratio,
        fill,
        generator=torch.Generator().manual_seed(seed),
    )
    out = sampler(matches, ious)
    imax = ious.max(-1).values
    cand_pos = (matches >= 0) | (imax >= 0.7)
    cand_neg = ~cand_pos & (imax < 0.3) & (imax >= 0.05)
    max_pos = int(round(pos_ratio * num_sample))
    max_neg = int((1 - pos_ratio if neg_ratio is None else neg_ratio) * num_sample)
    for i in range(b):  # per-image quotas, no leak across the batch
        npos = int((out[i] > 0).sum())
        assert npos == min(int(cand_pos[i].sum()), max_pos)
        quota = max(num_sample - npos, max_neg) if fill else max_neg
        assert int((out[i] < 0).sum()) == min(int(cand_neg[i].sum()), quota)
        assert ((out[i] > 0) <= cand_pos[i]).all() and ((out[i] < 0) <= cand_neg[i]).all()


def test_quota_sampler_is_per_image_and_reproducible():
    # image 0 has few positives (its negative quota grows), image 1 has many: in GluonCV the
    # grown quota of image 0 leaked into image 1
    matches = torch.full((2, 200), -1)
    matches[0, :2] = 0
    matches[1, :150] = 0
    ious = torch.zeros(2, 200, 1)
    s = QuotaSampler(64, 0.5, 0.5, pos_ratio=0.25, generator=torch.Generator().manual_seed(0))
    out = s(matches, ious)
    assert (out[0] > 0).sum() == 2 and (out[0] < 0).sum() == 62
    assert (out[1] > 0).sum() == 16 and (out[1] < 0).sum() == 48
    s2 = QuotaSampler(64, 0.5, 0.5, pos_ratio=0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s2(matches, ious), out)
    # explicit neg_ratio works (GluonCV raised AttributeError); no fill
    s3 = QuotaSampler(64, 0.5, 0.5, pos_ratio=0.25, neg_ratio=0.5, fill_negative=False)
    out3 = s3(matches, ious)
    assert (out3[0] < 0).sum() == 32 and (out3[1] < 0).sum() == 32
    with pytest.raises(ValueError):
        QuotaSampler(64, 0.5, 0.5, pos_ratio=0.6, neg_ratio=0.5)


def test_quota_sampler_uniform_choice():
    # every positive candidate is equally likely to be kept
    matches = torch.zeros(400, 10, dtype=torch.long)
    out = QuotaSampler(4, 0.5, 0.5, pos_ratio=0.5, generator=torch.Generator().manual_seed(1))(
        matches, torch.ones(400, 10, 1)
    )
    freq = (out > 0).double().mean(0)
    assert torch.allclose(freq, torch.full((10,), 0.2, dtype=torch.float64), atol=0.07)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                0.0,
                -0.0,
                1.5,
                -1.5,
                2.0,
                -3.0,
                1e-30,
                -1e-30,
                float("inf"),
                float("-inf"),
                float("nan"),
                7.0,
            ]
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 45),
    st.integers(0, 2**31),
)
def test_select_top_k_packed_path_equals_sort_path(values, k, seed):
    gen = torch.Generator().manual_seed(seed)
    s32 = torch.tensor([values, values[::-1]], dtype=torch.float32)
    eligible = torch.rand(s32.shape, generator=gen) > 0.3
    quota = torch.tensor([k, max(0, k - 3)])
    fast = select_top_k(s32, eligible, quota)  # CPU float32: packed int64 topk
    slow = select_top_k(s32.double(), eligible, quota)  # float64: stable sort
    assert torch.equal(fast, slow)
    assert torch.equal(select_top_k(s32, eligible, k), select_top_k(s32.double(), eligible, k))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 60),
    st.floats(0.5, 8),
    st.integers(0, 5),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**31),
)
def test_hard_negative_quotas_exact_and_hardest(b, n, ratio, min_samples, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    matches = torch.randint(-1, 2, (b, n), generator=gen) * (torch.rand(b, n, generator=gen) < 0.3)
    matches = torch.where(matches == 0, -1, matches)
    losses = (torch.randint(0, 5, (b, n), generator=gen) / 4).to(dtype)  # many ties
    valid = torch.rand(b, n, generator=gen) > 0.2
    out = HardNegativeSampler(ratio, min_samples)(matches, losses, valid)
    for i in range(b):
        pos = matches[i] >= 0
        npos = int(pos.sum())
        elig = ~pos & valid[i]
        quota = min(max(min_samples, math.floor(ratio * npos)), n - npos)
        neg = out[i] < 0
        assert torch.equal(out[i] > 0, pos)
        assert int(neg.sum()) == min(quota, int(elig.sum()))
        assert not (neg & ~elig).any()
        if neg.any() and (elig & ~neg).any():
            assert losses[i][neg].min() >= losses[i][elig & ~neg].max()
            # ties at the boundary go to the lower index
            edge = losses[i][neg].min()
            tied_out = (elig & ~neg & (losses[i] == edge)).nonzero()
            tied_in = (neg & (losses[i] == edge)).nonzero()
            if len(tied_out) and len(tied_in):
                assert tied_in.max() < tied_out.min()


@pytest.mark.parametrize("classes", [2, 5])
def test_background_loss_is_the_background_cross_entropy(classes):
    from src.nn.sampler import background_loss

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, classes, generator=gen, dtype=torch.float64) * 10
    x[0, 0] = torch.tensor([60.0, -60.0] + [0.0] * (classes - 2), dtype=torch.float64)
    x[0, 1] = torch.tensor([-60.0, 60.0] + [0.0] * (classes - 2), dtype=torch.float64)
    want = -torch.log_softmax(x, dim=-1)[..., 0]
    torch.testing.assert_close(background_loss(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(background_loss(x.float()), want.float(), rtol=1e-5, atol=1e-6)
