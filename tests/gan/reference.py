"""Independent ports of the reference layer lists (junyanz/pytorch-CycleGAN-and-pix2pix
``models/networks.py``, NVIDIA/pix2pixHD ``models/networks.py``), written from the papers'
published architecture as the references lay them out, for state-dict layout and output
checks; and closed-form parameter counts."""

from __future__ import annotations

from torch import nn


def _norm(kind):
    if kind == "batch":
        return lambda c: nn.BatchNorm2d(c)
    if kind == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    return lambda c: nn.Identity()


class RefUnetBlock(nn.Module):
    def __init__(
        self,
        outer,
        inner,
        input_nc=None,
        sub=None,
        outermost=False,
        innermost=False,
        norm="batch",
        dropout=False,
    ):
        super().__init__()
        self.outermost = outermost
        nl, bias = _norm(norm), norm == "instance"
        input_nc = input_nc or outer
        down = nn.Conv2d(input_nc, inner, kernel_size=4, stride=2, padding=1, bias=bias)
        if outermost:
            seq = [
                down,
                sub,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1),
                nn.Tanh(),
            ]
        elif innermost:
            seq = [
                nn.LeakyReLU(0.2, True),
                down,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias),
                nl(outer),
            ]
        else:
            seq = [
                nn.LeakyReLU(0.2, True),
                down,
                nl(inner),
                sub,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias),
                nl(outer),
            ]
            seq += [nn.Dropout(0.5)] if dropout else []
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        import torch

        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class RefUnet(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf, norm="batch", dropout=True):
        super().__init__()
        b = RefUnetBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            b = RefUnetBlock(ngf * 8, ngf * 8, sub=b, norm=norm, dropout=dropout)
        b = RefUnetBlock(ngf * 4, ngf * 8, sub=b, norm=norm)
        b = RefUnetBlock(ngf * 2, ngf * 4, sub=b, norm=norm)
        b = RefUnetBlock(ngf, ngf * 2, sub=b, norm=norm)
        self.model = RefUnetBlock(
            output_nc, ngf, input_nc=input_nc, sub=b, outermost=True, norm=norm
        )

    def forward(self, x):
        return self.model(x)


class RefResBlock(nn.Module):
    def __init__(self, dim, norm, dropout, bias):
        super().__init__()
        nl = _norm(norm)
        seq = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nl(dim), nn.ReLU(True)]
        seq += [nn.Dropout(0.5)] if dropout else []
        seq += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nl(dim)]
        self.conv_block = nn.Sequential(*seq)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnet(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_blocks, norm="instance", dropout=False):
        super().__init__()
        nl, bias = _norm(norm), norm == "instance"
        seq = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, bias=bias),
            nl(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            m = 2**i
            seq += [
                nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1, bias=bias),
                nl(ngf * m * 2),
                nn.ReLU(True),
            ]
        seq += [RefResBlock(ngf * 4, norm, dropout, bias) for _ in range(n_blocks)]
        for i in range(2):
            m = 2 ** (2 - i)
            seq += [
                nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1, bias=bias),
                nl(ngf * m // 2),
                nn.ReLU(True),
            ]
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class RefNLayer(nn.Module):
    def __init__(self, input_nc, ndf, n_layers, norm="batch"):
        super().__init__()
        nl, bias = _norm(norm), norm == "instance"
        seq = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=bias),
                nl(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=bias),
            nl(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, 1, 1),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


# ---- closed-form parameter counts -------------------------------------------------------------
def conv(cin, cout, k, bias):
    return cin * cout * k * k + (cout if bias else 0)


def norm_params(kind, c):
    return 2 * c if kind == "batch" else 0


def unet_count(input_nc, output_nc, num_downs, ngf, norm):
    b = norm == "instance"
    widths = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (num_downs - 3)  # inner width of each level
    outers = [output_nc, ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (num_downs - 4)
    total = conv(input_nc, ngf, 4, b) + conv(2 * ngf, output_nc, 4, True)  # outermost
    for level in range(1, num_downs):
        outer, inner = outers[level], widths[level]
        if level == num_downs - 1:  # innermost: no norm on the way down, no skip inside
            total += conv(outer, inner, 4, b) + conv(inner, outer, 4, b) + norm_params(norm, outer)
        else:
            total += conv(outer, inner, 4, b) + norm_params(norm, inner)
            total += conv(2 * inner, outer, 4, b) + norm_params(norm, outer)
    return total


def resnet_count(input_nc, output_nc, ngf, n_blocks, norm):
    b = norm == "instance"
    total = conv(input_nc, ngf, 7, b) + norm_params(norm, ngf)
    total += conv(ngf, 2 * ngf, 3, b) + norm_params(norm, 2 * ngf)
    total += conv(2 * ngf, 4 * ngf, 3, b) + norm_params(norm, 4 * ngf)
    total += n_blocks * 2 * (conv(4 * ngf, 4 * ngf, 3, b) + norm_params(norm, 4 * ngf))
    total += conv(4 * ngf, 2 * ngf, 3, b) + norm_params(norm, 2 * ngf)
    total += conv(2 * ngf, ngf, 3, b) + norm_params(norm, ngf)
    return total + conv(ngf, output_nc, 7, True)


def patchgan_count(input_nc, ndf, n_layers, norm):
    b = norm == "instance"
    total, prev = conv(input_nc, ndf, 4, True), ndf
    for n in range(1, n_layers + 1):
        width = ndf * min(2**n, 8)
        total += conv(prev, width, 4, b) + norm_params(norm, width)
        prev = width
    return total + conv(prev, 1, 4, True)


def hd_patchgan_count(input_nc, ndf, n_layers, norm):
    total, prev = conv(input_nc, ndf, 4, True), ndf
    for _ in range(n_layers):
        width = min(prev * 2, 512)
        total += conv(prev, width, 4, True) + norm_params(norm, width)
        prev = width
    return total + conv(prev, 1, 4, True)
