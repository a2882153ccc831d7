"""The reference's Hourglass backbone (CornerNet / CenterNet ``kp_module``), same module names.

``kp_module(n, dims, modules)``: ``up1`` (residuals at full size), ``low1`` (the first residual
strided by 2: the reference's ``make_hg_layer``), ``low2`` (the next level, or residuals at the
bottom), ``low3`` (residuals back to ``dims[0]``: ``make_layer_revr``), ``up2`` (nearest x2) and
the sum. CenterNet-52: n=5, dims 256,256,384,384,384,512, modules 2,2,2,2,2,4, one stack;
CenterNet-104 two stacks with intermediate supervision (``inters``, ``inters_``, ``cnvs_``). The
stem ``pre`` (7x7 conv stride 2 to 128, residual stride 2 to 256) gives the stride-4 map.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from src.models.centernet.layers import Convolution, Residual

__all__ = ["Hourglass", "KPModule"]


def _layers(inp: int, out: int, n: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        Residual(3, inp, out, stride), *(Residual(3, out, out) for _ in range(n - 1))
    )


def _layers_revr(inp: int, out: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(Residual(3, inp, inp) for _ in range(n - 1)), Residual(3, inp, out))


class KPModule(nn.Module):
    def __init__(self, n: int, dims: Sequence[int], modules: Sequence[int]):
        super().__init__()
        curr_mod, next_mod = modules[0], modules[1]
        curr_dim, next_dim = dims[0], dims[1]
        self.n = n
        self.up1 = _layers(curr_dim, curr_dim, curr_mod)
        self.max1 = nn.Sequential()
        self.low1 = _layers(curr_dim, next_dim, curr_mod, stride=2)
        self.low2 = (
            KPModule(n - 1, dims[1:], modules[1:])
            if n > 1
            else _layers(next_dim, next_dim, next_mod)
        )
        self.low3 = _layers_revr(next_dim, curr_dim, curr_mod)
        self.up2 = nn.Upsample(scale_factor=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.up1(x) + self.up2(self.low3(self.low2(self.low1(self.max1(x)))))


class Hourglass(nn.Module):
    """Stacked hourglass: ``forward`` returns the ``cnv`` map of each stack (a list).

    Module names are the reference ``kp`` class's: ``pre``, ``kps``, ``cnvs``, ``inters``,
    ``inters_``, ``cnvs_`` (the CenterNet model puts them at its top level)."""

    def __init__(
        self,
        n: int = 5,
        dims: Sequence[int] = (256, 256, 384, 384, 384, 512),
        modules: Sequence[int] = (2, 2, 2, 2, 2, 4),
        nstack: int = 1,
        cnv_dim: int = 256,
        stem_dim: int = 128,
    ):
        super().__init__()
        if len(dims) != n + 1 or len(modules) != n + 1:
            raise ValueError(f"Hourglass: n={n} needs {n + 1} dims and modules")
        curr = dims[0]
        self.nstack = nstack
        self.pre = nn.Sequential(
            Convolution(7, 3, stem_dim, stride=2), Residual(3, stem_dim, curr, stride=2)
        )
        self.kps = nn.ModuleList(KPModule(n, dims, modules) for _ in range(nstack))
        self.cnvs = nn.ModuleList(Convolution(3, curr, cnv_dim) for _ in range(nstack))
        self.inters = nn.ModuleList(Residual(3, curr, curr) for _ in range(nstack - 1))
        self.inters_ = nn.ModuleList(
            nn.Sequential(nn.Conv2d(curr, curr, 1, bias=False), nn.BatchNorm2d(curr))
            for _ in range(nstack - 1)
        )
        self.cnvs_ = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cnv_dim, curr, 1, bias=False), nn.BatchNorm2d(curr))
            for _ in range(nstack - 1)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> list[Tensor]:
        inter = self.pre(x)
        outs = []
        for k in range(self.nstack):
            cnv = self.cnvs[k](self.kps[k](inter))
            outs.append(cnv)
            if k < self.nstack - 1:
                inter = self.inters[k](self.relu(self.inters_[k](inter) + self.cnvs_[k](cnv)))
        return outs
