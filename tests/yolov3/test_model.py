"""YOLOv3 network: parameter count from an independent reading of yolov3.cfg, Mish, the darknet
.weights loader (a file written here in the darknet layout, loaded back), archive .pt state
dicts, decode against a plain loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.models.yolov3 import YOLOv3, decode
from src.utils.weights_file import WeightsFileError

# yolov3.cfg's layer list (darknet syntax, comments and [net] dropped), written out from the cfg
_RES = (
    "[convolutional]\nbatch_normalize=1\nfilters={h}\nsize=1\nstride=1\n"
    "[convolutional]\nbatch_normalize=1\nfilters={f}\nsize=3\nstride=1\n[shortcut]\nfrom=-3\n"
)
_DOWN = "[convolutional]\nbatch_normalize=1\nfilters={f}\nsize=3\nstride=2\n"
_HEAD = "".join(
    "[convolutional]\nbatch_normalize=1\nfilters={a}\nsize=1\nstride=1\n"
    "[convolutional]\nbatch_normalize=1\nfilters={b}\nsize=3\nstride=1\n" for _ in range(3)
) + "[convolutional]\nfilters=255\nsize=1\nstride=1\n[yolo]\n"  # fmt: skip
YOLOV3_CFG = (
    "[convolutional]\nbatch_normalize=1\nfilters=32\nsize=3\nstride=1\n"
    + "".join(_DOWN.format(f=f) + _RES.format(h=f // 2, f=f) * n
              for f, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)))
    + _HEAD.format(a=512, b=1024)
    + "[route]\nlayers=-4\n[convolutional]\nbatch_normalize=1\nfilters=256\nsize=1\nstride=1\n"
    "[upsample]\nstride=2\n[route]\nlayers=-1,61\n"
    + _HEAD.format(a=256, b=512)
    + "[route]\nlayers=-4\n[convolutional]\nbatch_normalize=1\nfilters=128\nsize=1\nstride=1\n"
    "[upsample]\nstride=2\n[route]\nlayers=-1,36\n"
    + _HEAD.format(a=128, b=256)
)  # fmt: skip


def cfg_parameter_count(cfg: str) -> tuple[int, int]:
    """(parameters, layers) of a darknet cfg: conv k*k*in*out + 2*out with BN (gamma, beta)
    or + out (bias); routes concatenate the channels of the layers they name."""
    sections = []
    for line in cfg.strip().splitlines():
        if line.startswith("["):
            sections.append({"type": line.strip("[]")})
        else:
            k, v = line.split("=")
            sections[-1][k] = v
    channels, total, c = [], 0, 3
    for i, s in enumerate(sections):
        if s["type"] == "convolutional":
            f, k = int(s["filters"]), int(s["size"])
            total += k * k * c * f + (2 * f if s.get("batch_normalize") == "1" else f)
            c = f
        elif s["type"] == "route":
            ids = [int(x) for x in s["layers"].split(",")]
            c = sum(channels[x if x >= 0 else i + x] for x in ids)
        channels.append(c)
    return total, len(sections)


def test_parameter_count_equals_yolov3_cfg():
    count, layers = cfg_parameter_count(YOLOV3_CFG)
    assert layers == 107
    assert count == 61_949_149  # the archive's model_info for yolov3.cfg at 80 classes
    net = YOLOv3(num_classes=80)
    assert len(net.module_list) == layers
    assert sum(p.numel() for p in net.parameters()) == count
    convs = [s for s in YOLOV3_CFG.split("[") if s.startswith("convolutional")]
    assert len(net.convs) == len(convs) == 75
    mish = YOLOv3(num_classes=80, activation="mish")
    assert sum(p.numel() for p in mish.parameters()) == count


def test_mish_swaps_every_activation():
    net = YOLOv3(num_classes=3, activation="mish", width=0.125, blocks=(1, 1, 1, 1, 1))
    acts = [m for m in net.modules() if isinstance(m, (torch.nn.Mish, torch.nn.LeakyReLU))]
    assert acts and all(isinstance(m, torch.nn.Mish) for m in acts)
    x = torch.linspace(-20, 20, 1001, dtype=torch.float64)
    torch.testing.assert_close(torch.nn.Mish()(x), x * torch.tanh(torch.log1p(torch.exp(x))))
    with pytest.raises(ValueError, match="activation"):
        YOLOv3(activation="gelu")


def small(**kw):
    return YOLOv3(num_classes=kw.pop("num_classes", 3), width=0.125, blocks=(1, 1, 1, 1, 1), **kw)


def write_darknet(net: YOLOv3, path, n_convs=None, seen_int64=True):
    """A darknet .weights file of ``net`` written from the format description, independently
    of the loader: header, then per conv [beta, gamma, mean, var | bias] + weights."""
    major, minor = (0, 2) if seen_int64 else (0, 1)
    parts = [np.array([major, minor, 5], np.int32).tobytes()]
    parts.append(np.array([123456], np.int64 if seen_int64 else np.int32).tobytes())
    sd = net.state_dict()
    convs = sorted({k.split(".Conv2d")[0] for k in sd if ".Conv2d." in k},
                   key=lambda s: int(s.split(".")[1]))  # fmt: skip
    for name in convs[:n_convs]:
        if f"{name}.BatchNorm2d.weight" in sd:
            for k in ("bias", "weight", "running_mean", "running_var"):
                parts.append(sd[f"{name}.BatchNorm2d.{k}"].numpy().astype(np.float32).tobytes())
        else:
            parts.append(sd[f"{name}.Conv2d.bias"].numpy().astype(np.float32).tobytes())
        parts.append(sd[f"{name}.Conv2d.weight"].numpy().astype(np.float32).tobytes())
    path.write_bytes(b"".join(parts))
    return path


def _randomised(net):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.dtype.is_floating_point:
                v.copy_(torch.rand(v.shape, generator=g) + 0.1)
    return net


@pytest.mark.parametrize("seen_int64", [True, False])
def test_darknet_weights_round_trip(tmp_path, seen_int64):
    torch.manual_seed(0)
    src = _randomised(small())
    path = write_darknet(src, tmp_path / "small.weights", seen_int64=seen_int64)
    torch.manual_seed(1)
    dst = small(weights=str(path))
    a, b = src.state_dict(), dst.state_dict()
    for k in a:
        if a[k].dtype.is_floating_point:
            assert torch.equal(a[k], b[k]), k


def test_darknet_backbone_prefix_and_bad_files(tmp_path):
    src = _randomised(small())
    path = write_darknet(src, tmp_path / "darknet53.conv.74", n_convs=10)
    from src.models.yolov3 import load_darknet_weights

    dst = small()
    info = load_darknet_weights(dst, path)
    assert info["convolutions"] == 10 and info["header"] == (0, 2, 5, 123456)
    assert torch.equal(dst.convs[9].Conv2d.weight, src.convs[9].Conv2d.weight)
    assert not torch.equal(dst.convs[10].Conv2d.weight, src.convs[10].Conv2d.weight)
    bad = tmp_path / "cut.weights"
    bad.write_bytes((tmp_path / "darknet53.conv.74").read_bytes()[:-8])
    with pytest.raises(WeightsFileError, match="cut.weights"):
        small(weights=str(bad))
    with pytest.raises(WeightsFileError, match="not found"):
        small(weights=str(tmp_path / "missing.weights"))
    other = write_darknet(_randomised(small(num_classes=5)), tmp_path / "c5.weights")
    with pytest.raises(WeightsFileError, match="num_classes"):
        small(weights=str(other))


def test_archive_pt_state_dict(tmp_path):
    src = _randomised(small())
    # the archive's checkpoint layout: {"epoch", "best_fitness", "model": state_dict, ...}
    ckpt = {"epoch": -1, "best_fitness": None, "training_results": None,
            "model": src.state_dict(), "optimizer": None}  # fmt: skip
    torch.save(ckpt, tmp_path / "yolov3.pt")
    dst = small(weights=str(tmp_path / "yolov3.pt"))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    torch.save({"model": YOLOv3(num_classes=5, width=0.125, blocks=(1, 1, 1, 1, 1)).state_dict()},
               tmp_path / "other.pt")  # fmt: skip
    with pytest.raises(WeightsFileError, match="does not fit"):
        small(weights=str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="nothing is downloaded"):
        small(pretrained=True)


def test_decode_equals_plain_loop():
    net = small().eval()
    with torch.no_grad():
        outs = net(torch.randn(2, 3, 64, 96))
    got = decode(outs, net.layer_anchors(), net.strides)
    rows = []
    for b in range(2):
        per = []
        for p, anchors, s in zip(outs, net.layer_anchors(), net.strides):
            for a in range(3):
                for y in range(p.shape[2]):
                    for x in range(p.shape[3]):
                        t = p[b, a, y, x]
                        cx = (1 / (1 + math.exp(-t[0])) + x) * s
                        cy = (1 / (1 + math.exp(-t[1])) + y) * s
                        w = min(math.exp(t[2]), 1e3) * anchors[a, 0]
                        h = min(math.exp(t[3]), 1e3) * anchors[a, 1]
                        per.append([cx, cy, w, h, *torch.sigmoid(t[4:]).tolist()])
        rows.append(per)
    torch.testing.assert_close(got, torch.tensor(rows, dtype=got.dtype), rtol=1e-5, atol=1e-4)
    assert got.shape == (2, 3 * (2 * 3 + 4 * 6 + 8 * 12), 8)
