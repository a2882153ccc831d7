"""src.utils.onnx_export, the one ONNX export of every model: the graph runs in onnxruntime with
the torch outputs, dynamic axes are dynamic, and every module's training flag comes back as it
was (a wrapper around a network in eval mode must not switch it to training)."""

import numpy as np
import pytest
import torch
from torch import nn

from src.utils.onnx_export import export_onnx_graph

ort = pytest.importorskip("onnxruntime")


class Wrapper(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).mean(dim=1, keepdim=True), self.net(x).amax(dim=(2, 3))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5))


@pytest.mark.parametrize("inner_training", [True, False])
def test_flags_restored_and_outputs_equal_torch(tmp_path, inner_training):
    net = _net()
    net[1].running_mean.uniform_(-1, 1)  # eval-mode BN statistics the graph must use
    graph = Wrapper(net)
    net.train(inner_training)
    before = [m.training for m in graph.modules()]
    axes = {"images": {0: "batch", 2: "h", 3: "w"}, "mean": {0: "batch"}, "peak": {0: "batch"}}
    path = export_onnx_graph(
        graph, tmp_path / "sub" / "g.onnx", (1, 3, 8, 8), ["mean", "peak"], axes
    )
    assert [m.training for m in graph.modules()] == before
    x = torch.randn(3, 3, 12, 10)  # another batch and size than traced
    graph.eval()
    with torch.no_grad():
        want = [t.numpy() for t in graph(x)]
    got = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_flags_restored_when_the_export_fails(tmp_path):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            raise RuntimeError("boom")

    bad = Bad().train()
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx_graph(bad, tmp_path / "b.onnx", (1, 3, 4, 4), ["y"], {})
    assert bad.training and bad.conv.training
