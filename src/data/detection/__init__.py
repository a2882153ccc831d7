"""General object-detection data: one sample format, collate, augmentation and the COCO json,
Pascal VOC xml and YOLO txt readers (see ``format.py`` for the sample dict)."""

from src.data.detection.coco import CocoDetection, coco_splits, load_coco_json
from src.data.detection.format import (
    BoxCleaner,
    DetectionDataset,
    DetectionRecord,
    collate_detection,
    read_rgb,
)
from src.data.detection.transforms import (
    DetectionTransform,
    letterbox,
    to_tensor,
    to_uint8,
    unletterbox_boxes,
)
from src.data.detection.voc import VOC_CLASSES, VOCDetection, parse_voc_xml, voc_splits
from src.data.detection.yolo import YoloDetection, read_data_yaml, yolo_splits

__all__ = [
    "VOC_CLASSES",
    "BoxCleaner",
    "CocoDetection",
    "DetectionDataset",
    "DetectionRecord",
    "DetectionTransform",
    "VOCDetection",
    "YoloDetection",
    "coco_splits",
    "collate_detection",
    "letterbox",
    "load_coco_json",
    "parse_voc_xml",
    "read_data_yaml",
    "read_rgb",
    "to_tensor",
    "to_uint8",
    "unletterbox_boxes",
    "voc_splits",
    "yolo_splits",
]
