"""CUDA kernels vs the torch reference on a real GPU (skipped without CUDA and CuPy): float32/
float64 values and gradients, fp16/bf16, a second device, a non-default stream, and proof that
the kernel path (not the reference) ran."""

import functools

import pytest
import torch
import torchvision

import ops_cuda.launch as kernel_launch
from src.ops import (
    batched_nms,
    box_iou,
    corner_pool,
    generalized_box_iou,
    giou_loss,
    nms,
    sigmoid_focal_loss,
    smooth_l1_loss,
    use_backend,
    wing_loss,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not kernel_launch.cupy_available(), reason="needs CuPy"),
]


def _boxes(n, gen):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 50
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 30 + 1
    return torch.cat([xy, xy + wh], 1)


def _cases(gen):
    """(name, fn, float64 CPU inputs); every fn returns a tensor to compare."""
    targets = torch.randint(-1, 5, (300,), generator=gen)
    return [
        (
            "focal",
            lambda x: sigmoid_focal_loss(x, targets.to(x.device)),
            [torch.randn(300, 4, generator=gen, dtype=torch.float64) * 3],
        ),
        (
            "smooth_l1",
            lambda x, t, s: smooth_l1_loss(x, t, s),
            [
                torch.randn(500, 4, generator=gen, dtype=torch.float64) * 2,
                torch.randn(500, 4, generator=gen, dtype=torch.float64),
                torch.rand(4, generator=gen, dtype=torch.float64) + 0.5,
            ],
        ),
        (
            "wing",
            lambda x, t: wing_loss(x, t),
            [
                torch.randn(500, 10, generator=gen, dtype=torch.float64) * 15,
                torch.randn(500, 10, generator=gen, dtype=torch.float64),
            ],
        ),
        ("giou_loss", lambda a, b: giou_loss(a, b, offset=1), [_boxes(400, gen), _boxes(400, gen)]),
        *[
            (
                f"corner_{d}",
                functools.partial(corner_pool, direction=d),
                [torch.randn(2, 3, 17, 33, generator=gen, dtype=torch.float64)],
            )
            for d in ("top", "bottom", "left", "right")
        ],
    ]


def _run(fn, inputs, device, dtype, up_seed=0):
    xs = [x.to(device, dtype).requires_grad_() for x in inputs]
    y = fn(*xs)
    gen = torch.Generator().manual_seed(up_seed)
    up = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device, dtype)
    grads = torch.autograd.grad(y, xs, up)
    return [y.detach()] + [g.detach() for g in grads]


@pytest.fixture
def count_launches(monkeypatch):
    calls = []
    real = kernel_launch.launch

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel_launch, "launch", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernels_match_reference(dtype, count_launches):
    gen = torch.Generator().manual_seed(0)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    for name, fn, inputs in _cases(gen):
        count_launches.clear()
        got = _run(fn, inputs, "cuda", dtype)
        assert count_launches, f"{name}: the kernel path did not run"
        with use_backend("reference"):
            want = _run(fn, inputs, "cuda", dtype)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_kernels(dtype):
    gen = torch.Generator().manual_seed(1)
    for name, fn, inputs in _cases(gen):
        if name == "giou_loss":
            continue  # box losses take float32/float64 kernels (half goes to the reference)
        # round the inputs to dtype first, so both runs see the same values (and the same
        # ties, which decide where corner pooling sends gradients)
        rounded = [x.to(dtype).to(torch.float64) for x in inputs]
        got = _run(fn, rounded, "cuda", dtype)
        want = _run(fn, rounded, "cuda", torch.float32)
        for g, w in zip(got, want):
            assert g.dtype == dtype
            torch.testing.assert_close(g.float(), w, rtol=2e-2, atol=2e-2, msg=name)


def test_pairwise_and_nms_match(count_launches):
    gen = torch.Generator().manual_seed(2)
    a, b = _boxes(300, gen).cuda().float(), _boxes(200, gen).cuda().float()
    torch.testing.assert_close(box_iou(a, b), torchvision.ops.box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b))
    scores = torch.rand(300, generator=gen).cuda()
    idxs = torch.randint(0, 5, (300,), generator=gen).cuda()
    for thr in (0.3, 0.5, 0.7):
        assert nms(a, scores, thr).tolist() == torchvision.ops.nms(a, scores, thr).tolist()
        assert (
            batched_nms(a, scores, idxs, thr).tolist()
            == torchvision.ops.batched_nms(a, scores, idxs, thr).tolist()
        )
        with use_backend("reference"):
            ref1 = nms(a, scores, thr, offset=1).tolist()
        assert nms(a, scores, thr, offset=1).tolist() == ref1
    assert "nms_mask" in count_launches and "box_iou_pairwise" in count_launches


def test_non_default_stream():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 8, 64, 64, generator=gen).cuda()
    want = torch.cummax(x.flip(2), 2).values.flip(2)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = torch.empty_like(x).copy_(x) * 1.0  # produced on s: the kernel must run after it
        out = corner_pool(y, "top")
    s.synchronize()
    torch.testing.assert_close(out, want)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 6, (64,), generator=gen)
    with torch.cuda.device(0):  # current device differs from the tensors' device
        got = sigmoid_focal_loss(x.to("cuda:1"), targets.to("cuda:1"))
        boxes = _boxes(100, gen).to("cuda:1")
        keep = nms(boxes, torch.rand(100, generator=gen).to("cuda:1"), 0.5)
    assert got.device == torch.device("cuda:1") and keep.device == torch.device("cuda:1")
    with use_backend("reference"):
        want = sigmoid_focal_loss(x, targets)
    torch.testing.assert_close(got.cpu(), want)
