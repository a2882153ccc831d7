"""Top-k classification accuracy, accumulated on the device (one host sync in ``compute``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)):
    """(len(ks),) counts of samples whose target is among the k highest logits.

    k larger than the number of classes counts every sample. Ties are broken by
    ``torch.topk`` (lowest index first on CPU).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1, largest=True, sorted=True).indices  # (B, kmax)
    hit = top == target[:, None]
    # hit has at most one True per row: the rank of the target if it is within kmax.
    cum = hit.cumsum(dim=1)
    return torch.stack([cum[:, min(k, kmax) - 1].sum() for k in ks]).to(torch.float64)


class TopKAccuracy:
    """Running top-k accuracy; ``compute()`` returns ``{"acc_top1": fraction, ...}`` in [0, 1]."""

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(int(k) for k in ks)
        self.reset()

    def reset(self) -> None:
        self.correct: torch.Tensor | None = None
        self.total = 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        counts = topk_correct(logits.detach(), target, self.ks)
        self.correct = counts if self.correct is None else self.correct + counts
        self.total += int(target.shape[0])

    def compute(self) -> dict[str, float]:
        if self.correct is None or self.total == 0:
            return {f"acc_top{k}": float("nan") for k in self.ks}
        values = (self.correct / self.total).tolist()
        return {f"acc_top{k}": v for k, v in zip(self.ks, values)}
