"""ImagePool (Shrivastava et al. 2017; junyanz ``util/image_pool.py``): a history of generated
images the discriminator is shown instead of only the newest ones.

``pool(images)`` goes image by image: while the pool holds fewer than ``size`` images, the
image is stored and returned; once full, with probability 0.5 a uniformly drawn stored image
is returned and the new one takes its place, otherwise the new image is returned. Size 0
returns the batch unchanged.

Randomness comes from torch's global RNG (``torch.rand`` for the coin, ``torch.randint`` for
the slot, drawn only when the pool is full), which the engine seeds and saves/restores in its
checkpoints. The stored images are buffers (``images``: (size, C, H, W), allocated at the first
query or at load; ``count``), so they are in the Task's ``state_dict`` and a resumed run sees
the same pool.
"""

from __future__ import annotations

import torch
from torch import nn


class ImagePool(nn.Module):
    def __init__(self, size: int = 50):
        super().__init__()
        self.size = int(size)
        self.register_buffer("images", torch.zeros(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "images")
        if stored is not None and stored.shape != self.images.shape:  # allocate, then copy
            self.images = torch.zeros_like(stored, device=self.images.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        if self.images.dim() != 4 or self.images.shape[1:] != images.shape[1:]:
            if int(self.count) > 0:
                raise ValueError(
                    f"ImagePool holds images of shape {tuple(self.images.shape[1:])}, got "
                    f"{tuple(images.shape[1:])}"
                )
            self.images = images.new_zeros((self.size, *images.shape[1:]))
        out = []
        n = int(self.count)
        for image in images:
            if n < self.size:
                self.images[n] = image
                n += 1
                out.append(image)
            elif float(torch.rand(())) > 0.5:
                slot = int(torch.randint(0, self.size, ()))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        self.count.fill_(n)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"size={self.size}"
