"""RetinaFace network, priors, reference-weight loading and ONNX export."""

from src.models.retinaface.export import export_onnx
from src.models.retinaface.model import RetinaFace, count_parameters
from src.models.retinaface.priors import PriorBox, feature_map_sizes, num_priors, prior_boxes
from src.models.retinaface.weights import load_reference_weights

__all__ = [
    "PriorBox",
    "RetinaFace",
    "count_parameters",
    "export_onnx",
    "feature_map_sizes",
    "load_reference_weights",
    "num_priors",
    "prior_boxes",
]
