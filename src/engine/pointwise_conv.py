"""Which CPU kernel runs the 1x1 convolutions of channels_last training (``trainer.cpu_conv1x1``).

ATen picks a float32 CPU convolution's kernel by a fixed rule (``ConvParams::use_mkldnn``): a
1x1 kernel with stride 1 and no dilation, on one intra-op thread and a batch under 16, goes to
its own GEMM path (``_slow_conv2d_forward`` / ``_backward``) and everything else to oneDNN. The
rule's comment says the GEMM path is faster single-threaded; on NHWC tensors it is not here:
oneDNN's forward + backward of the 1x1 convolutions of MobileNet-0.25 and Inception-v3 measured
1.0-1.4x faster one by one, a RetinaFace step 1.10x (``benchmarks/train_step.py``: the
``channels_last`` row against ``aten_1x1``). That regime is not rare: torchrun's CPU
processes run one thread each by default.

``onednn`` (the default) steers those convolutions to oneDNN through the one input of the rule
that cannot change their output: a 1x1 kernel reads one input point whatever its dilation, so
dilation 2 gives the same function (output size ``(H + 2p - d (k - 1) - 1) / s + 1`` does not
depend on ``d`` when ``k = 1``). The values differ from ATen's GEMM by float rounding only (the
two kernels sum the channels in another order; a test bounds it). ``aten`` leaves ATen's rule.

The Trainer applies it to channels_last networks on the CPU for the span of ``fit`` and gives
the modules back as they were, so an export or a later evaluation in the same process sees the
configured dilation (an ONNX graph never holds the steered value; state dicts hold no dilation).
In NCHW oneDNN was slower for some of these shapes (up to 2x), so it is not applied there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

CHOICES = ("onednn", "aten")


def steerable(module: nn.Module) -> bool:
    """A 2-D convolution whose kernel is 1x1 and dilation 1: the ones ATen's rule may send to
    its GEMM path (a strided one goes to oneDNN already; dilating it is harmless too)."""
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.dilation) == (1, 1)
    )


@contextlib.contextmanager
def onednn_pointwise_convs(root: nn.Module) -> Iterator[int]:
    """Within the block, every 1x1 convolution of ``root`` runs oneDNN's kernels on the CPU
    (dilation 2, the same function); afterwards each has its own dilation back. Yields how
    many convolutions it steered."""
    convs = [m for m in root.modules() if steerable(m)]  # each module once, shared ones too
    for conv in convs:
        conv.dilation = (2, 2)
    try:
        yield len(convs)
    finally:
        for conv in convs:
            conv.dilation = (1, 1)


def check(choice: str) -> str:
    if choice not in CHOICES:
        raise ValueError(f"trainer.cpu_conv1x1 must be one of {'|'.join(CHOICES)}, got {choice!r}")
    return choice
