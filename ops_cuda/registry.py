"""Which kernels each ``.cu`` file holds and for which element types they are instantiated.

Name expressions are what NVRTC (and CuPy's RawModule) need to find template instantiations,
e.g. ``sigmoid_focal_fwd<float>``. The same table drives the CuPy loader, the g++ emulation
and the NVRTC compile tests, so a kernel added here is compiled and tested everywhere.
"""

from __future__ import annotations

from pathlib import Path

import torch

KERNEL_DIR = Path(__file__).resolve().parent

ALL_FLOATS = ("float", "double", "__half", "__nv_bfloat16")
FULL_FLOATS = ("float", "double")  # box geometry: half inputs are upcast to float first
EMULATED = ("float", "double")  # g++ has no __half / __nv_bfloat16

CTYPE = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "__half",
    torch.bfloat16: "__nv_bfloat16",
}

# file -> {template (or plain function) name: element types, or None for a non-template}
SOURCES: dict[str, dict[str, tuple[str, ...] | None]] = {
    "focal_loss.cu": {"sigmoid_focal_fwd": ALL_FLOATS, "sigmoid_focal_bwd": ALL_FLOATS},
    "elementwise_losses.cu": {
        "smooth_l1_fwd": ALL_FLOATS,
        "smooth_l1_bwd": ALL_FLOATS,
        "wing_fwd": ALL_FLOATS,
        "wing_bwd": ALL_FLOATS,
    },
    "boxes.cu": {
        "box_iou_pairwise": FULL_FLOATS,
        "giou_loss_fwd": FULL_FLOATS,
        "giou_loss_bwd": FULL_FLOATS,
    },
    "nms.cu": {"nms_mask": FULL_FLOATS, "nms_reduce": None},
    "corner_pool.cu": {"corner_pool_fwd": ALL_FLOATS, "corner_pool_bwd": ALL_FLOATS},
}


def expression(name: str, ctype: str | None) -> str:
    """``name<ctype>`` for a template instantiation, ``name`` for a plain kernel."""
    return name if ctype is None else f"{name}<{ctype}>"


def name_expressions(source: str, types: tuple[str, ...] | None = None) -> list[str]:
    """All name expressions of ``source``; ``types`` restricts the template instantiations."""
    out = []
    for name, ctypes_ in SOURCES[source].items():
        if ctypes_ is None:
            out.append(name)
        else:
            out.extend(expression(name, t) for t in ctypes_ if types is None or t in types)
    return out


def read_source(source: str) -> str:
    return (KERNEL_DIR / source).read_text()
