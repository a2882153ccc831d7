"""Detection toolkit: a batched PyTorch port of ``gluoncv.nn``.

Boxes are corner ``(x1, y1, x2, y2)`` unless a name says center; batches are ``(B, N, ...)``
with ``-1`` padding rows; matchers return -1 for unmatched; samplers return +1 positive,
-1 negative, 0 ignore. IoU comes from ``src.ops.box_iou`` (the one implementation in the repo).
On CPU, ``SparseIOU.from_grid(AnchorGrid(...), boxes, floor)`` stands in for the dense IoU of an
anchor grid (exact; see ``src/nn/README.md``).
"""

from .anchor import AnchorGrid, anchor_boxes
from .bbox import (
    BBoxArea,
    BBoxBatchIOU,
    BBoxCenterToCorner,
    BBoxClipToImage,
    BBoxCornerToCenter,
    BBoxSplit,
)
from .coder import (
    CenterNetDecoder,
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
from .feature import FeatureExpander, FeatureExtractor
from .matcher import (
    BipartiteMatcher,
    CompositeMatcher,
    MaximumMatcher,
    bipartite_matching,
    force_best_anchors,
)
from .nms import box_nms
from .predictor import ConvPredictor, FCPredictor
from .sampler import HardNegativeSampler, NaiveSampler, OHEMSampler, QuotaSampler, select_top_k
from .sparse import SparseIOU

__all__ = [
    "AnchorGrid",
    "BBoxArea",
    "BBoxBatchIOU",
    "BBoxCenterToCorner",
    "BBoxClipToImage",
    "BBoxCornerToCenter",
    "BBoxSplit",
    "BipartiteMatcher",
    "CenterNetDecoder",
    "CompositeMatcher",
    "ConvPredictor",
    "FCPredictor",
    "FeatureExpander",
    "force_best_anchors",
    "FeatureExtractor",
    "HardNegativeSampler",
    "MaximumMatcher",
    "MultiClassDecoder",
    "MultiClassEncoder",
    "MultiPerClassDecoder",
    "NaiveSampler",
    "NormalizedBoxCenterDecoder",
    "NormalizedBoxCenterEncoder",
    "NormalizedLandmarkCenterDecoder",
    "NormalizedLandmarkCenterEncoder",
    "NormalizedPerClassBoxCenterEncoder",
    "OHEMSampler",
    "QuotaSampler",
    "SigmoidClassEncoder",
    "SparseIOU",
    "anchor_boxes",
    "bipartite_matching",
    "box_nms",
    "select_top_k",
]
