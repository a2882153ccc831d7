"""WS-DAN learns synthetic_cub: a plain SGD loop over the task's training_step (slow).

The recipe (the default run's): resnet18 cut at stride 8 (feature_index 2), 8 attention maps,
64 px inputs, batch 16, SGD lr 1e-3 momentum 0.9 wd 1e-5 (the paper's optimiser), center loss.
"""

import time

import numpy as np
import pytest
import torch

from src.data.synthetic_cub import build_synthetic_cub
from src.losses.ws_dan import WSDANLoss
from src.models.ws_dan import WSDAN
from src.tasks.ws_dan import WSDANTask

STEPS, BATCH, SIZE = 60, 16, 64


@pytest.mark.slow
def test_learns_synthetic_cub_well_above_chance(tmp_path):
    torch.manual_seed(0)
    data = build_synthetic_cub(tmp_path / "synthetic_cub", image_size=SIZE)  # 10 classes
    model = WSDAN(10, backbone="resnet18", feature_index=2, num_attentions=8)
    task = WSDANTask(model, WSDANLoss(center_weight=1.0), data).train()
    opt = torch.optim.SGD(task.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-5)
    train = data["train"]
    start, cpu = time.time(), time.process_time()
    step, epoch = 0, 0
    while step < STEPS:
        order = np.random.default_rng([0, epoch]).permutation(len(train))
        for first in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[first : first + BATCH]
            samples = [train.load(int(i), np.random.default_rng([0, epoch, int(i)])) for i in idx]
            out = task.training_step(task.collate(samples), None)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            step += 1
            if step == STEPS:
                break
        epoch += 1
    val = data["val"]
    loader = [
        task.collate([val.load(i, None) for i in range(j, min(j + 50, len(val)))])
        for j in range(0, len(val), 50)
    ]
    metrics = task.evaluate(loader)
    print(
        f"\nws_dan synthetic_cub: {STEPS} steps x {BATCH} at {SIZE}px -> {metrics}; "
        f"{time.time() - start:.0f}s wall, {time.process_time() - cpu:.0f}s CPU"
    )
    assert np.isfinite(out["loss"].item())
    assert metrics["acc_top1"] >= 0.4  # chance is 0.1
