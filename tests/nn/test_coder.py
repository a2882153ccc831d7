import io
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.nn import (
    BBoxCornerToCenter,
    MultiClassDecoder,
    MultiClassEncoder,
    MultiPerClassDecoder,
    NormalizedBoxCenterDecoder,
    NormalizedBoxCenterEncoder,
    NormalizedLandmarkCenterDecoder,
    NormalizedLandmarkCenterEncoder,
    NormalizedPerClassBoxCenterEncoder,
    SigmoidClassEncoder,
)
from tests.nn.helpers import random_boxes

f64 = torch.float64


def test_box_encode_worked_example_round_trip():
    anchors = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]], dtype=f64)
    gt = torch.tensor([[[1.0, 2.0, 13.0, 12.0]]], dtype=f64)
    t, m = NormalizedBoxCenterEncoder()(
        torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long), anchors, gt
    )
    torch.testing.assert_close(t, torch.tensor([[[2.0, 2.0, math.log(1.2) / 0.2, 0.0]]], dtype=f64))
    assert round(t[0, 0, 2].item(), 4) == 0.9116 and m.tolist() == [[[1.0] * 4]]
    dec = NormalizedBoxCenterDecoder(convert_anchor=True)(t, anchors)
    torch.testing.assert_close(dec, gt, rtol=0, atol=1e-12)
    center = BBoxCornerToCenter()(anchors)
    torch.testing.assert_close(NormalizedBoxCenterDecoder()(t, center), gt, rtol=0, atol=1e-12)


def test_box_encode_mxnet_golden():
    # apache/mxnet test_contrib_operator.py::test_box_encode_op
    anchors = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]).reshape(1, -1, 4)
    refs = anchors.clone()
    samples = torch.tensor([[0.0, 1.0]])
    matches = torch.tensor([[0, 1]])
    y, mask = NormalizedBoxCenterEncoder((0.1, 0.1, 0.2, 0.2), (0, 0, 0, 0))(
        samples, matches, anchors, refs
    )
    np.testing.assert_allclose(y.numpy(), np.zeros((1, 2, 4)), atol=1e-5)
    np.testing.assert_allclose(mask.numpy(), [[[0, 0, 0, 0], [1, 1, 1, 1]]])


def test_box_decode_mxnet_golden():
    # apache/mxnet test_contrib_operator.py::test_box_decode_op (center-format anchors)
    data = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]).reshape(1, -1, 4)
    y = NormalizedBoxCenterDecoder((0.1, 0.1, 0.2, 0.2))(data, data.clone())
    expected = [
        [
            [-0.0562755, -0.00865743, 0.26227552, 0.42465743],
            [0.13240421, 0.17859563, 0.93759584, 1.1174043],
        ]
    ]
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5, rtol=1e-5)


def test_decoder_clip_and_means():
    anchors = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]], dtype=f64)
    x = torch.tensor([[[0.0, 0.0, 50.0, -50.0]]], dtype=f64)  # dw = 10 -> clipped to log(2)
    out = NormalizedBoxCenterDecoder(clip=math.log(2.0), convert_anchor=True)(x, anchors)
    w = out[0, 0, 2] - out[0, 0, 0]
    assert w.item() == pytest.approx(20.0)
    assert (out[0, 0, 3] - out[0, 0, 1]).item() == pytest.approx(10 * math.exp(-10))
    out0 = NormalizedBoxCenterDecoder(clip=0.0, convert_anchor=True)(x, anchors)
    assert (out0[0, 0, 2] - out0[0, 0, 0]).item() == pytest.approx(10.0)  # clip=0 clips
    means = (0.1, -0.2, 0.05, 0.0)
    stds = (0.2, 0.3, 0.4, 0.5)
    gen = torch.Generator().manual_seed(0)
    a = random_boxes(gen, 2, 30)
    g = random_boxes(gen, 2, 30)
    enc = NormalizedBoxCenterEncoder(stds, means)
    t, _ = enc(torch.ones(2, 30), torch.arange(30).expand(2, 30), a, g)
    torch.testing.assert_close(NormalizedBoxCenterDecoder(stds, means, True)(t, a), g)


def test_encoder_batched_matches_padding_and_broadcast_anchors():
    gen = torch.Generator().manual_seed(1)
    anchors = random_boxes(gen, 25)
    refs = random_boxes(gen, 3, 4)
    refs[1, 2:] = -1
    matches = torch.randint(-1, 4, (3, 25), generator=gen)
    matches[1] = matches[1].clamp(max=1)
    samples = torch.where(matches >= 0, 1.0, -1.0).to(f64)
    samples[0, :3] = 0
    enc = NormalizedBoxCenterEncoder()
    t, m = enc(samples, matches, anchors, refs)  # (N, 4) anchors broadcast over B
    assert t.shape == (3, 25, 4) and torch.isfinite(t).all()
    for b in range(3):
        tb, mb = enc(samples[b : b + 1], matches[b : b + 1], anchors[None], refs[b : b + 1])
        torch.testing.assert_close(t[b], tb[0])
        torch.testing.assert_close(m[b], mb[0])
        for n in range(25):
            if samples[b, n] > 0:
                ref = enc.encode(refs[b, matches[b, n]], anchors[n])
                torch.testing.assert_close(t[b, n], ref)
                assert m[b, n].tolist() == [1.0] * 4
            else:
                assert t[b, n].abs().sum() == 0 and m[b, n].sum() == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-100, 100), st.floats(-100, 100), st.floats(0.5, 80), st.floats(0.5, 80)
        ),
        min_size=2,
        max_size=2,
    ),
    st.tuples(st.floats(0.05, 1), st.floats(0.05, 1), st.floats(0.05, 1), st.floats(0.05, 1)),
)
def test_encode_decode_round_trip(boxes, stds):
    t = torch.tensor(boxes, dtype=f64)
    corners = torch.cat((t[:, :2], t[:, :2] + t[:, 2:]), -1)
    anchor, gt = corners[0].reshape(1, 1, 4), corners[1].reshape(1, 1, 4)
    code, _ = NormalizedBoxCenterEncoder(stds)(
        torch.ones(1, 1), torch.zeros(1, 1).long(), anchor, gt
    )
    back = NormalizedBoxCenterDecoder(stds, convert_anchor=True)(code, anchor)
    torch.testing.assert_close(back, gt, rtol=1e-9, atol=1e-9)


def test_decoder_onnx_export_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    gen = torch.Generator().manual_seed(2)
    anchors = BBoxCornerToCenter()(random_boxes(gen, 1, 12, dtype=torch.float32))
    x = torch.randn(2, 12, 4, generator=gen)
    model = NormalizedBoxCenterDecoder(clip=math.log(1000 / 16)).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x, anchors),
            f,
            dynamo=False,
            input_names=["x", "anchors"],
            dynamic_axes={"x": {0: "B", 1: "N"}, "anchors": {1: "N"}},
        )
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    anchors2 = BBoxCornerToCenter()(random_boxes(gen, 1, 20, dtype=torch.float32))
    x2 = torch.randn(3, 20, 4, generator=gen) * 3
    (got,) = sess.run(None, {"x": x2.numpy(), "anchors": anchors2.numpy()})
    np.testing.assert_allclose(got, model(x2, anchors2).numpy(), rtol=1e-5, atol=1e-4)


def test_landmark_coder_retinaface_formula_and_round_trip():
    gen = torch.Generator().manual_seed(3)
    priors_c = torch.tensor([[8.0, 8.0, 16.0, 16.0], [24.0, 8.0, 32.0, 32.0]], dtype=f64)
    priors = torch.cat(
        (priors_c[:, :2] - priors_c[:, 2:] / 2, priors_c[:, :2] + priors_c[:, 2:] / 2), -1
    )
    landms = torch.rand(1, 3, 10, generator=gen, dtype=f64) * 40  # 3 faces, 5 points
    landms[0, 2] = -1  # a face without landmarks
    matches = torch.tensor([[1, 2]])
    samples = torch.tensor([[1.0, 1.0]])
    enc = NormalizedLandmarkCenterEncoder((0.1, 0.1))
    t, m = enc(samples, matches, priors, landms)
    # biubug6 encode_landm: (landm - prior_cxcy) / (0.1 * prior_wh), per point
    p = landms[0, 1].reshape(5, 2)
    ref = (p - priors_c[0, :2]) / (0.1 * priors_c[0, 2:])
    torch.testing.assert_close(t[0, 0], ref.reshape(10))
    assert m[0, 0].tolist() == [1.0] * 10
    assert m[0, 1].sum() == 0 and t[0, 1].abs().sum() == 0  # matched face has no landmarks
    dec = NormalizedLandmarkCenterDecoder((0.1, 0.1))(t, priors_c)
    torch.testing.assert_close(dec[0, 0], landms[0, 1])
    # (B, M, K, 2) layout gives the same numbers
    t4, m4 = enc(samples, matches, priors, landms.reshape(1, 3, 5, 2))
    assert t4.shape == (1, 2, 5, 2)
    torch.testing.assert_close(t4.reshape(1, 2, 10), t)
    dec4 = NormalizedLandmarkCenterDecoder(convert_anchor=True)(t4, priors[None])
    torch.testing.assert_close(dec4.reshape(1, 2, 10)[0, 0], landms[0, 1])


def test_per_class_box_encoder():
    gen = torch.Generator().manual_seed(4)
    anchors = random_boxes(gen, 2, 10)
    refs = random_boxes(gen, 2, 3)
    labels = torch.tensor([[2, 0, 1], [1, 1, -1]])
    matches = torch.tensor(
        [[0, -1, 1, 2, -1, -1, 0, -1, -1, 1], [-1, -1, 1, -1, -1, -1, -1, -1, -1, -1]]
    )
    samples = torch.where(matches >= 0, 1.0, -1.0)
    enc = NormalizedPerClassBoxCenterEncoder(num_class=3, max_pos=4)
    t, m, idx = enc(samples, matches, anchors, labels, refs)
    assert t.shape == (2, 4, 3, 4) and m.shape == (2, 4, 3, 4) and idx.shape == (2, 4)
    assert idx[0].tolist() == [0, 2, 3, 6]  # first max_pos positives, ascending
    assert idx[1, 0].item() == 2
    agn, _ = NormalizedBoxCenterEncoder()(samples, matches, anchors, refs)
    for b in range(2):
        for k in range(4):
            n = idx[b, k].item()
            torch.testing.assert_close(t[b, k], agn[b, n].expand(3, 4))
            for c in range(3):
                want = float(samples[b, n] > 0 and labels[b, matches[b, n]].item() == c)
                assert m[b, k, c].tolist() == [want] * 4


def test_class_encoders_and_decoders():
    samples = torch.tensor([[1.0, -1.0, 0.0, 1.0]])
    matches = torch.tensor([[1, -1, 0, 0]])
    refs = torch.tensor([[4.0, 2.0]])
    assert MultiClassEncoder()(samples, matches, refs).tolist() == [[3.0, 0.0, -1.0, 5.0]]
    assert MultiClassEncoder(ignore_label=-2)(samples, matches, refs)[0, 2].item() == -2
    target, mask = SigmoidClassEncoder()(samples)
    assert target.tolist() == [[1.0, 0.0, -1.0, 1.0]] and mask.tolist() == [[1, 1, 0, 1]]
    x = torch.tensor(
        [[[0.5, 0.1, 0.2, 0.1, 0.05, 0.05], [0.99, 0.002, 0.002, 0.002, 0.002, 0.002]]]
    )
    cls_id, score = MultiClassDecoder()(x)
    assert cls_id.tolist() == [[1, -1]]
    torch.testing.assert_close(score, torch.tensor([[0.2, 0.0]]))
    ids, scores = MultiPerClassDecoder(num_class=6)(x)
    assert ids.tolist() == [[[0, 1, 2, 3, 4], [-1] * 5]]
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.1, 0.2, 0.1, 0.05, 0.05]))
    # class axis other than last
    ids1, _ = MultiPerClassDecoder(num_class=6, axis=1)(x.transpose(1, 2))
    assert torch.equal(ids1, ids)


class _AllDecoders(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.box = NormalizedBoxCenterDecoder(convert_anchor=True)
        self.lm = NormalizedLandmarkCenterDecoder(convert_anchor=True)
        self.cls = MultiClassDecoder(thresh=0.2)
        self.per_cls = MultiPerClassDecoder(num_class=4, thresh=0.2)

    def forward(self, loc, landm, conf, anchors):
        prob = conf.softmax(-1)
        ids, scores = self.cls(prob)
        pids, pscores = self.per_cls(prob)
        return self.box(loc, anchors), self.lm(landm, anchors), ids, scores, pids, pscores


def test_all_decoders_onnx_export():
    ort = pytest.importorskip("onnxruntime")
    gen = torch.Generator().manual_seed(5)

    def inputs(b, n):
        return (
            torch.randn(b, n, 4, generator=gen),
            torch.randn(b, n, 10, generator=gen),
            torch.randn(b, n, 4, generator=gen) * 2,
            random_boxes(gen, n, dtype=torch.float32),
        )

    model = _AllDecoders().eval()
    names = ["loc", "landm", "conf", "anchors"]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            inputs(1, 7),
            f,
            dynamo=False,
            input_names=names,
            dynamic_axes={
                "loc": {0: "B", 1: "N"},
                "landm": {0: "B", 1: "N"},
                "conf": {0: "B", 1: "N"},
                "anchors": {0: "N"},
            },
        )
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    x = inputs(3, 50)
    got = sess.run(None, {k: v.numpy() for k, v in zip(names, x)})
    for g, want in zip(got, model(*x)):
        np.testing.assert_allclose(g, want.numpy(), rtol=1e-5, atol=1e-4)


def test_centernet_decoder_against_loop_oracle():
    from src.nn import CenterNetDecoder

    gen = torch.Generator().manual_seed(6)
    b, c, h, w = 2, 3, 5, 7
    heat = torch.rand(b, c, h, w, generator=gen, dtype=f64)
    wh = torch.rand(b, 2, h, w, generator=gen, dtype=f64) * 4
    reg = torch.rand(b, 2, h, w, generator=gen, dtype=f64)
    classes, scores, boxes = CenterNetDecoder(topk=6, scale=4.0)(heat, wh, reg)
    assert classes.shape == (2, 6) and boxes.shape == (2, 6, 4)
    for i in range(b):
        flat = [
            (heat[i, cc, y, x].item(), cc, y, x)
            for cc in range(c)
            for y in range(h)
            for x in range(w)
        ]
        flat.sort(key=lambda t: -t[0])
        for k, (s, cc, y, x) in enumerate(flat[:6]):
            assert classes[i, k].item() == cc and scores[i, k].item() == s
            cx, cy = x + reg[i, 0, y, x].item(), y + reg[i, 1, y, x].item()
            bw, bh = wh[i, 0, y, x].item(), wh[i, 1, y, x].item()
            want = [4 * (cx - bw / 2), 4 * (cy - bh / 2), 4 * (cx + bw / 2), 4 * (cy + bh / 2)]
            np.testing.assert_allclose(boxes[i, k].numpy(), want, rtol=1e-12)
    assert CenterNetDecoder(topk=1000)(heat, wh, reg)[0].shape == (2, c * h * w)


def test_centernet_decoder_onnx_export():
    ort = pytest.importorskip("onnxruntime")
    from src.nn import CenterNetDecoder

    gen = torch.Generator().manual_seed(7)
    args = (
        torch.rand(2, 3, 8, 8, generator=gen),
        torch.rand(2, 2, 8, 8, generator=gen),
        torch.rand(2, 2, 8, 8, generator=gen),
    )
    model = CenterNetDecoder(topk=10).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            f,
            dynamo=False,
            input_names=["x", "wh", "reg"],
            dynamic_axes={"x": {0: "B"}, "wh": {0: "B"}, "reg": {0: "B"}},
        )
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    args2 = tuple(torch.rand(4, *a.shape[1:], generator=gen) for a in args)
    got = sess.run(None, dict(zip(["x", "wh", "reg"], (a.numpy() for a in args2))))
    for g, want in zip(got, model(*args2)):
        np.testing.assert_allclose(g, want.numpy(), rtol=1e-5, atol=1e-5)


def test_landmark_means_round_trip_and_formula():
    gen = torch.Generator().manual_seed(8)
    anchors = random_boxes(gen, 1, 40)
    pts = torch.rand(1, 40, 5, 2, generator=gen, dtype=f64) * 100
    stds, means = (0.1, 0.2), (0.05, -0.1)
    enc = NormalizedLandmarkCenterEncoder(stds, means)
    t, m = enc(torch.ones(1, 40), torch.arange(40)[None], anchors, pts)
    a = BBoxCornerToCenter()(anchors)[0]
    ref = (
        (pts[0] - a[:, None, :2]) / a[:, None, 2:] - torch.tensor(means, dtype=f64)
    ) / torch.tensor(stds, dtype=f64)
    torch.testing.assert_close(t[0], ref)
    assert m.all()
    back = NormalizedLandmarkCenterDecoder(stds, means, convert_anchor=True)(t, anchors)
    torch.testing.assert_close(back, pts)


# ---- positive-only encoding (the CPU default) vs the dense path: bit-identical ----------------


@pytest.fixture(params=[True, False], ids=["positive_only", "dense"])
def coder_path(request, monkeypatch):
    """Run a test with the default path of every encoder forced to one side."""
    monkeypatch.setattr("src.nn.coder._positive_only_default", lambda device: request.param)
    return request.param


def _bits(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret floats as integers: equality is then bitwise (tells -0.0 from +0.0)."""
    if not x.is_floating_point():
        return x
    return x.view({torch.float32: torch.int32, torch.float64: torch.int64}[x.dtype])


def _assert_bit_equal(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(_bits(g), _bits(w))


def _random_problem(gen, bsz, n, m, dtype, anchor_form, num_points=0):
    """Anchors in one broadcast form, refs with -1 padding rows, matches with -1, samples with
    positives, negatives and ignores (some positives unmatched)."""
    anchors = random_boxes(gen, bsz if anchor_form == "BN" else 1, n, dtype=dtype)
    if anchor_form == "N":
        anchors = anchors[0]
    refs = random_boxes(gen, bsz, m, dtype=dtype)
    pts = torch.rand(bsz, m, num_points, 2, generator=gen, dtype=dtype) * 120 - 10
    if m > 1:
        pad = torch.rand(bsz, m, generator=gen) < 0.3
        refs[pad] = -1
        pts[pad] = -1
        pts[torch.rand(bsz, m, generator=gen) < 0.2] = -1  # faces without landmarks
    matches = (
        torch.randint(-1, max(m, 1), (bsz, n), generator=gen)
        if m
        else torch.full((bsz, n), -1, dtype=torch.long)
    )
    samples = torch.randint(-1, 2, (bsz, n), generator=gen).to(dtype)
    labels = torch.randint(0, 5, (bsz, m), generator=gen)
    return samples, matches, anchors, refs, pts, labels


_SHAPES = [(3, 40, 4), (1, 25, 1), (2, 30, 0), (0, 20, 3), (2, 0, 3), (4, 64, 7)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("anchor_form", ["N", "1N", "BN"])
def test_positive_only_box_and_landmark_encoders_are_bit_identical(dtype, anchor_form):
    gen = torch.Generator().manual_seed(11)
    stds, means = (0.1, 0.15, 0.2, 0.25), (0.01, -0.02, 0.03, 0.0)
    for bsz, n, m in _SHAPES:
        samples, matches, anchors, refs, pts, _ = _random_problem(
            gen, bsz, n, m, dtype, anchor_form, num_points=5
        )
        for enc_cls, args, targets in (
            (NormalizedBoxCenterEncoder, (stds, means), refs),
            (NormalizedLandmarkCenterEncoder, ((0.1, 0.2), (0.05, -0.1)), pts),
            (NormalizedLandmarkCenterEncoder, (), pts.flatten(2)),
        ):
            sparse = enc_cls(*args, positive_only=True)(samples, matches, anchors, targets)
            dense = enc_cls(*args, positive_only=False)(samples, matches, anchors, targets)
            _assert_bit_equal(sparse, dense)
            assert sparse[0].dtype == dtype and torch.isfinite(sparse[0]).all()
            if bsz and n:  # only positives are non-zero
                pos = (samples > 0).reshape(*samples.shape, *([1] * (targets.dim() - 2)))
                assert not (sparse[0] * ~pos).any() and not (sparse[1] * ~pos).any()


def test_positive_only_encoders_without_positives_and_default_dispatch():
    gen = torch.Generator().manual_seed(12)
    samples, matches, anchors, refs, pts, labels = _random_problem(gen, 2, 30, 4, f64, "N", 5)
    none = samples.clamp(max=0)  # negatives and ignores only
    for enc, args in (
        (NormalizedBoxCenterEncoder(), (anchors, refs)),
        (NormalizedLandmarkCenterEncoder(), (anchors, pts)),
    ):
        t, m = enc(none, matches, *args)
        assert not t.any() and not m.any() and not torch.signbit(t).any()
    cls_t = MultiClassEncoder()(none, matches, labels)
    assert set(cls_t.unique().tolist()) <= {0, -1}
    from src.nn.coder import _positive_only_default, _use_positive_only

    assert _positive_only_default("cpu") and _positive_only_default(torch.device("cpu"))
    assert not _positive_only_default("cuda") and not _positive_only_default("cuda:1")
    assert _use_positive_only(None, samples, refs)
    assert not _use_positive_only(False, samples, refs)
    grad_refs = refs.clone().requires_grad_()
    assert not _use_positive_only(None, samples, grad_refs)  # dense graph when asked for one
    t, _ = NormalizedBoxCenterEncoder()(samples, matches, anchors, grad_refs)
    assert t.requires_grad
    with torch.no_grad():
        assert _use_positive_only(None, samples, grad_refs)


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.float32])
def test_positive_only_class_encoders_are_identical(label_dtype):
    gen = torch.Generator().manual_seed(13)
    for bsz, n, m in _SHAPES:
        samples, matches, anchors, refs, _, labels = _random_problem(gen, bsz, n, m, f64, "N")
        labels = labels.to(label_dtype)
        for ignore in (-1, -2):
            _assert_bit_equal(
                [MultiClassEncoder(ignore, positive_only=True)(samples, matches, labels)],
                [MultiClassEncoder(ignore, positive_only=False)(samples, matches, labels)],
            )
        if n:
            for max_pos in (1, 5, 200):
                args = (samples, matches, anchors, labels, refs)
                sparse = NormalizedPerClassBoxCenterEncoder(5, max_pos, positive_only=True)(*args)
                dense = NormalizedPerClassBoxCenterEncoder(5, max_pos, positive_only=False)(*args)
                _assert_bit_equal(sparse, dense)


@pytest.mark.usefixtures("coder_path")
def test_worked_examples_on_both_paths():
    test_box_encode_worked_example_round_trip()
    test_box_encode_mxnet_golden()
    test_decoder_clip_and_means()
    test_encoder_batched_matches_padding_and_broadcast_anchors()
    test_landmark_coder_retinaface_formula_and_round_trip()
    test_per_class_box_encoder()
    test_class_encoders_and_decoders()
    test_landmark_means_round_trip_and_formula()


def test_positive_only_with_samples_broadcast_over_the_batch():
    gen = torch.Generator().manual_seed(14)
    samples, matches, anchors, refs, pts, labels = _random_problem(gen, 3, 50, 4, f64, "N", 5)
    shared = samples[:1]  # (1, N) samples for every image
    for enc, args in (
        (NormalizedBoxCenterEncoder, (anchors, refs)),
        (NormalizedLandmarkCenterEncoder, (anchors, pts)),
    ):
        _assert_bit_equal(
            enc(positive_only=True)(shared, matches, *args),
            enc(positive_only=False)(shared, matches, *args),
        )
    _assert_bit_equal(
        [MultiClassEncoder(positive_only=True)(shared, matches, labels)],
        [MultiClassEncoder(positive_only=False)(shared, matches, labels)],
    )
