"""WS-DAN (Hu et al., 2019): model and attention-guided augmentation."""

from src.models.ws_dan.augment import (
    attention_crop,
    attention_drop,
    crop_boxes,
    crop_resize,
    drop_mask,
    sample_attention_maps,
)
from src.models.ws_dan.model import WSDAN, bilinear_attention_pooling

__all__ = [
    "WSDAN",
    "attention_crop",
    "attention_drop",
    "bilinear_attention_pooling",
    "crop_boxes",
    "crop_resize",
    "drop_mask",
    "sample_attention_maps",
]
