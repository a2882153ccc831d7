"""Shared, session-wide models (building a timm ResNet-50 costs seconds on CPU) with random
weights and BN statistics taken from random images (unit-scale activations), and one
intra-op thread while these tests run: the networks here are tiny, and on a busy 2-core
machine OpenMP's spinning makes two threads several times slower than one.

Tests that change a shared model's weights must restore them (they do so by loading the
state they saved, which is also what they test).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from src.models.retinaface import RetinaFace
from tests.retinaface_model.helpers import bgr_images, calibrate_bn_, randomize_


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread():
    with _one_thread():
        yield


@pytest.fixture(scope="session")
def mnet():
    with _one_thread():
        model = randomize_(RetinaFace("mobilenet0.25"), seed=1)
        return calibrate_bn_(model, bgr_images(4, 64, 64, seed=1))


@pytest.fixture(scope="session")
def r50():
    with _one_thread():
        model = randomize_(RetinaFace("resnet50"), seed=2)
        return calibrate_bn_(model, bgr_images(2, 64, 64, seed=2))
