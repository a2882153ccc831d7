"""CenterNet (keypoint triplets) network, its backbones and decoding."""

from src.models.centernet.decode import DecodeConfig, decode, postprocess, soft_nms_batched
from src.models.centernet.model import HEAD_KEYS, HOURGLASS, CenterNet

__all__ = [
    "HEAD_KEYS",
    "HOURGLASS",
    "CenterNet",
    "DecodeConfig",
    "decode",
    "postprocess",
    "soft_nms_batched",
]
