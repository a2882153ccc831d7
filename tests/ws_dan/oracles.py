"""Plain per-sample formulations used as oracles by the WS-DAN tests."""

import torch
import torch.nn.functional as F


def crop_loop(images, maps, thetas, padding):
    """The reference's per-sample formulation (with the end-inclusive box)."""
    _, _, height, width = images.shape
    out, boxes = [], []
    for i in range(images.shape[0]):
        a = maps[i : i + 1]
        up = F.interpolate(a, size=(height, width), mode="bilinear", align_corners=True)[0, 0]
        nz = torch.nonzero(up >= thetas[i] * a.max())
        if len(nz) == 0:
            y0, x0, y1, x1 = 0, 0, height, width
        else:
            y0 = max(int(nz[:, 0].min().item() - padding * height), 0)
            y1 = min(int(nz[:, 0].max().item() + 1 + padding * height), height)
            x0 = max(int(nz[:, 1].min().item() - padding * width), 0)
            x1 = min(int(nz[:, 1].max().item() + 1 + padding * width), width)
        boxes.append([y0, x0, y1, x1])
        patch = images[i : i + 1, :, y0:y1, x0:x1]
        out.append(F.interpolate(patch, size=(height, width), mode="bilinear", align_corners=True))
    return torch.cat(out), torch.tensor(boxes)


def drop_loop(images, maps, thetas):
    _, _, height, width = images.shape
    out = []
    for i in range(images.shape[0]):
        a = maps[i : i + 1]
        up = F.interpolate(a, size=(height, width), mode="bilinear", align_corners=True)
        keep = (up < thetas[i] * a.max()).to(images.dtype)
        if keep.sum() == 0:
            keep = torch.ones_like(keep)
        out.append(images[i : i + 1] * keep)
    return torch.cat(out)
