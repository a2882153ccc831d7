"""ONNX export with dynamic batch / height / width, checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from src.models.retinaface import RetinaFace, export_onnx, num_priors
from tests.retinaface_model.helpers import bgr_images, calibrate_bn_, randomize_

ort = pytest.importorskip("onnxruntime")


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = randomize_(RetinaFace("mobilenet0.25"), seed=30)
    calibrate_bn_(model, bgr_images(4, 96, 96, seed=30))
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "mnet.onnx", sample_size=(64, 64))
    return model, path


def test_graph_declares_dynamic_axes(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    (inp,) = graph.input
    assert inp.name == "images"
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert dims[1].dim_value == 3
    assert [o.name for o in graph.output] == ["loc", "conf", "landm"]


@pytest.mark.parametrize("bhw", [(1, 96, 128), (2, 75, 99)])
def test_onnxruntime_matches_pytorch_at_other_sizes(exported, bhw):
    model, path = exported
    b, h, w = bhw
    x = bgr_images(b, h, w, seed=h)
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    got = _session(path).run(None, {"images": x.numpy()})
    p = num_priors((h, w))
    for g, e, d in zip(got, want, (4, 2, 10)):
        assert g.shape == e.shape == (b, p, d)
        assert 0.1 < np.abs(e).mean() < 10  # unit-scale outputs, so atol 1e-4 is meaningful
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_softmax_option_and_training_flag_restored(tmp_path):
    model = calibrate_bn_(randomize_(RetinaFace("mobilenet0.25"), seed=31), bgr_images(2, 64, 64))
    model.train()
    path = export_onnx(model, tmp_path / "scores.onnx", sample_size=(32, 32), softmax=True)
    assert model.training  # export ran in eval mode and put the flag back
    model.eval()
    x = bgr_images(1, 40, 56, seed=5)
    with torch.no_grad():
        conf = model(x)[1].softmax(-1).numpy()
    got = _session(path).run(["conf"], {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, conf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
