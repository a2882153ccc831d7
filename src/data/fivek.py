"""MIT-Adobe FiveK-style photo-enhancement data (Bychkovsky et al. 2011; the DPE protocol of
Chen et al. 2018): input photos and their expert-retouched versions.

Layouts under ``root`` (image files: .jpg, .jpeg, .png, .bmp, .webp):

* paired: ``{train,test}/input/<name>.<ext>`` and ``{train,test}/<expert>/<name>.<ext>``
  (``expert`` = ``expert_c``, the retoucher DPE uses); an input and its target have the same
  file stem (the extensions may differ). An input without its target is one DataError line.
* unpaired: ``trainA/`` (input photos) and ``trainB/`` (retouched photos of *other* scenes),
  the CycleGAN layout, read by ``src.data.image_translation.UnalignedImages`` (the DPE paper
  takes the inputs of one half of the FiveK training photos and the retouched versions of the
  other half).

``dataset.mode``: ``unpaired`` trains on trainA / trainB, ``paired`` on ``train/``; evaluation
is always on the paired ``test/`` split (PSNR / SSIM against the expert). Samples are ``{"A":
input, "B": retouched, "index": i}`` in [-1, 1]; both images of a pair get the same crop and
flip. The transform is the image-translation one (``TranslationTransform``): resize to
``load_size`` (default: ``image_size``, no crop jitter) x ``load_size``, random crop, flip;
evaluation resizes to ``image_size``. (The authors resize the long side to 512 and pad, and
augment with the 8 rotations / flips; photos that are not square are squeezed here.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data.base import DataError, SampleDataset
from src.data.cub import open_rgb
from src.data.image_translation import TranslationTransform, UnalignedImages, _root, image_files

MODES = ("unpaired", "paired")


class PairedFolders(SampleDataset):
    """``input/<name>`` with ``<expert>/<name>`` (same stem) of one split."""

    paired = True

    def __init__(
        self,
        folder: str | Path,
        expert: str = "expert_c",
        crop_size: int = 512,
        load_size: int | None = None,
        flip: bool = True,
        hint: str = "",
    ):
        folder = Path(folder)
        inputs = image_files(folder / "input")
        if not inputs:
            raise DataError(
                f"no input images in {folder / 'input'}" + (f"; {hint}" if hint else "")
            )
        targets = {p.stem: p for p in image_files(folder / expert)}
        missing = [p for p in inputs if p.stem not in targets]
        if missing:
            raise DataError(
                f"{missing[0]}: no retouched version {folder / expert / missing[0].stem}.* "
                f"({len(missing)} of {len(inputs)} inputs lack one); every input needs its "
                f"target under {expert}/ with the same name"
            )
        self.pairs = [(p, targets[p.stem]) for p in inputs]
        self.transform = TranslationTransform(
            crop_size, crop_size if load_size is None else load_size, flip
        )
        self.crop_size = self.transform.crop_size

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path_a, path_b = self.pairs[index]
        a, b = open_rgb(path_a), open_rgb(path_b)
        if a.size != b.size:
            b = b.resize(a.size)
        params = self.transform.params(rng)
        return {"A": self.transform(a, params), "B": self.transform(b, params), "index": index}

    def preprocess(self, image):
        return self.transform.preprocess(image)


def build_fivek(
    root: str | Path,
    image_size: int = 512,
    load_size: int | None = None,
    flip: bool = True,
    mode: str = "unpaired",
    expert: str = "expert_c",
    name: str = "fivek",
    hint: str = "",
) -> dict[str, SampleDataset]:
    """``{"train", "val"}``: train per ``mode`` (see the module docstring), val the paired
    ``test/`` split."""
    if mode not in MODES:
        raise DataError(f"dataset.mode={mode!r}: use unpaired or paired")
    root = _root(root, name, hint)
    load = image_size if load_size is None else load_size
    if mode == "paired":
        train = PairedFolders(root / "train", expert, image_size, load, flip, hint)
    else:
        train = UnalignedImages(root / "trainA", root / "trainB", image_size, load, flip, hint)
    val = PairedFolders(root / "test", expert, image_size, image_size, False, hint)
    return {"train": train, "val": val}


build_fivek.kind = "photo_enhancement"
