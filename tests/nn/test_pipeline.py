"""Whole target assignment as RetinaFace will build it: batched == per image, CPU == CUDA."""

import pytest
import torch

from src.nn import (
    BBoxBatchIOU,
    BBoxCornerToCenter,
    BipartiteMatcher,
    CompositeMatcher,
    HardNegativeSampler,
    MaximumMatcher,
    MultiClassEncoder,
    NormalizedBoxCenterDecoder,
    NormalizedBoxCenterEncoder,
    NormalizedLandmarkCenterDecoder,
    NormalizedLandmarkCenterEncoder,
)
from tests.nn.helpers import random_boxes


def make(b=4, n=300, m=6, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    anchors = random_boxes(gen, n, scale=64, dtype=dtype)
    boxes = random_boxes(gen, b, m, scale=64, dtype=dtype)
    lm = boxes[..., None, :2] + torch.rand(b, m, 5, 2, generator=gen, dtype=dtype) * (
        boxes[..., None, 2:] - boxes[..., None, :2]
    )
    lm = lm.flatten(2)
    boxes[1, 3:] = -1
    lm[1, 3:] = -1
    boxes[2] = -1  # no faces
    lm[2] = -1
    lm[0, 0] = -1  # a face without landmarks
    labels = torch.where((boxes == -1).all(-1), -1, 0)
    losses = torch.rand(b, n, generator=gen, dtype=dtype)
    return anchors, boxes, lm, labels, losses


def assign(anchors, boxes, lm, labels, losses):
    iou = BBoxBatchIOU()(anchors, boxes)
    matches = CompositeMatcher([BipartiteMatcher(share_max=False), MaximumMatcher(0.35)])(iou)
    samples = HardNegativeSampler(ratio=7)(matches, losses)
    box_t, box_m = NormalizedBoxCenterEncoder()(samples, matches, anchors, boxes)
    lm_t, lm_m = NormalizedLandmarkCenterEncoder()(samples, matches, anchors, lm)
    cls_t = MultiClassEncoder()(samples, matches, labels)
    return matches, samples, box_t, box_m, lm_t, lm_m, cls_t


def test_assignment_batched_equals_per_image_and_decodes_back():
    anchors, boxes, lm, labels, losses = make()
    out = assign(anchors, boxes, lm, labels, losses)
    for i in range(boxes.shape[0]):
        single = assign(
            anchors, boxes[i : i + 1], lm[i : i + 1], labels[i : i + 1], losses[i : i + 1]
        )
        for a, s in zip(out, single):
            assert torch.equal(a[i], s[0])
    matches, samples, box_t, box_m, lm_t, lm_m, cls_t = out
    assert (matches[2] == -1).all() and (samples[2] >= 0).all()  # no faces: nothing sampled
    assert (matches[1] < 3).all()
    # every real face owns at least one anchor (forced bipartite match)
    for i, nfaces in ((0, 6), (1, 3), (3, 6)):
        assert set(matches[i][matches[i] >= 0].tolist()) == set(range(nfaces))
    # decoding the targets of positives gives the matched ground truth back
    centers = BBoxCornerToCenter()(anchors)
    dec = NormalizedBoxCenterDecoder()(box_t, centers)
    pos = samples > 0
    ref = torch.gather(boxes, 1, matches.clamp(min=0)[..., None].expand(-1, -1, 4))
    torch.testing.assert_close(dec[pos], ref[pos])
    dec_lm = NormalizedLandmarkCenterDecoder()(lm_t, centers)
    ref_lm = torch.gather(lm, 1, matches.clamp(min=0)[..., None].expand(-1, -1, 10))
    has = lm_m[..., 0] > 0
    torch.testing.assert_close(dec_lm[has], ref_lm[has])
    assert not (has & (matches == 0))[0].any()  # face 0 of image 0 has no landmarks
    assert (cls_t[pos] == 1).all() and (cls_t[samples < 0] == 0).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_assignment_cuda_equals_cpu():
    args = make(b=8, n=2000, m=10, dtype=torch.float32)
    cpu = assign(*args)
    gpu = assign(*(a.cuda() for a in args))
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-5, atol=1e-5)
