"""WSDANTask against the Task contract, on a tiny synthetic CUB through the real reader."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.base import DataError
from src.data.synthetic_cub import build_synthetic_cub
from src.data.transforms import normalize_batch
from src.losses.ws_dan import WSDANLoss
from src.models.ws_dan import WSDAN
from src.tasks.ws_dan import WSDANTask
from tests.ws_dan.oracles import crop_loop

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws_dan") / "synthetic_cub"
    return build_synthetic_cub(
        root, image_size=SIZE, num_classes=6, train_per_class=2, test_per_class=1, source_size=48
    )


def make_task(data, center_weight=1.0, num_classes=6, seed=0):
    torch.manual_seed(seed)
    model = WSDAN(num_classes, backbone="resnet18", feature_index=2, num_attentions=4)
    return WSDANTask(model, WSDANLoss(center_weight=center_weight), data)


def batch_of(dataset, indices, rng_seed=None):
    samples = [
        dataset.load(i, None if rng_seed is None else np.random.default_rng([rng_seed, i]))
        for i in indices
    ]
    return torch.utils.data.default_collate(samples)


def test_training_step_contract(data):
    task = make_task(data).train()
    batch = batch_of(data["train"], range(6), rng_seed=1)
    out = task.training_step(batch, opt=None)
    assert set(out) == {"loss", "ce_raw", "ce_crop", "ce_drop", "center"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    torch.testing.assert_close(
        out["loss"], (out["ce_raw"] + out["ce_crop"] + out["ce_drop"]) / 3 + out["center"]
    )
    assert task.loss.center.centers.abs().sum() > 0  # updated by the step
    out["loss"].backward()
    assert task.net.fc.weight.grad.abs().sum() > 0
    assert task.net.backbone.conv1.weight.grad.abs().sum() > 0
    assert not any(b.requires_grad for b in task.buffers())


def test_training_step_randomness_is_torch_global_rng(data):
    task = make_task(data).train()
    twin = copy.deepcopy(task)
    batch = batch_of(data["train"], range(6), rng_seed=2)
    torch.manual_seed(11)
    a = task.training_step(batch, None)
    torch.manual_seed(11)
    b = twin.training_step(batch, None)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_centers_have_final_shape_before_any_step(data):
    task = make_task(data)
    shape = task.state_dict()["loss.center.centers"].shape
    assert shape == (6, task.net.feature_dim) == (6, 4 * 128)
    trained = make_task(data, seed=1).train()
    trained.training_step(batch_of(data["train"], range(4)), None)
    task.load_state_dict(trained.state_dict())  # e.g. resume before the first step
    torch.testing.assert_close(task.loss.center.centers, trained.loss.center.centers)
    ablation = make_task(data, center_weight=0.0)
    assert not any("centers" in k for k in ablation.state_dict())
    assert ablation.training_step(batch_of(data["train"], range(4)), None)["center"] == 0


def test_class_count_mismatch_is_one_clear_error(data):
    want = "train dataset has 6 classes but model.net.num_classes=5; set model.net.num_classes=6"
    with pytest.raises(ValueError, match=want):
        make_task(data, num_classes=5)


def test_evaluate_matches_per_sample_loop(data):
    task = make_task(data).train()
    task.training_step(batch_of(data["train"], range(6), rng_seed=3), None)  # BN stats move
    val = data["val"]
    loader = [batch_of(val, range(0, 4)), batch_of(val, range(4, 6))]
    task.eval()  # the engine evaluates in eval mode (Task contract)
    with torch.no_grad():
        got = task.evaluate(loader)
    assert set(got) == {"acc_top1", "acc_top5", "acc_top1_raw", "loss"}
    assert all(isinstance(v, float) for v in got.values())
    task.eval()
    hits1 = hits5 = hits_raw = 0
    loss = 0.0
    with torch.no_grad():
        for i in range(len(val)):
            sample = val.load(i, None)
            x, y = normalize_batch(sample["image"][None]), int(sample["label"])
            raw, _, maps = task.net(x)
            crop, _ = crop_loop(x, maps.mean(1, keepdim=True), [0.1], 0.05)
            logits = ((raw + task.net(crop)[0]) / 2)[0].double()
            order = logits.argsort(descending=True).tolist()
            hits1 += order[0] == y
            hits5 += y in order[:5]
            hits_raw += int(raw.argmax()) == y
            loss += float(-torch.log_softmax(logits, 0)[y])
    n = len(val)
    assert got["acc_top1"] == pytest.approx(hits1 / n)
    assert got["acc_top5"] == pytest.approx(hits5 / n)
    assert got["acc_top1_raw"] == pytest.approx(hits_raw / n)
    assert got["loss"] == pytest.approx(loss / n, rel=1e-4)


def test_visualize_pictures(data):
    task = make_task(data).train()
    pictures = task.visualize(batch_of(data["val"], range(6)))
    assert task.training
    assert set(pictures) == {"attention", "crops", "drops"}
    for key, items in pictures.items():
        assert len(items) == 4, key
        for image, caption in items:
            assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
            assert caption.startswith("true: ")


def test_predict_writes_top5_and_pictures(data, tmp_path):
    task = make_task(data)
    paths = [data["val"].image_path(0), data["val"].image_path(1), data["val"].image_path(0)]
    results = task.predict(paths, tmp_path / "out")
    assert len(results) == 3
    names = data["val"].class_names
    for result in results:
        top = result["top5"]
        assert len(top) == 5
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class_name"] == names[t["class_id"]] for t in top)
        picture = result["attention_picture"]
        assert picture.endswith(".png")
        assert Image.open(picture).size == (256, 256)  # 32 px inputs enlarged
    assert len({r["attention_picture"] for r in results}) == 3  # same stem twice: two files
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage")
    # an unreadable file is skipped and recorded; the good ones still get their predictions
    mixed = task.predict([bad, paths[0]], tmp_path / "mixed")
    assert mixed[0]["path"] == str(bad) and "bad.jpg" in mixed[0]["error"]
    assert "top5" in mixed[1] and len(list((tmp_path / "mixed").glob("*.png"))) == 1
    with pytest.raises(DataError, match="bad.jpg"):
        task.predict_one(bad, tmp_path / "out", "bad")
