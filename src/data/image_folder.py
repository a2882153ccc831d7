"""Any folder of images (searched recursively: CelebA's ``img_align_celeba/``, LSUN exported to
files, a torchvision ``ImageFolder`` tree with class subfolders, ...), for unconditional GANs.

Transform as the WGAN reference's folder / LSUN datasets (``transforms.Scale(S)``,
``CenterCrop(S)``, ``Normalize(0.5, 0.5)``): the shorter side resized to ``image_size``
(bilinear; the longer side ``int(S * long / short)``), the centre ``S x S`` crop (torchvision's
rounding), pixels to [-1, 1]. ``flip=true`` adds a random horizontal flip in training (drawn
from the sample's ``rng``; the reference has none). Samples: ``{"image": (3, S, S) float32,
"index": i}``.

Splits: ``val_root`` when given; otherwise ``num_val`` files of ``root`` held out by a seeded
permutation (``split_seed``; at most half of the files), the rest for training. Files are
sorted, hidden files and folders (``.name``) skipped; a folder without images, or an image
that cannot be decoded, is one ``DataError`` line naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.base import DataError, SampleDataset
from src.data.cub import open_rgb
from src.data.image_translation import IMAGE_SUFFIXES, to_tensor


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted, hidden entries skipped)."""
    root = Path(root)
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bilinear), then the centre ``size x size`` crop."""
    w, h = image.size
    if (w, h) != (size, size):
        if w <= h:
            new = (size, int(size * h / w))
        else:
            new = (int(size * w / h), size)
        if new != (w, h):
            image = image.resize(new, Image.BILINEAR)
    w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


class ImageFolder(SampleDataset):
    def __init__(
        self,
        files: list[Path],
        image_size: int = 64,
        flip: bool = False,
        root: str | Path = "",
    ):
        self.files, self.root = list(files), Path(root)
        self.image_size, self.flip = int(image_size), bool(flip)
        if self.image_size < 1:
            raise DataError(f"dataset.image_size={image_size}: must be positive")

    def __len__(self) -> int:
        return len(self.files)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The evaluation transform of one picture: (3, S, S) in [-1, 1]."""
        return to_tensor(resize_center_crop(image.convert("RGB"), self.image_size))

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        image = resize_center_crop(open_rgb(self.files[index]), self.image_size)
        if rng is not None and self.flip and rng.random() > 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return {"image": to_tensor(image), "index": index}


def _images_in(root: Path, name: str, hint: str) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{name}: image folder {root} not found" + (f"; {hint}" if hint else ""))
    files = find_images(root)
    if not files:
        raise DataError(
            f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}"
            + (f"; {hint}" if hint else "")
        )
    return files


def build_image_folder(
    root: str | Path,
    image_size: int = 64,
    val_root: str | Path | None = None,
    num_val: int = 1000,
    split_seed: int = 0,
    flip: bool = False,
    name: str = "image_folder",
    hint: str = "",
) -> dict[str, ImageFolder]:
    """``{"train", "val"}`` of a folder of images (see the module docstring)."""
    root = Path(root).expanduser()
    files = _images_in(root, name, hint)
    if val_root:
        val_root = Path(val_root).expanduser()
        train_files, val_files = files, _images_in(val_root, name, hint)
    else:
        if len(files) < 2:
            raise DataError(
                f"{name}: {root} holds {len(files)} image; holding out validation images needs "
                "at least 2 (or set dataset.val_root)"
            )
        n_val = max(1, min(int(num_val), len(files) // 2))
        order = np.random.default_rng(split_seed).permutation(len(files))
        held = set(order[:n_val].tolist())
        val_files = [f for i, f in enumerate(files) if i in held]
        train_files = [f for i, f in enumerate(files) if i not in held]
    return {
        "train": ImageFolder(train_files, image_size, flip, root),
        "val": ImageFolder(val_files, image_size, False, val_root or root),
    }


build_image_folder.kind = "images"
