"""Dataset protocol shared by every reader: ``load(index, rng)``.

``rng`` is a ``numpy.random.Generator`` seeded from (seed, epoch, index) by the engine for
training samples, ``None`` for evaluation. Readers draw *all* augmentation randomness from it
(never from ``random`` / ``np.random`` / worker state), so a resumed run sees the same samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from src.utils.errors import UserError


class SampleDataset(Dataset):
    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator | None) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:  # plain access (no augmentation)
        return self.load(index, None)


class DataError(UserError):
    """A user-fixable data problem; the message names the file and what to do."""
