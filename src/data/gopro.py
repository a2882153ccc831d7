"""Blurred / sharp pairs in the GoPro layout (Nah et al. 2017, ``GOPRO_Large``), the data of
DeblurGAN v1 / v2 (Kupyn et al. 2018, 2019).

Layout: ``{root}/{train,test}/<sequence>/{blur,sharp}/*.png`` (GoPro also ships
``blur_gamma``: ``dataset.blur_folder=blur_gamma``). A blurred frame is paired with the sharp
frame of the same file name in the same sequence; a blurred frame without one is a one-line
``DataError`` naming both files. GoPro has no validation split: ``val`` reads ``test``.

Transform (both images of a pair get the same one, drawn from the sample's ``rng``):
training optionally resizes to ``load_size`` = ``[width, height]`` (DeblurGAN v1 resizes GoPro's
1280 x 720 frames to 640 x 360; ``null``, DeblurGAN v2, keeps them), crops ``image_size`` x
``image_size`` at a random place and flips horizontally with probability 0.5. Evaluation takes
the whole frame (resized to ``load_size`` if set), so metrics follow the GoPro protocol (full
frames); the Task pads a frame to its generator's size multiple and crops the output back.
Pixels go to [-1, 1] as every translation reader (``src.data.image_translation.to_tensor``).
Samples are ``{"A": blurred (3, H, W), "B": sharp (3, H, W), "index": i}``, the keys of the
aligned pix2pix reader, so deblurring Tasks also take any ``paired_images`` dataset.

(The square ``TranslationTransform`` of ``image_translation`` resizes to a square load size
before cropping, which would stretch GoPro's 16:9 frames and their blur kernels; this one crops
the frame as it is, as both DeblurGAN references do.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.base import DataError, SampleDataset
from src.data.cub import open_rgb
from src.data.image_translation import IMAGE_SUFFIXES, image_files, to_tensor

SPLITS = {"train": "train", "val": "test"}


class PairCrop:
    """Resize (optional), random square crop and flip shared by the two images of a pair."""

    def __init__(self, crop_size: int, load_size=None, flip: bool = True):
        self.crop_size = int(crop_size)
        if load_size is not None:
            if isinstance(load_size, int):
                load_size = (load_size, load_size)
            load_size = tuple(int(v) for v in load_size)
            if len(load_size) != 2 or min(load_size) < self.crop_size:
                raise DataError(
                    f"dataset.load_size={list(load_size)} must be [width, height], each >= "
                    f"dataset.image_size={self.crop_size} (the crop)"
                )
        self.load_size = load_size
        self.flip = bool(flip)

    def _resized(self, image: Image.Image) -> Image.Image:
        if self.load_size is None or image.size == self.load_size:
            return image
        return image.resize(self.load_size, Image.BICUBIC)

    def params(self, size: tuple[int, int], rng: np.random.Generator | None, where: str = ""):
        """(left, top, flip) of a training crop of an image of ``size`` (w, h); None: eval."""
        if rng is None:
            return None
        w, h = self.load_size or size
        s = self.crop_size
        if w < s or h < s:
            raise DataError(
                f"{where}: {w}x{h} is smaller than the crop dataset.image_size={s}; lower it"
            )
        left, top = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        flip = bool(rng.random() > 0.5) if self.flip else False
        return left, top, flip

    def __call__(self, image: Image.Image, params) -> torch.Tensor:
        image = self._resized(image)
        if params is not None:
            left, top, flip = params
            s = self.crop_size
            image = image.crop((left, top, left + s, top + s))
            if flip:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(image)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An input for prediction: the evaluation transform (whole frame)."""
        return self(image.convert("RGB"), None)


def gopro_pairs(split_dir: Path, blur_folder: str = "blur", sharp_folder: str = "sharp"):
    """``[(blurred path, sharp path, sequence)]`` of one split, sorted by sequence and name."""
    pairs = []
    sequences = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    for seq in sequences:
        blurred = image_files(seq / blur_folder)
        if not blurred:
            continue
        sharp = {p.name: p for p in image_files(seq / sharp_folder)}
        for path in blurred:
            partner = sharp.get(path.name)
            if partner is None:
                raise DataError(
                    f"{path}: no sharp partner {seq / sharp_folder / path.name} (GoPro pairs "
                    f"<sequence>/{blur_folder}/<name> with <sequence>/{sharp_folder}/<name>); "
                    "add it or remove the blurred frame"
                )
            pairs.append((path, partner, seq.name))
    return pairs


class GoProPairs(SampleDataset):
    def __init__(
        self,
        split_dir: str | Path,
        crop_size: int = 256,
        load_size=None,
        flip: bool = True,
        blur_folder: str = "blur",
        sharp_folder: str = "sharp",
        hint: str = "",
    ):
        self.split_dir = Path(split_dir)
        self.pairs = gopro_pairs(self.split_dir, blur_folder, sharp_folder)
        if not self.pairs:
            raise DataError(
                f"no blurred frames ({', '.join(IMAGE_SUFFIXES)}) in {self.split_dir}/<sequence>/"
                f"{blur_folder}/" + (f"; {hint}" if hint else "")
            )
        self.transform = PairCrop(crop_size, load_size, flip)
        self.crop_size = self.transform.crop_size

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        blur_path, sharp_path, _ = self.pairs[index]
        blurred, sharp = open_rgb(blur_path), open_rgb(sharp_path)
        if blurred.size != sharp.size:
            raise DataError(
                f"{blur_path} is {blurred.size[0]}x{blurred.size[1]} but its sharp partner "
                f"{sharp_path} is {sharp.size[0]}x{sharp.size[1]}; a pair must be the same size"
            )
        params = self.transform.params(blurred.size, rng, str(blur_path))
        return {
            "A": self.transform(blurred, params),
            "B": self.transform(sharp, params),
            "index": index,
        }

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform.preprocess(image)


def build_gopro(
    root: str | Path,
    image_size: int = 256,
    load_size=None,
    flip: bool = True,
    blur_folder: str = "blur",
    sharp_folder: str = "sharp",
    name: str = "gopro",
    hint: str = "",
) -> dict[str, GoProPairs]:
    """``{"train", "val"}`` of a GoPro-layout dataset (val = its test split)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: dataset root {root} not found" + (f"; {hint}" if hint else ""))
    common = dict(
        crop_size=image_size,
        load_size=load_size,
        blur_folder=blur_folder,
        sharp_folder=sharp_folder,
        hint=hint,
    )
    return {
        split: GoProPairs(root / folder, flip=flip and split == "train", **common)
        for split, folder in SPLITS.items()
    }


build_gopro.kind = "blur_sharp"
