"""Hot ops: autograd Functions that launch ops_cuda kernels on CUDA tensors and fall back to
pure-torch references elsewhere (and, for resample, ops_cpu kernels on CPU). Named like
torchvision.ops.

Backend switch: ``set_backend("reference")`` (or ``CV_OPS_FORCE_REFERENCE=1``) forces the
torch path on GPU; ``set_backend("emulate")`` runs the kernels on CPU through g++ emulation.
"""

from ._backend import BACKENDS, get_backend, set_backend, use_backend
from .boxes import box_area, box_iou, generalized_box_iou, giou_loss
from .losses import sigmoid_focal_loss, smooth_l1_loss, wing_loss
from .nms import batched_nms, nms
from .pooling import corner_pool
from .resample import attention_drop, crop_resize

__all__ = [
    "BACKENDS",
    "attention_drop",
    "batched_nms",
    "box_area",
    "box_iou",
    "corner_pool",
    "crop_resize",
    "generalized_box_iou",
    "get_backend",
    "giou_loss",
    "nms",
    "set_backend",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "use_backend",
    "wing_loss",
]
