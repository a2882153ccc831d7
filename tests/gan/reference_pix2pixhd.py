"""Independent ports of NVIDIA/pix2pixHD's formulas and layer lists, written from the paper and
the reference's ``models/networks.py`` / ``pix2pixHD_model.py`` as they read (module nesting,
every conv with a bias, ``get_edges`` on torch tensors, ``GANLoss`` over per-scale lists, the
feature-matching double loop), used only as oracles in tests/gan/test_pix2pixhd.py."""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind, c):
    return nn.InstanceNorm2d(c, affine=False) if kind == "instance" else nn.BatchNorm2d(c)


class RefResnetBlock(nn.Module):
    def __init__(self, dim, norm):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0),
            _norm(norm, dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0),
            _norm(norm, dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class RefGlobalGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_downsampling, n_blocks, norm="instance"):
        super().__init__()
        seq = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), _norm(norm, ngf), nn.ReLU(True)]
        for i in range(n_downsampling):
            m = 2**i
            seq += [
                nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1),
                _norm(norm, ngf * m * 2),
                nn.ReLU(True),
            ]
        m = 2**n_downsampling
        seq += [RefResnetBlock(ngf * m, norm) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            m = 2 ** (n_downsampling - i)
            seq += [
                nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1),
                _norm(norm, ngf * m // 2),
                nn.ReLU(True),
            ]
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class RefLocalEnhancer(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_down_g, n_blocks_g, n_local, n_blocks_l):
        super().__init__()
        self.n_local = n_local
        g = RefGlobalGenerator(input_nc, output_nc, ngf * 2**n_local, n_down_g, n_blocks_g).model
        self.model = nn.Sequential(*[g[i] for i in range(len(g) - 3)])
        for n in range(1, n_local + 1):
            c = ngf * 2 ** (n_local - n)
            down = [
                nn.ReflectionPad2d(3),
                nn.Conv2d(input_nc, c, 7),
                _norm("instance", c),
                nn.ReLU(True),
                nn.Conv2d(c, c * 2, 3, stride=2, padding=1),
                _norm("instance", c * 2),
                nn.ReLU(True),
            ]
            up = [RefResnetBlock(c * 2, "instance") for _ in range(n_blocks_l)]
            up += [
                nn.ConvTranspose2d(c * 2, c, 3, 2, 1, output_padding=1),
                _norm("instance", c),
                nn.ReLU(True),
            ]
            if n == n_local:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
            setattr(self, "model" + str(n) + "_1", nn.Sequential(*down))
            setattr(self, "model" + str(n) + "_2", nn.Sequential(*up))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def forward(self, x):
        pyramid = [x]
        for _ in range(self.n_local):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local + 1):
            down, up = getattr(self, f"model{n}_1"), getattr(self, f"model{n}_2")
            out = up(down(pyramid[self.n_local - n]) + out)
        return out


def global_count(input_nc, output_nc, ngf, n_down, n_blocks, norm="instance"):
    """Closed form: convs (all with bias) + 2 per channel for batch norm."""

    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    bn = 2 if norm == "batch" else 0
    total = conv(input_nc, ngf, 7) + bn * ngf
    for i in range(n_down):
        c = ngf * 2**i
        total += conv(c, 2 * c, 3) + bn * 2 * c  # down
        total += conv(2 * c, c, 3) + bn * c  # its transposed conv back up (same count)
    width = ngf * 2**n_down
    total += n_blocks * 2 * (conv(width, width, 3) + bn * width)
    return total + conv(ngf, output_nc, 7)


def ref_get_edges(t: torch.Tensor) -> torch.Tensor:
    """pix2pixHD_model.get_edges on a (B, 1, H, W) instance map."""
    edge = torch.zeros(t.size(), dtype=torch.bool)
    edge[:, :, :, 1:] = edge[:, :, :, 1:] | (t[:, :, :, 1:] != t[:, :, :, :-1])
    edge[:, :, :, :-1] = edge[:, :, :, :-1] | (t[:, :, :, 1:] != t[:, :, :, :-1])
    edge[:, :, 1:, :] = edge[:, :, 1:, :] | (t[:, :, 1:, :] != t[:, :, :-1, :])
    edge[:, :, :-1, :] = edge[:, :, :-1, :] | (t[:, :, 1:, :] != t[:, :, :-1, :])
    return edge.float()


def ref_gan_loss(pred, target_is_real):
    """GANLoss(use_lsgan=True) on a multi-scale output: MSE summed over the scales."""
    loss = 0
    for scale in pred:
        p = scale[-1]
        loss = loss + nn.MSELoss()(p, torch.full_like(p, 1.0 if target_is_real else 0.0))
    return loss


def ref_losses(pred_fake_pool, pred_real, pred_fake, num_d, n_layers, lambda_feat=10.0):
    """(loss_D, loss_G) as train.py combines pix2pixHD_model.forward's terms (no VGG)."""
    loss_d = (ref_gan_loss(pred_fake_pool, False) + ref_gan_loss(pred_real, True)) * 0.5
    loss_g_gan = ref_gan_loss(pred_fake, True)
    feat = 0
    feat_weights = 4.0 / (n_layers + 1)
    d_weights = 1.0 / num_d
    for i in range(num_d):
        for j in range(len(pred_fake[i]) - 1):
            feat = (
                feat
                + d_weights
                * feat_weights
                * nn.L1Loss()(pred_fake[i][j], pred_real[i][j].detach())
                * lambda_feat
            )
    return loss_d, loss_g_gan + feat, loss_g_gan, feat
