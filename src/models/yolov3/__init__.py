"""YOLOv3: Darknet-53 + three-scale head (``model.py``), darknet / archive weights files
(``weights.py``), post-processing (``detect.py``), ONNX export (``export.py``) and the
archive's burn-in warm-up (``warmup.py``)."""

from .model import ANCHORS, MASKS, YOLOv3, decode, yolov3_layers
from .weights import load_darknet_weights, load_weights

__all__ = [
    "ANCHORS",
    "MASKS",
    "YOLOv3",
    "decode",
    "load_darknet_weights",
    "load_weights",
    "yolov3_layers",
]
