"""Top-k accuracy against a plain loop."""

import numpy as np
import torch

from src.metrics.accuracy import TopKAccuracy, topk_correct


def test_topk_matches_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 8, generator=g)
    target = torch.randint(0, 8, (50,), generator=g)
    want = []
    for k in (1, 3, 5, 10):
        hits = 0
        for row, t in zip(logits.tolist(), target.tolist()):
            rank = sorted(range(8), key=lambda j: -row[j])
            hits += t in rank[:k]
        want.append(hits)
    assert topk_correct(logits, target, (1, 3, 5, 10)).tolist() == want
    assert want[-1] == 50  # k beyond the class count counts everything


def test_accumulator_hand_worked():
    metric = TopKAccuracy((1, 2))
    metric.update(torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]]), torch.tensor([1, 2]))
    metric.update(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([1]))
    got = metric.compute()
    np.testing.assert_allclose([got["acc_top1"], got["acc_top2"]], [1 / 3, 2 / 3])
    assert isinstance(got["acc_top1"], float)
