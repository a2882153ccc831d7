"""pix2pixHD's data layout (NVIDIA/pix2pixHD ``data/aligned_dataset.py``) and its input encoding.

Layout under ``root`` (``phase`` = ``train`` or ``test``; ``val`` reads the test folders, the
reference has no val split):

* ``label_nc > 0``: ``{phase}_label/`` label-id maps (single-channel PNGs, e.g. Cityscapes
  ``*_gtFine_labelIds.png``), ``{phase}_img/`` the photos, and with ``instance: true``
  ``{phase}_inst/`` instance-id maps (Cityscapes ``*_gtFine_instanceIds.png``: 16-bit or 32-bit
  ids, ``label * 1000 + k`` for things, the label id for stuff).
* ``label_nc: 0``: ``{phase}_A/`` RGB inputs and ``{phase}_B/`` RGB targets (plus ``{phase}_inst/``
  with ``instance: true``).

Files are paired by sorted order, as the reference does (Cityscapes names differ per folder);
folders of different lengths are one DataError line.

Encoding (the reference's ``encode_input``, done here per sample): the label ids go one-hot to
``label_nc`` channels (an id >= ``label_nc`` is one DataError line naming the file; the
reference's ``scatter_`` crashes on it); with ``instance: true`` one more channel, the
instance-boundary map of ``get_edges`` (1 where a pixel's instance id differs from its left,
right, upper or lower neighbour's). The generator input ``A`` is (label_nc + instance, H, W)
float32 (or 3 + instance for ``label_nc: 0``, the RGB in [-1, 1]); the target ``B`` is the photo
in [-1, 1]. Ids are read as integers (the reference multiplies ``ToTensor``'s /255 back by 255).

Transform, drawn once per sample and applied alike to label, instance and photo (labels and
instances resized with NEAREST, photos BICUBIC): ``preprocess`` is the reference's
``resize_or_crop``: ``scale_width`` (its default: width to ``load_size``, height keeping the
aspect ratio), ``scale_width_and_crop`` (then a random ``image_size`` square), ``resize_and_crop``
(``load_size`` square, then a random ``image_size`` crop) or ``none``; sides without a crop are
rounded to multiples of ``size_multiple`` (the reference's ``__make_power_2`` with base
``2**n_downsample_global``); horizontal flip with probability 0.5 in training. Evaluation is
deterministic: no flip, a centred crop (``resize_and_crop`` resizes straight to ``image_size``,
as the pix2pix reader). Randomness from the sample's ``rng`` only.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.base import DataError, SampleDataset
from src.data.cub import open_rgb
from src.data.image_translation import IMAGE_SUFFIXES, TranslationTransform, image_files, to_tensor

PREPROCESS = ("scale_width", "scale_width_and_crop", "resize_and_crop", "none")
ID_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")

# cityscapesScripts labels.py colours of label ids 0..33 (34 is unused by Cityscapes' ids)
CITYSCAPES_PALETTE = (
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81),
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70),
    (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90),
    (153, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 0),
)  # fmt: skip


def instance_edges(inst: np.ndarray) -> np.ndarray:
    """(H, W) bool boundary map of an instance-id map: the reference's ``get_edges``."""
    edge = np.zeros(inst.shape, dtype=bool)
    dx = inst[:, 1:] != inst[:, :-1]
    dy = inst[1:, :] != inst[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def palette_colors(label_nc: int, palette=None) -> np.ndarray:
    """(label_nc, 3) uint8 colours of the label ids: ``cityscapes``, an explicit list, or
    (None) evenly spread hues."""
    if palette == "cityscapes":
        colors = list(CITYSCAPES_PALETTE)
    elif palette:
        colors = [tuple(int(v) for v in c) for c in palette]
    else:
        colors = [
            tuple(int(255 * v) for v in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.75, 0.9))
            for i in range(label_nc)
        ]
    colors = (colors + [(0, 0, 0)] * label_nc)[:label_nc]
    return np.asarray(colors, dtype=np.uint8).reshape(-1, 3)


def colorize(ids: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) label ids -> HxWx3 uint8."""
    return colors[np.clip(ids, 0, len(colors) - 1)]


def nearest_color_ids(rgb: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """HxWx3 colours -> (H, W) id of the nearest palette colour (ties: the lowest id)."""
    d = ((rgb[:, :, None, :].astype(np.int32) - colors[None, None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1)


def read_ids(path: Path, what: str = "label map") -> np.ndarray:
    """A single-channel id map (8-, 16- or 32-bit PNG, or palette mode) as (H, W) int64; an RGB
    file whose three channels agree is read from one; other colour pictures are a DataError."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            array = np.asarray(im)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read this {what} ({e})") from None
    if mode in ID_MODES:
        return array.astype(np.int64)
    if array.ndim == 3 and (array[..., :3] == array[..., :1]).all():
        return array[..., 0].astype(np.int64)
    raise DataError(
        f"{path}: a {mode} colour picture, not a {what} of ids (pix2pixHD reads single-channel "
        "ids, e.g. Cityscapes *_gtFine_labelIds.png / *_instanceIds.png, not *_color.png; for "
        "RGB inputs set dataset.label_nc=0)"
    )


class HDTransform(TranslationTransform):
    """The reference's ``get_params`` / ``get_transform`` (see the module docstring); a
    ``geometry`` is drawn once per sample and ``apply``-ed to each of its pictures."""

    def __init__(
        self,
        preprocess: str = "scale_width",
        crop_size: int = 512,
        load_size: int | None = 1024,
        flip: bool = True,
        size_multiple: int = 16,
    ):
        if preprocess not in PREPROCESS:
            raise DataError(
                f"dataset.preprocess={preprocess!r}: use one of {', '.join(PREPROCESS)}"
            )
        self.preprocess_mode = preprocess
        if preprocess in ("resize_and_crop", "scale_width_and_crop"):
            super().__init__(crop_size, load_size, flip)  # checks load_size >= crop
        else:
            self.crop_size = int(crop_size)
            self.load_size = int(load_size or crop_size)
            self.flip = bool(flip)
        self.size_multiple = max(1, int(size_multiple or 1))

    def _round(self, x: float) -> int:
        m = self.size_multiple
        return max(m, int(round(x / m) * m))

    def _resized(self, width: int, height: int, train: bool) -> tuple[int, int]:
        mode, load = self.preprocess_mode, self.load_size
        if mode == "resize_and_crop":
            return (load, load) if train else (self.crop_size, self.crop_size)
        if mode == "none":
            return self._round(width), self._round(height)
        w, h = load, int(load * height / width)  # scale_width
        if mode == "scale_width":
            return self._round(w), self._round(h)
        return w, h

    def geometry(self, size: tuple[int, int], rng: np.random.Generator | None, where="") -> dict:
        """``{"resize": (w, h), "crop": (left, top, right, bottom) | None, "flip": bool}`` for
        a picture of ``size`` (w, h); ``rng`` None = evaluation."""
        train = rng is not None
        w, h = self._resized(*size, train)
        crop = None
        left = top = 0
        if self.preprocess_mode in ("resize_and_crop", "scale_width_and_crop") and (
            train or self.preprocess_mode != "resize_and_crop"
        ):
            s = self.crop_size
            if w < s or h < s:
                raise DataError(
                    f"{where}: resized to {w}x{h}, smaller than the {s} px crop "
                    "(dataset.image_size); lower image_size or raise dataset.load_size"
                )
            if train:
                left, top = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            else:
                left, top = (w - s) // 2, (h - s) // 2
            crop = (left, top, left + s, top + s)
        flip = bool(rng.random() > 0.5) if train and self.flip else False
        return {"resize": (w, h), "crop": crop, "flip": flip}

    def output_size(self, size: tuple[int, int], train: bool = False) -> tuple[int, int]:
        """(w, h) of the network input made from a picture of ``size``."""
        g = self.geometry(size, np.random.default_rng(0) if train else None)
        if g["crop"]:
            return self.crop_size, self.crop_size
        return g["resize"]

    @staticmethod
    def apply(image: Image.Image, geometry: dict, resample: int) -> Image.Image:
        if image.size != tuple(geometry["resize"]):
            image = image.resize(geometry["resize"], resample)
        if geometry["crop"]:
            image = image.crop(geometry["crop"])
        if geometry["flip"]:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image


def _ids_image(ids: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(ids, dtype=np.int32), mode="I")


class LabelToImageDataset(SampleDataset):
    """One phase of a pix2pixHD dataset (see the module docstring). Samples are
    ``{"A": (input_nc, H, W), "B": (3, H, W), "index": i}`` float32 tensors."""

    def __init__(
        self,
        root: str | Path,
        phase: str = "train",
        label_nc: int = 35,
        instance: bool = True,
        transform: HDTransform | None = None,
        palette=None,
        hint: str = "",
    ):
        self.root, self.phase = Path(root), phase
        self.label_nc, self.instance = int(label_nc), bool(instance)
        if self.label_nc < 0:
            raise DataError(f"dataset.label_nc={label_nc}: use 0 (RGB inputs) or the label count")
        self.transform = transform or HDTransform()
        a, b = ("label", "img") if self.label_nc else ("A", "B")
        folders = {"A": self.root / f"{phase}_{a}", "B": self.root / f"{phase}_{b}"}
        if self.instance:
            folders["inst"] = self.root / f"{phase}_inst"
        self.files = {}
        for key, folder in folders.items():
            self.files[key] = image_files(folder)
            if not self.files[key]:
                raise DataError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}"
                    + (
                        " (dataset.instance=true reads instance maps from it)"
                        if key == "inst"
                        else ""
                    )
                    + (f"; {hint}" if hint else "")
                )
        counts = {str(folders[k]): len(v) for k, v in self.files.items()}
        if len(set(counts.values())) != 1:
            raise DataError(
                f"pix2pixHD pairs files by sorted order, but the folders hold different numbers "
                f"of images: {counts}; give each input its photo (and instance map)"
            )
        self.colors = palette_colors(max(self.label_nc, 1), palette)
        self.crop_size = self.transform.crop_size

    @property
    def input_nc(self) -> int:
        """Channels of ``A`` (the generator input): label_nc (or 3) + the edge channel."""
        return (self.label_nc or 3) + int(self.instance)

    def output_size(self) -> tuple[int, int]:
        """(w, h) of the evaluation inputs, from the first input picture."""
        with Image.open(self.files["A"][0]) as im:
            size = im.size
        return self.transform.output_size(size)

    def __len__(self) -> int:
        return len(self.files["A"])

    # ---- encoding --------------------------------------------------------------------------
    def encode(
        self,
        source: np.ndarray | Image.Image,
        inst: np.ndarray | None,
        geometry: dict,
        where: str = "",
    ) -> torch.Tensor:
        """The generator input from label ids (H, W) (or an RGB picture for label_nc 0) and an
        instance-id map, both at the source size, transformed by ``geometry``."""
        if self.label_nc:
            ids = np.asarray(HDTransform.apply(_ids_image(source), geometry, Image.NEAREST))
            if ids.size and (ids.max() >= self.label_nc or ids.min() < 0):
                bad = int(ids.max() if ids.max() >= self.label_nc else ids.min())
                raise DataError(
                    f"{where}: label id {bad}"
                    f" is outside 0..{self.label_nc - 1} (dataset.label_nc={self.label_nc}); "
                    "raise dataset.label_nc or remap the ids"
                )
            ids_t = torch.from_numpy(ids.astype(np.int64))
            a = torch.nn.functional.one_hot(ids_t, self.label_nc).permute(2, 0, 1).float()
        else:
            a = to_tensor(HDTransform.apply(source, geometry, Image.BICUBIC))
        if self.instance:
            if inst is None:
                raise DataError(f"{where}: dataset.instance=true needs an instance map")
            inst = np.asarray(HDTransform.apply(_ids_image(inst), geometry, Image.NEAREST))
            edge = torch.from_numpy(instance_edges(inst)).float()[None]
            a = torch.cat([a, edge], 0)
        return a.contiguous()

    def _source(self, path: Path):
        return read_ids(path) if self.label_nc else open_rgb(path)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        path = self.files["A"][index]
        source = self._source(path)
        size = source.size if isinstance(source, Image.Image) else source.shape[::-1]
        geometry = self.transform.geometry(tuple(size), rng, str(path))
        inst = None
        if self.instance:
            inst = read_ids(self.files["inst"][index], "instance map")
            if inst.shape != tuple(size)[::-1]:
                raise DataError(
                    f"{self.files['inst'][index]}: {inst.shape[1]}x{inst.shape[0]}, but its label "
                    f"map {path} is {size[0]}x{size[1]}"
                )
        # the photo goes to the same absolute size and crop (whatever its own size)
        photo = HDTransform.apply(open_rgb(self.files["B"][index]), geometry, Image.BICUBIC)
        a = self.encode(source, inst, geometry, str(path))
        return {"A": a, "B": to_tensor(photo), "index": index}

    # ---- prediction --------------------------------------------------------------------------
    def _instance_file(self, path: Path) -> Path | None:
        """The instance map beside an input file: ``<phase>_inst/<same name>`` next to a
        ``<phase>_label`` / ``<phase>_A`` folder, or the Cityscapes name (``labelIds`` ->
        ``instanceIds``) in either folder."""
        names = [path.name]
        if "labelIds" in path.name:
            names.append(path.name.replace("labelIds", "instanceIds"))
        folders = [path.parent]
        for tail in ("_label", "_A"):
            if path.parent.name.endswith(tail):
                folders.insert(0, path.parent.with_name(path.parent.name[: -len(tail)] + "_inst"))
        for folder in folders:
            for name in names:
                candidate = folder / name
                if candidate != path and candidate.is_file():
                    return candidate
        return None

    def encode_file(self, path: str | Path) -> tuple[torch.Tensor, tuple[int, int], dict]:
        """(input (C, H, W) at the evaluation size, the file's (w, h), a record) for one input
        file. Label ids come from a single-channel map, or from a colour-coded one (each pixel
        the id of the nearest palette colour: Cityscapes ``*_color.png``, a drawn layout); the
        instance map from ``_instance_file``, else the label map itself (boundaries between
        labels only)."""
        path = Path(path)
        record: dict = {}
        if self.label_nc:
            try:
                source = read_ids(path)
            except DataError:
                rgb = np.asarray(open_rgb(path))
                source = nearest_color_ids(rgb, self.colors)
                record["label_from"] = "palette colours"
            size = source.shape[::-1]
        else:
            source = open_rgb(path)
            size = source.size
        inst = None
        if self.instance:
            inst_path = self._instance_file(path)
            if inst_path is not None:
                inst = read_ids(inst_path, "instance map")
                if inst.shape != tuple(size)[::-1]:
                    inst = None
            record["instance"] = str(inst_path) if inst is not None else None
            if inst is None:
                inst = source if self.label_nc else np.zeros(tuple(size)[::-1], np.int64)
        geometry = self.transform.geometry(tuple(size), None, str(path))
        return self.encode(source, inst, geometry, str(path)), tuple(size), record

    def label_pictures(self, a: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) generator inputs -> (B, H, W, 3) uint8 pictures of the labels (palette
        colours, instance boundaries dark) or of the RGB input."""
        a = a.detach().float().cpu()
        if self.label_nc:
            rgb = colorize(a[:, : self.label_nc].argmax(1).numpy(), self.colors)
        else:
            rgb = ((a[:, :3].clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
            rgb = rgb.astype(np.uint8)
        if self.instance:
            edge = a[:, -1].numpy() > 0.5
            rgb = np.where(edge[..., None], (rgb * 0.35).astype(np.uint8), rgb)
        return np.ascontiguousarray(rgb)


def build_pix2pixhd_dataset(
    root: str | Path,
    label_nc: int = 35,
    instance: bool = True,
    preprocess: str = "scale_width",
    image_size: int = 512,
    load_size: int | None = 1024,
    flip: bool = True,
    size_multiple: int = 16,
    palette=None,
    name: str = "pix2pixHD dataset",
    hint: str = "",
) -> dict[str, LabelToImageDataset]:
    """``{"train": train_*, "val": test_*}`` of a pix2pixHD-layout dataset."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: dataset root {root} not found" + (f"; {hint}" if hint else ""))
    common = dict(label_nc=label_nc, instance=instance, palette=palette, hint=hint)

    def transform(train_flip: bool) -> HDTransform:
        return HDTransform(preprocess, image_size, load_size, train_flip, size_multiple)

    return {
        "train": LabelToImageDataset(root, "train", transform=transform(flip), **common),
        "val": LabelToImageDataset(root, "test", transform=transform(False), **common),
    }


build_pix2pixhd_dataset.kind = "label_to_image"
