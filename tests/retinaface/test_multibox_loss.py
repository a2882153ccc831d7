"""MultiBoxLoss: batched target assignment and loss vs the per-image loop port of the reference
(tests/retinaface/reference.py), hand-worked matching cases, the reference bug and its fix."""

from __future__ import annotations

import math

import pytest
import torch

from src.losses.multibox import MultiBoxLoss
from src.models.retinaface import prior_boxes
from src.models.retinaface.priors import anchor_grid
from src.nn import force_best_anchors
from tests.retinaface import reference as R

F64 = torch.float64


def random_targets(batch: int, size: int, seed: int, max_faces: int = 12, tiny: bool = True):
    """Per-image (n, 15) float64 targets (corners, landmarks, label) in normalised units:
    faces 2..250 px (many tiny ones that get ignored), 20 % without landmarks (label -1,
    landmarks -1), image 0 without faces."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batch):
        n = 0 if i == 0 else int(torch.randint(1, max_faces + 1, (1,), generator=g))
        lo = math.log(2.0 if tiny else 12.0)
        side = torch.exp(torch.empty(n, 1, dtype=F64).uniform_(lo, math.log(250), generator=g))
        wh = side * torch.empty(n, 2, dtype=F64).uniform_(0.7, 1.3, generator=g) / size
        c = torch.rand(n, 2, generator=g, dtype=F64)
        box = torch.cat([c - wh / 2, c + wh / 2], 1)
        pts = c[:, None, :] + (torch.rand(n, 5, 2, generator=g, dtype=F64) - 0.5) * wh[:, None]
        lab = torch.where(torch.rand(n, generator=g) < 0.2, -1.0, 1.0).to(F64)
        pts = pts.reshape(n, 10)
        pts[lab < 0] = -1
        out.append(torch.cat([box, pts, lab[:, None]], 1))
    return out


def predictions(batch: int, num_priors: int, seed: int, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, num_priors, 4, generator=g, dtype=dtype),
        torch.randn(batch, num_priors, 2, generator=g, dtype=dtype) * 2,
        torch.randn(batch, num_priors, 10, generator=g, dtype=dtype),
    )


def _ours_targets(crit, priors, targets):
    boxes, labels, landms = R.pad_targets(targets)
    return crit.assign(priors, boxes, labels, landms)


def _check_targets_equal(ours, priors, targets, fixed):
    loc_t, conf_t, landm_t = R.reference_targets(priors, targets, fixed=fixed)
    pos = conf_t != 0
    assert torch.equal(ours.positive, pos)
    torch.testing.assert_close(ours.loc[pos], loc_t[pos], rtol=1e-9, atol=1e-9)
    lpos = conf_t > 0
    assert torch.equal(ours.landm_mask, lpos)
    torch.testing.assert_close(ours.landm[lpos], landm_t[lpos], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("size", [(160, 160), (96, 128)])
def test_targets_match_reference_loop(fixed, size):
    priors = prior_boxes(size, dtype=F64)
    targets = random_targets(6, max(size), seed=hash(size) % 1000 + fixed)
    crit = MultiBoxLoss(reference_matching=not fixed)
    _check_targets_equal(_ours_targets(crit, priors, targets), priors, targets, fixed)


@pytest.mark.parametrize("fixed", [True, False])
def test_loss_values_and_gradients_match_reference_loop(fixed):
    priors = prior_boxes((160, 160), dtype=F64)
    targets = random_targets(5, 160, seed=7)
    preds = [p.requires_grad_() for p in predictions(5, priors.shape[0], seed=3)]
    ours = MultiBoxLoss(reference_matching=not fixed)(preds, priors, *R.pad_targets(targets))
    ref = R.reference_loss(preds, priors, targets, fixed=fixed)
    for k in ("loss", "loc", "cls", "landm"):
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-10, atol=1e-12)
    assert float(ours["num_pos"]) == ref["num_pos"] > 0
    g_ours = torch.autograd.grad(ours["loss"], preds)
    g_ref = torch.autograd.grad(ref["loss"], preds)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_loss_close_to_float64_reference():
    priors64 = prior_boxes((128, 128), dtype=F64)
    targets = random_targets(4, 128, seed=11, tiny=False)
    preds = predictions(4, priors64.shape[0], seed=5)
    ref = R.reference_loss(preds, priors64, targets, fixed=True)
    boxes, labels, landms = R.pad_targets(targets, torch.float32)
    ours = MultiBoxLoss()(
        [p.float() for p in preds], prior_boxes((128, 128)), boxes, labels, landms
    )
    for k in ("loss", "loc", "cls", "landm"):
        assert float(ours[k]) == pytest.approx(float(ref[k]), rel=1e-4)


# ------------------------------------------------------------------ hand-worked cases
SIZE = 640
P640 = prior_boxes((SIZE, SIZE), dtype=F64)


def _prior_index(level: int, row: int, col: int, anchor: int) -> int:
    fms = [80, 40, 20]
    base = sum(2 * f * f for f in fms[:level])
    return base + (row * fms[level] + col) * 2 + anchor


def _face(x1, y1, x2, y2, label=1.0):
    pts = [(x1 + x2) / 2, (y1 + y2) / 2] * 5
    return torch.tensor([[x1, y1, x2, y2, *pts, label]], dtype=F64) / torch.tensor(
        [SIZE] * 14 + [1.0], dtype=F64
    )


def test_prior_index_layout_is_level_row_col_size():
    p = _prior_index(0, 13, 13, 0)
    torch.testing.assert_close(P640[p] * SIZE, torch.tensor([108.0, 108, 16, 16], dtype=F64))
    p = _prior_index(1, 2, 5, 1)
    torch.testing.assert_close(P640[p] * SIZE, torch.tensor([88.0, 40, 128, 128], dtype=F64))


def test_exact_prior_face_gets_zero_box_target_and_its_neighbours():
    # a 16 px face exactly on the prior centred at (108, 108): IoU 1, target (0, 0, 0, 0)
    t = [_face(100, 100, 116, 116)]
    ours = _ours_targets(MultiBoxLoss(), P640, t)
    p = _prior_index(0, 13, 13, 0)
    assert ours.matches[0, p] == 0
    torch.testing.assert_close(ours.loc[0, p], torch.zeros(4, dtype=F64))
    # the 32 px prior of the same cell has IoU 256/1024 = 0.25 < 0.35: background
    assert ours.matches[0, p + 1] == -1
    # only the exact prior is positive (neighbours at 8 px shift: IoU 128/384 = 1/3 < 0.35)
    assert int(ours.positive.sum()) == 1
    # landmarks all at the face centre = prior centre: zero targets
    torch.testing.assert_close(ours.landm[0, p], torch.zeros(10, dtype=F64))


def test_tiny_face_is_ignored_and_no_face_image_is_all_background():
    # a 3 px face: best IoU 9/256 < 0.2 -> ignored, no positive at all
    t = [_face(106.5, 106.5, 109.5, 109.5), torch.zeros(0, 15, dtype=F64)]
    ours = _ours_targets(MultiBoxLoss(), P640, t)
    assert not ours.positive.any()
    preds = predictions(2, P640.shape[0], seed=0)
    out = MultiBoxLoss()(preds, P640, *R.pad_targets(t))
    # no positives: no negatives are mined either, every term is 0
    assert float(out["loss"]) == 0.0 and float(out["num_pos"]) == 0.0
    ref = R.reference_loss(preds, P640, t, fixed=True)
    assert float(ref["loss"]) == 0.0


def test_batch_without_any_face():
    preds = [p.requires_grad_() for p in predictions(2, P640.shape[0], seed=0)]
    boxes = torch.zeros(2, 0, 4, dtype=F64)
    out = MultiBoxLoss()(
        preds, P640, boxes, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 10, dtype=F64)
    )
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()  # a graph exists even without faces
    assert all(p.grad is not None and not p.grad.any() for p in preds)


def test_ignored_tiny_face_steals_forced_prior_only_with_reference_matching():
    # face 0: 16 px on the prior at (108, 108); face 1: a 3 px face with the same best prior
    # (IoU 9/256 < 0.2, ignored). The reference's loop forces the prior to face 1 (last wins)
    # and keeps it positive (overlap set to 2 by face 0): it regresses a 3 px box.
    t = [torch.cat([_face(100, 100, 116, 116), _face(106.5, 106.5, 109.5, 109.5, -1.0)])]
    p = _prior_index(0, 13, 13, 0)
    fixed = _ours_targets(MultiBoxLoss(), P640, t)
    buggy = _ours_targets(MultiBoxLoss(reference_matching=True), P640, t)
    assert fixed.matches[0, p] == 0 and buggy.matches[0, p] == 1
    torch.testing.assert_close(fixed.loc[0, p], torch.zeros(4, dtype=F64))
    # hand-worked: w = 3 / 16 of the prior -> log(3/16) / 0.2
    expect = torch.tensor([0.0, 0.0, math.log(3 / 16) / 0.2, math.log(3 / 16) / 0.2], dtype=F64)
    torch.testing.assert_close(buggy.loc[0, p], expect)
    assert fixed.landm_mask[0, p] and not buggy.landm_mask[0, p]  # label -1: no landmarks
    _check_targets_equal(fixed, P640, t, fixed=True)
    _check_targets_equal(buggy, P640, t, fixed=False)


def test_ignored_face_redirects_a_threshold_match_only_with_reference_matching():
    # face 0: 24 x 24 at (96..120): its best prior is the 32 px prior at (108, 108)
    # (IoU 576/1024 = 0.5625, forced); a 16 px prior at (108, 108) has IoU 256/576 = 0.44
    # >= 0.35 with it. Face 1: 3 px at that centre, ignored, best prior = the 16 px prior
    # (IoU 9/256). The reference gives the 16 px prior face 1's box.
    t = [torch.cat([_face(96, 96, 120, 120), _face(106.5, 106.5, 109.5, 109.5)])]
    p16, p32 = _prior_index(0, 13, 13, 0), _prior_index(0, 13, 13, 1)
    fixed = _ours_targets(MultiBoxLoss(), P640, t)
    buggy = _ours_targets(MultiBoxLoss(reference_matching=True), P640, t)
    assert fixed.matches[0, p32] == 0 and buggy.matches[0, p32] == 0
    assert fixed.matches[0, p16] == 0 and buggy.matches[0, p16] == 1
    _check_targets_equal(fixed, P640, t, fixed=True)
    _check_targets_equal(buggy, P640, t, fixed=False)


def test_forced_prior_last_valid_face_wins_and_threshold_ties_go_to_first_face():
    # two identical 16 px faces on the same prior: both force it, the later one wins (reference
    # loop order); the neighbouring priors (IoU 1/3) stay background
    t = [torch.cat([_face(100, 100, 116, 116), _face(100, 100, 116, 116)])]
    ours = _ours_targets(MultiBoxLoss(), P640, t)
    assert ours.matches[0, _prior_index(0, 13, 13, 0)] == 1
    _check_targets_equal(ours, P640, t, fixed=True)
    best = torch.tensor([[3, 1, 3, 0]])
    forcing = torch.tensor([[True, True, True, False]])
    out = force_best_anchors(best, forcing, 5)
    assert out.tolist() == [[-1, 1, -1, 2, -1]]


def test_hard_negative_mining_count_and_hand_computed_loss():
    # one positive -> exactly 7 negatives: the 7 priors with the largest background loss
    t = [_face(100, 100, 116, 116)]
    p = _prior_index(0, 13, 13, 0)
    n = P640.shape[0]
    loc = torch.zeros(1, n, 4, dtype=F64)
    loc[0, p] = torch.tensor([1.0, -0.5, 2.0, 0.0], dtype=F64)  # target 0
    conf = torch.zeros(1, n, 2, dtype=F64)
    conf[0, :10, 1] = torch.arange(10, dtype=F64)  # the hardest negatives: priors 9..3
    conf[0, p, 1] = math.log(3.0)  # p(face) = 3/4 at the positive
    landm = torch.zeros(1, n, 10, dtype=F64)
    out = MultiBoxLoss()((loc, conf, landm), P640, *R.pad_targets(t))
    # smooth L1: 0.5 + 0.125 + 1.5 + 0 = 2.125
    assert float(out["loc"]) == pytest.approx(2.125, abs=1e-12)
    ce_neg = sum(math.log1p(math.exp(k)) for k in range(3, 10))
    assert float(out["cls"]) == pytest.approx(ce_neg - math.log(0.75), abs=1e-12)
    assert float(out["landm"]) == 0.0
    assert float(out["loss"]) == pytest.approx(2 * 2.125 + ce_neg - math.log(0.75), abs=1e-12)


def test_landmark_loss_normalised_by_landmark_positives_only():
    # two exact 16 px faces, one without landmarks: 2 positives, 1 landmark positive
    t = [torch.cat([_face(100, 100, 116, 116), _face(300, 300, 316, 316, -1.0)])]
    n = P640.shape[0]
    loc, conf, landm = (
        torch.zeros(1, n, 4, dtype=F64),
        torch.zeros(1, n, 2, dtype=F64),
        torch.full((1, n, 10), 0.5, dtype=F64),
    )
    out = MultiBoxLoss()((loc, conf, landm), P640, *R.pad_targets(t))
    assert float(out["num_pos"]) == 2
    assert float(out["landm"]) == pytest.approx(10 * 0.5 * 0.25, abs=1e-12)  # / 1, not / 2


def test_wing_and_focal_options():
    priors = prior_boxes((128, 128), dtype=F64)
    targets = random_targets(3, 128, seed=2, tiny=False)
    preds = predictions(3, priors.shape[0], seed=1)
    base = MultiBoxLoss()(preds, priors, *R.pad_targets(targets))
    wing = MultiBoxLoss(landmark_loss="wing")(preds, priors, *R.pad_targets(targets))
    focal = MultiBoxLoss(classification="focal")(preds, priors, *R.pad_targets(targets))
    assert float(wing["loc"]) == float(base["loc"]) and float(wing["cls"]) == float(base["cls"])
    assert float(wing["landm"]) != float(base["landm"])
    # focal over all priors, from the two-class logit difference, normalised by positives
    t = MultiBoxLoss().assign(priors, *R.pad_targets(targets))
    x = preds[1][..., 1] - preds[1][..., 0]
    y = t.positive.to(F64)
    p = torch.sigmoid(x)
    fl = -(0.25 * y * (1 - p) ** 2 * torch.log(p) + 0.75 * (1 - y) * p**2 * torch.log(1 - p))
    expect = fl.sum() / y.sum()
    assert float(focal["cls"]) == pytest.approx(float(expect), rel=1e-9)
    with pytest.raises(ValueError, match="landmark_loss"):
        MultiBoxLoss(landmark_loss="l2")
    with pytest.raises(ValueError, match="classification"):
        MultiBoxLoss(classification="bce")


# ------------------------------------------------------------------ windowed assignment
@pytest.mark.parametrize("size", [(160, 160), (96, 200), (640, 640)])
def test_grid_candidates_contain_every_pair_reaching_the_threshold(size):
    priors = prior_boxes(size, dtype=F64)
    targets = random_targets(6, max(size), seed=sum(size))
    boxes, _, _ = R.pad_targets(targets)
    face, prior = anchor_grid(size).candidates(boxes, 0.2)
    iou = R.jaccard(boxes.reshape(-1, 4), R.point_form(priors))  # (F, P)
    iou[(boxes.reshape(-1, 4) == -1).all(1)] = -1
    need = set(map(tuple, (iou >= 0.2 * (1 - 1e-9)).nonzero().tolist()))
    have = set(zip(face.tolist(), prior.tolist()))
    assert need and need <= have
    assert len(have) == len(face)  # no duplicate pair
    assert len(have) < 0.1 * iou.numel()  # and far fewer pairs than the dense IoU
    # face-major, ascending prior index within a face
    key = face * priors.shape[0] + prior
    assert torch.all(key[1:] > key[:-1])


def test_grid_candidates_hand_worked():
    # a 16 px face [100, 116]^2, t = 0.2; prior centres 100, 108, 116 are cells 12, 13, 14.
    # 16 px priors: inter must reach 0.2 * (256 + 256) / 1.2 = 85.3 px^2. Row 13 (y-overlap
    # 16 px) needs an x-overlap >= 5.33 px: columns 12, 13, 14 (overlaps 8, 16, 8); rows 12
    # and 14 (y-overlap 8) need 10.7 px: column 13 only. A cross of 5 cells.
    # 32 px priors: 0.2 * (1024 + 256) / 1.2 = 213.3 px^2; rows 12..14 overlap 16 px in y
    # (rows 11, 15: 8 px, would need 26.7 > 16 in x), x-overlap >= 13.3: columns 12..14.
    # 64 px priors: 0.2 * 4352 / 1.2 / 16 = 45.3 px > 16 px of face: impossible (and larger).
    # Each row's run goes from its first feasible (cell, size) to its last one, so rows 12
    # and 14 also hold the 16 px prior at column 14 (IoU 0.14; extra pairs are allowed).
    boxes = torch.tensor([[[100.0, 100, 116, 116]]], dtype=F64) / SIZE
    face, prior = anchor_grid((SIZE, SIZE)).candidates(boxes, 0.2)
    edge = [(12, 1), (13, 0), (13, 1), (14, 0), (14, 1)]
    middle = [(c, a) for c in (12, 13, 14) for a in (0, 1)]
    expect = [
        _prior_index(0, r, c, a)
        for r, cells in ((12, edge), (13, middle), (14, edge))
        for c, a in cells
    ]
    assert prior.tolist() == expect and face.tolist() == [0] * 16
    iou = R.jaccard(boxes[0], R.point_form(P640))[0]
    assert set((iou >= 0.2).nonzero()[:, 0].tolist()) == set(expect) - {
        _prior_index(0, 12, 14, 0),
        _prior_index(0, 14, 14, 0),
    }


@pytest.mark.parametrize("size", [(160, 160), (128, 96)])
def test_windowed_assignment_equals_dense(size):
    priors = prior_boxes(size, dtype=F64)
    targets = random_targets(5, max(size), seed=13)
    preds = [p.requires_grad_() for p in predictions(5, priors.shape[0], seed=9)]
    args = (priors, *R.pad_targets(targets))
    dense = MultiBoxLoss(assignment="dense")(preds, *args, grid=anchor_grid(size))
    windowed = MultiBoxLoss(assignment="windowed")(preds, *args, grid=anchor_grid(size))
    for k in dense:
        torch.testing.assert_close(windowed[k], dense[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(dense["loss"], preds), torch.autograd.grad(windowed["loss"], preds)
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    boxes = R.pad_targets(targets)[0]
    crit = MultiBoxLoss()
    assert crit._windowed(priors, anchor_grid(size), boxes.device)
    dense = MultiBoxLoss(assignment="dense").match(priors, boxes, anchor_grid(size))
    assert torch.equal(crit.match(priors, boxes, anchor_grid(size)), dense)
    assert torch.equal(crit.match(priors, boxes), dense)  # no grid: dense


def test_auto_assignment_choice_and_windowed_edge_cases():
    crit = MultiBoxLoss()
    pri = prior_boxes((64, 64))
    assert crit._windowed(pri, anchor_grid((64, 64)), torch.device("cpu"))
    assert not crit._windowed(pri, None, torch.device("cpu"))
    assert not crit._windowed(pri, anchor_grid((64, 96)), torch.device("cpu"))  # other grid: dense
    assert not MultiBoxLoss(reference_matching=True)._windowed(
        pri, anchor_grid((64, 64)), torch.device("cpu")
    )
    with pytest.raises(ValueError, match="windowed"):
        MultiBoxLoss(assignment="windowed")._windowed(
            pri, anchor_grid((64, 96)), torch.device("cpu")
        )
    # no face / only an ignored tiny face: zero loss, like the dense path
    preds = predictions(2, P640.shape[0], seed=0)
    t = [_face(106.5, 106.5, 109.5, 109.5), torch.zeros(0, 15, dtype=F64)]
    out = MultiBoxLoss(assignment="windowed")(
        preds, P640, *R.pad_targets(t), grid=anchor_grid((SIZE, SIZE))
    )
    assert float(out["loss"]) == 0.0


# windowed edge cases on a 256 px grid: coordinates k / 256 are exact binary fractions, so
# priors that tie in IoU tie exactly in float64 and float32
S256 = 256
P256 = prior_boxes((S256, S256), dtype=F64)


def _face256(x1, y1, x2, y2, label=1.0):
    pts = [(x1 + x2) / 2, (y1 + y2) / 2] * 5
    return torch.tensor([[x1, y1, x2, y2, *pts, label]], dtype=F64) / torch.tensor(
        [S256] * 14 + [1.0], dtype=F64
    )


def _p256(row: int, col: int, anchor: int = 0) -> int:  # level 0 (8 px cells, 32 x 32)
    return (row * 32 + col) * 2 + anchor


def _edge_case_targets():
    """A batch with tiny faces below every floor, tied best priors, a face kept below
    overlap_thresh, shared best priors, faces overlapping no prior, and padding rows."""
    return [
        # tiny faces: 2 px (best IoU 4/256, below the SparseIOU's refined floors: dense
        # column), 5 px (25/256), 9 px (81/256 in [0.2, 0.35): kept, forces its prior)
        torch.cat(
            [_face256(11, 11, 13, 13), _face256(42, 42, 47, 47, -1.0), _face256(72, 72, 81, 81)]
        ),
        # 8 x 10 face centred between the 16 px priors of cells (1, 1) and (1, 2): both have
        # IoU 80/256 = 0.3125 (kept face, below overlap_thresh): only the first is forced
        _face256(12, 7, 20, 17),
        # two kept faces with the same best prior (the later wins), a tiny ignored face on it
        # too (steals nothing), and a face far outside the image (IoU 0 with every prior)
        torch.cat(
            [
                _face256(100, 100, 116, 116),
                _face256(101, 101, 116, 116),
                _face256(107, 107, 109, 109),
                _face256(900, 900, 910, 910),
            ]
        ),
        torch.zeros(0, 15, dtype=F64),  # no face: all padding rows
        # only a face outside the image: an image without any SparseIOU row
        _face256(-300, -300, -290, -290),
        # a large face (many priors above overlap_thresh) next to a tiny one
        torch.cat([_face256(130, 20, 250, 150, -1.0), _face256(120, 200, 123, 203)]),
    ]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_windowed_edge_cases_equal_dense_and_reference(dtype):
    targets = _edge_case_targets()
    priors = P256.to(dtype)
    boxes, labels, landms = R.pad_targets(targets, dtype)
    size = (S256, S256)
    windowed, dense = MultiBoxLoss(assignment="windowed"), MultiBoxLoss(assignment="dense")
    m_w = windowed.match(priors, boxes, anchor_grid(size))
    m_d = dense.match(priors, boxes, anchor_grid(size))
    assert torch.equal(m_w, m_d)
    # hand-worked expectations
    first, second = _p256(1, 1), _p256(1, 2)
    iou = R.jaccard(boxes[1, :1].double(), R.point_form(priors.double()))[0]
    assert iou[first] == iou[second] == iou.max() == 80 / 256
    assert m_w[1, first] == 0 and m_w[1, second] == -1 and int((m_w[1] >= 0).sum()) == 1
    assert int((m_w[0] >= 0).sum()) == 1 and m_w[0, _p256(9, 9)] == 2  # the 9 px face only
    assert m_w[2, _p256(13, 13)] == 1  # the later of the two faces on that prior
    assert not (m_w[3:5] >= 0).any()
    if dtype == F64:
        t = windowed.assign(priors, boxes, labels, landms, grid=anchor_grid(size))
        assert torch.equal(t.matches, m_w)
        _check_targets_equal(t, priors, targets, fixed=True)
    # losses and gradients
    preds = [
        p.requires_grad_() for p in predictions(len(targets), priors.shape[0], seed=4, dtype=dtype)
    ]
    out_w = windowed(preds, priors, boxes, labels, landms, grid=anchor_grid(size))
    out_d = dense(preds, priors, boxes, labels, landms, grid=anchor_grid(size))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)
    for k in out_d:
        torch.testing.assert_close(out_w[k], out_d[k], **tol)
    for a, b in zip(
        torch.autograd.grad(out_w["loss"], preds), torch.autograd.grad(out_d["loss"], preds)
    ):
        torch.testing.assert_close(a, b, **tol)


def test_windowed_without_any_overlapping_face():
    # every face lies outside the image: the SparseIOU has no row at all
    targets = [
        _face256(-300, -300, -290, -290),
        _face256(900, 900, 910, 910),
        torch.zeros(0, 15, dtype=F64),
    ]
    boxes, labels, landms = R.pad_targets(targets)
    crit = MultiBoxLoss(assignment="windowed")
    assert not (crit.match(P256, boxes, anchor_grid((S256, S256))) >= 0).any()
    preds = [p.requires_grad_() for p in predictions(3, P256.shape[0], seed=1)]
    out = crit(preds, P256, boxes, labels, landms, grid=anchor_grid((S256, S256)))
    assert float(out["loss"].detach()) == 0.0 and float(out["num_pos"]) == 0.0
    out["loss"].backward()
    assert all(p.grad is not None and not p.grad.any() for p in preds)


@pytest.mark.parametrize("seed", range(4))
def test_windowed_random_crowds_equal_dense(seed):
    # dense crowds of faces of every size, near-duplicates included (ties between faces)
    g = torch.Generator().manual_seed(seed)
    targets = random_targets(6, S256, seed=100 + seed, max_faces=25)
    targets[1] = torch.cat([targets[1], targets[1][:3]])  # duplicate faces
    boxes, labels, landms = R.pad_targets(targets)
    size = (S256, S256)
    m_w = MultiBoxLoss(assignment="windowed").match(P256, boxes, anchor_grid(size))
    m_d = MultiBoxLoss(assignment="dense").match(P256, boxes, anchor_grid(size))
    assert torch.equal(m_w, m_d)
    preds = [
        p.requires_grad_()
        for p in predictions(6, P256.shape[0], seed=int(torch.randint(99, (1,), generator=g)))
    ]
    out_w = MultiBoxLoss(assignment="windowed")(
        preds, P256, boxes, labels, landms, grid=anchor_grid(size)
    )
    ref = R.reference_loss(preds, P256, targets, fixed=True)
    for k in ("loss", "loc", "cls", "landm"):
        torch.testing.assert_close(out_w[k], ref[k], rtol=1e-10, atol=1e-12)


def test_windowed_needs_positive_thresholds():
    pri = prior_boxes((64, 64))
    # with a threshold of 0 a face without any overlap counts (it forces prior 0): dense
    assert not MultiBoxLoss(ignore_thresh=0.0)._windowed(
        pri, anchor_grid((64, 64)), torch.device("cpu")
    )
    with pytest.raises(ValueError, match="thresh"):
        MultiBoxLoss(ignore_thresh=0.0, assignment="windowed")._windowed(
            pri, anchor_grid((64, 64)), torch.device("cpu")
        )
    boxes, _, _ = R.pad_targets([_face(-300, -300, -290, -290), _face(100, 100, 116, 116)])
    out = MultiBoxLoss(ignore_thresh=0.0).match(P640, boxes, anchor_grid((SIZE, SIZE)))
    assert out[0, 0] == 0 and out[1, 0] == -1  # the argmax of an all-zero IoU column
    assert MultiBoxLoss().match(P640, boxes, anchor_grid((SIZE, SIZE)))[0, 0] == -1
