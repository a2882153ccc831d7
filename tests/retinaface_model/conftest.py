"""Shared, session-wide models (building a timm ResNet-50 costs seconds on CPU).

Tests that change a shared model's weights must restore them (they do so by loading the
state they saved, which is also what they test).
"""

from __future__ import annotations

import pytest

from src.models.retinaface import RetinaFace
from tests.retinaface_model.helpers import randomize_


@pytest.fixture(scope="session")
def mnet():
    return randomize_(RetinaFace("mobilenet0.25"), seed=1).eval()


@pytest.fixture(scope="session")
def r50():
    return randomize_(RetinaFace("resnet50"), seed=2).eval()
