"""Readers for image-to-image translation data, in the layouts of
junyanz/pytorch-CycleGAN-and-pix2pix.

* Aligned (pix2pix): ``{root}/{train,val,test}/*.jpg``, each file A and B side by side (A the
  left half, B the right). ``direction=BtoA`` swaps them (facades: photo | labels, trained
  labels -> photo with BtoA). Both halves get the same crop and flip.
* Unaligned (CycleGAN): ``{root}/trainA``, ``trainB``, ``testA``, ``testB`` (``val`` reads the
  test folders). Length ``max(|A|, |B|)``; item i is A[i % |A|] with, in training, a B drawn
  uniformly from the sample's rng (the reference's default, not ``serial_batches``) and in
  evaluation B[i % |B|]. A and B get independent crops and flips.

Transform (``preprocess=resize_and_crop``, the reference default): training resizes to
``load_size`` x ``load_size`` (bicubic), crops ``crop_size`` at a random place and flips
horizontally with probability 0.5; evaluation resizes straight to ``crop_size`` (the
reference's test options set ``load_size = crop_size``), no flip. Pixels go to [-1, 1]
(``(x / 255 - 0.5) / 0.5``). All randomness comes from the ``rng`` given to ``load`` (the
engine derives it from (seed, epoch, index)). Samples are ``{"A": (3, S, S), "B": (3, S, S),
"index": i}`` float32 tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.base import DataError, SampleDataset
from src.data.cub import open_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DIRECTIONS = ("AtoB", "BtoA")


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor in [-1, 1] -> HxWx3 uint8 array."""
    x = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def default_load_size(crop_size: int) -> int:
    """The reference's load/crop ratio (286 / 256) applied to ``crop_size``."""
    return int(round(crop_size * 286 / 256))


class TranslationTransform:
    """Resize, random crop, flip (see the module docstring); ``params`` are drawn once and can
    be applied to several images (both halves of an aligned pair)."""

    def __init__(self, crop_size: int, load_size: int | None = None, flip: bool = True):
        self.crop_size = int(crop_size)
        self.load_size = default_load_size(crop_size) if load_size is None else int(load_size)
        if self.load_size < self.crop_size:
            raise DataError(
                f"dataset.load_size={self.load_size} is smaller than dataset.image_size="
                f"{self.crop_size} (the crop); use load_size >= image_size"
            )
        self.flip = bool(flip)

    def params(self, rng: np.random.Generator | None) -> tuple[int, int, bool] | None:
        """(left, top, flip) for a training sample; None for evaluation."""
        if rng is None:
            return None
        span = self.load_size - self.crop_size
        left, top = int(rng.integers(0, span + 1)), int(rng.integers(0, span + 1))
        flip = bool(rng.random() > 0.5) if self.flip else False
        return left, top, flip

    def __call__(self, image: Image.Image, params: tuple[int, int, bool] | None) -> torch.Tensor:
        s = self.crop_size
        if params is None:
            return to_tensor(image.resize((s, s), Image.BICUBIC))
        left, top, flip = params
        image = image.resize((self.load_size, self.load_size), Image.BICUBIC)
        image = image.crop((left, top, left + s, top + s))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(image)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An input for prediction: the evaluation transform."""
        return self(image.convert("RGB"), None)


def split_pair(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(left half, right half) of a side-by-side A|B picture."""
    w, h = image.size
    half = w // 2
    return image.crop((0, 0, half, h)), image.crop((half, 0, w, h))


class AlignedImages(SampleDataset):
    def __init__(
        self,
        folder: str | Path,
        crop_size: int = 256,
        load_size: int | None = None,
        direction: str = "AtoB",
        flip: bool = True,
        hint: str = "",
    ):
        self.folder = Path(folder)
        if direction not in DIRECTIONS:
            raise DataError(f"dataset.direction={direction!r}: use AtoB or BtoA")
        self.direction = direction
        self.files = image_files(self.folder)
        if not self.files:
            raise DataError(
                f"no A|B images ({', '.join(IMAGE_SUFFIXES)}) in {self.folder}"
                + (f"; {hint}" if hint else "")
            )
        self.transform = TranslationTransform(crop_size, load_size, flip)
        self.crop_size = self.transform.crop_size

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        picture = open_rgb(self.files[index])
        if picture.width < 2:
            raise DataError(f"{self.files[index]}: too narrow to hold A and B side by side")
        a, b = split_pair(picture)
        if self.direction == "BtoA":
            a, b = b, a
        params = self.transform.params(rng)
        return {"A": self.transform(a, params), "B": self.transform(b, params), "index": index}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform.preprocess(image)


class UnalignedImages(SampleDataset):
    def __init__(
        self,
        folder_a: str | Path,
        folder_b: str | Path,
        crop_size: int = 256,
        load_size: int | None = None,
        flip: bool = True,
        hint: str = "",
    ):
        self.files_a, self.files_b = image_files(Path(folder_a)), image_files(Path(folder_b))
        for folder, files in ((folder_a, self.files_a), (folder_b, self.files_b)):
            if not files:
                raise DataError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}"
                    + (f"; {hint}" if hint else "")
                )
        self.transform = TranslationTransform(crop_size, load_size, flip)
        self.crop_size = self.transform.crop_size

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path_a = self.files_a[index % len(self.files_a)]
        if rng is None:
            index_b = index % len(self.files_b)
        else:
            index_b = int(rng.integers(0, len(self.files_b)))
        a = self.transform(open_rgb(path_a), self.transform.params(rng))
        b = self.transform(open_rgb(self.files_b[index_b]), self.transform.params(rng))
        return {"A": a, "B": b, "index": index, "index_b": index_b}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform.preprocess(image)


def _root(root: str | Path, name: str, hint: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: dataset root {root} not found" + (f"; {hint}" if hint else ""))
    return root


def build_paired_images(
    root: str | Path,
    image_size: int = 256,
    load_size: int | None = None,
    direction: str = "AtoB",
    flip: bool = True,
    train_split: str = "train",
    val_split: str = "val",
    name: str = "paired images",
    hint: str = "",
) -> dict[str, AlignedImages]:
    """``{"train", "val"}`` of an aligned A|B dataset (``dataset.image_size`` = the crop)."""
    root = _root(root, name, hint)
    common = dict(crop_size=image_size, load_size=load_size, direction=direction, hint=hint)
    return {
        "train": AlignedImages(root / train_split, flip=flip, **common),
        "val": AlignedImages(root / val_split, flip=False, **common),
    }


build_paired_images.kind = "paired_images"


def build_unpaired_images(
    root: str | Path,
    image_size: int = 256,
    load_size: int | None = None,
    flip: bool = True,
    name: str = "unpaired images",
    hint: str = "",
) -> dict[str, UnalignedImages]:
    """``{"train", "val"}`` of an unaligned trainA/trainB/testA/testB dataset."""
    root = _root(root, name, hint)
    common = dict(crop_size=image_size, load_size=load_size, hint=hint)
    return {
        "train": UnalignedImages(root / "trainA", root / "trainB", flip=flip, **common),
        "val": UnalignedImages(root / "testA", root / "testB", flip=False, **common),
    }


build_unpaired_images.kind = "unpaired_images"
