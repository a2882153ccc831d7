"""WIDER FACE readers: RetinaFace training labels, the official validation text, a dataset, collate.

Formats
-------
* RetinaFace training labels (``train/label.txt``): a ``# relative/path.jpg`` line per image,
  then one line per face: ``x y w h`` then five landmarks as ``x y flag`` (left eye, right eye,
  nose, left mouth corner, right mouth corner) then a score: 20 numbers. A face whose first
  landmark x is negative has no landmarks (label -1, landmarks stored as -1); otherwise label 1.
  Lines of only 4 numbers (a box, no landmark fields) are accepted as faces without landmarks.
* Official validation ground truth (``wider_face_split/wider_face_val_bbx_gt.txt``): image path,
  face count, then ``x y w h blur expression illumination invalid occlusion pose`` per face. An
  image without faces is written as count ``0`` followed by one line of zeros: that line is
  consumed and the image has no face. All faces get label -1 (no landmarks).

Boxes become ``x1 y1 x2 y2 = x, y, x + w, y + h`` in pixels (the reference's convention, no +1).

Bad input: error or counted skip, decided per case
------------------------------------------------
* A malformed line (wrong number of fields, not numbers, a face before any image line, a count
  that disagrees with the lines that follow): ``DataError`` naming ``file:line``. A corrupt label
  file must be fixed, not trained on silently.
* A missing image: ``DataError`` at construction naming the first missing path and how many are
  missing (a wrong root is by far the usual cause). ``on_missing="skip"`` turns it into a counted,
  logged skip of those images.
* An image file that exists but cannot be decoded: ``DataError`` naming it when loaded.
* A degenerate box (``w <= 0`` or ``h <= 0``; WIDER has a few): counted, logged skip at parse
  time (the face is dropped); such a box cannot be matched or encoded.
* A box reaching outside its image: clipped to the image; a box with no area left inside the
  image is dropped. Counted per dataset and logged once per image (at load time, when the image
  size is known).
* An image with no faces: a valid sample with zero faces (the reference crashes on it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from src.data.base import DataError, SampleDataset
from src.data.face_transforms import BGR_MEAN, apply_train_plan, draw_train_plan, eval_transform

log = logging.getLogger(__name__)

LANDMARK_COLUMNS = [4, 5, 7, 8, 10, 11, 13, 14, 16, 17]
REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_CV2_THREADS_SET: dict[int, int] = {}  # pid -> the cv2 thread count this process was given


def set_cv2_threads(threads: int | None) -> None:
    """``cv2.setNumThreads(threads)`` once per process (None: leave OpenCV's default). In
    loader workers OpenCV's own thread pool only competes with the other workers."""
    if threads is None or _CV2_THREADS_SET.get(os.getpid()) == threads:
        return
    cv2.setNumThreads(int(threads))
    _CV2_THREADS_SET[os.getpid()] = threads


@dataclass
class FaceRecord:
    """One image: ``path`` relative to the images root, boxes ``(K, 4)`` x1 y1 x2 y2 pixels,
    landmarks ``(K, 10)`` pixels (-1 without), labels ``(K,)`` (1 landmarks, -1 none)."""

    path: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 10), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    @property
    def event(self) -> str:
        parts = Path(self.path).parts
        return parts[-2] if len(parts) > 1 else ""

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def xywh(self) -> np.ndarray:
        b = self.boxes.astype(np.float64)
        return np.c_[b[:, :2], b[:, 2:] - b[:, :2]]


def _numbers(line: str, where: str) -> list[float]:
    try:
        return [float(x) for x in line.split()]
    except ValueError:
        raise DataError(f"{where}: expected numbers, got {line.strip()!r}") from None


def _finish(path: str, rows: list[list[float]], where: str, skipped: list[int]) -> FaceRecord:
    if not rows:
        return FaceRecord(path)
    # a box-only row (4 numbers) is a face without landmarks
    a = np.asarray([r if len(r) == 20 else r[:4] + [-1.0] * 16 for r in rows], dtype=np.float64)
    ok = (a[:, 2] > 0) & (a[:, 3] > 0)
    if not ok.all():
        skipped[0] += int((~ok).sum())
        log.debug("%s: dropped %d degenerate box(es)", where, int((~ok).sum()))
        a = a[ok]
    boxes = np.c_[a[:, :2], a[:, :2] + a[:, 2:4]].astype(np.float32)
    landmarks = a[:, LANDMARK_COLUMNS].astype(np.float32)
    labels = np.where(a[:, 4] < 0, -1, 1).astype(np.int64)
    landmarks[labels < 0] = -1
    return FaceRecord(path, boxes, landmarks, labels)


def parse_retinaface_labels(label_file: str | os.PathLike) -> list[FaceRecord]:
    """Parse a RetinaFace ``label.txt`` (see the module docstring)."""
    label_file = Path(label_file)
    if not label_file.is_file():
        raise DataError(f"{label_file}: label file not found")
    records: list[FaceRecord] = []
    path, rows, start = None, [], 0
    skipped = [0]
    with open(label_file) as fh:
        for ln, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if line.startswith("#"):
                if path is not None:
                    records.append(_finish(path, rows, f"{label_file}:{start}", skipped))
                path, rows, start = line[1:].strip(), [], ln
                if not path:
                    raise DataError(f"{label_file}:{ln}: '#' line without an image path")
                continue
            where = f"{label_file}:{ln}"
            if path is None:
                raise DataError(f"{where}: face line before any '# image path' line")
            vals = _numbers(line, where)
            if len(vals) not in (4, 20):
                raise DataError(
                    f"{where}: expected 20 numbers (x y w h, 5 x (x y flag), score) "
                    f"or 4, got {len(vals)}"
                )
            rows.append(vals)
    if path is not None:
        records.append(_finish(path, rows, f"{label_file}:{start}", skipped))
    if skipped[0]:
        log.warning("%s: skipped %d degenerate box(es) (w or h <= 0)", label_file, skipped[0])
    return records


def parse_wider_val_gt(gt_txt: str | os.PathLike) -> list[FaceRecord]:
    """Parse the official ``wider_face_val_bbx_gt.txt`` (also the train split's file)."""
    gt_txt = Path(gt_txt)
    if not gt_txt.is_file():
        raise DataError(f"{gt_txt}: ground-truth file not found")
    lines = gt_txt.read_text().splitlines()
    records: list[FaceRecord] = []
    skipped = [0]
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        path, start = lines[i].strip(), i + 1
        if not path.lower().endswith((".jpg", ".jpeg", ".png")):
            raise DataError(f"{gt_txt}:{start}: expected an image path, got {path!r}")
        if i + 1 >= len(lines):
            raise DataError(f"{gt_txt}:{start}: image line without a face count line")
        try:
            count = int(lines[i + 1].strip())
        except ValueError:
            raise DataError(
                f"{gt_txt}:{i + 2}: expected a face count, got {lines[i + 1].strip()!r}"
            ) from None
        i += 2
        rows = []
        n_lines = count if count > 0 else 0
        if count == 0 and i < len(lines):
            # the official file writes one line of zeros after a 0 count
            vals = lines[i].split()
            if vals and all(_is_zero(v) for v in vals):
                i += 1
        for k in range(n_lines):
            if i + k >= len(lines):
                raise DataError(
                    f"{gt_txt}:{start}: count says {count} faces, the file ends after {k}"
                )
            where = f"{gt_txt}:{i + k + 1}"
            vals = _numbers(lines[i + k], where)
            if len(vals) < 4:
                raise DataError(f"{where}: expected 'x y w h ...', got {lines[i + k].strip()!r}")
            rows.append(vals[:4])
        i += n_lines
        records.append(_finish(path, rows, f"{gt_txt}:{start}", skipped))
    if skipped[0]:
        log.warning("%s: skipped %d degenerate box(es) (w or h <= 0)", gt_txt, skipped[0])
    return records


def _is_zero(v: str) -> bool:
    try:
        return float(v) == 0
    except ValueError:
        return False


def check_uint8_mean(mean: Sequence[float]) -> tuple[int, ...]:
    """The mean as uint8 colour values; ValueError unless every value is an integer in
    [0, 255] (uint8 batches are padded with it, and only then is ``padding - mean`` exactly 0)."""
    values = tuple(float(m) for m in mean)
    if not all(v.is_integer() and 0 <= v <= 255 for v in values):
        raise ValueError(
            f"uint8_images=true needs a mean of integers in [0, 255] (the padding colour of "
            f"uint8 batches), got {values}; set dataset.uint8_images=false"
        )
    return tuple(int(v) for v in values)


def subtract_mean(images: torch.Tensor, mean: Sequence[float] = BGR_MEAN) -> torch.Tensor:
    """uint8 (..., 3, H, W) BGR -> float32 minus ``mean``, on the images' device: bit-identical
    to the dataset's float path (``to_chw_minus_mean``: uint8 -> float32 is exact, the one
    float32 subtraction is correctly rounded on every device). Float images (the float path)
    are returned as they are."""
    if images.dtype != torch.uint8:
        return images
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return images.float() - m


class WiderFaceDataset(SampleDataset):
    """Faces dataset over ``FaceRecord`` s; ``load(index, rng)`` returns a dict:

    ``image`` float32 (3, H, W) BGR minus mean (``uint8_images``: uint8 (3, H, W) BGR, the
    same pixels before the float32 minus-mean step, which ``subtract_mean`` does on the
    device, bit-identical; a quarter of the bytes through loader workers, pinned memory and
    the host-to-device copy); ``boxes`` (K, 4) float32 normalised corners;
    ``landmarks`` (K, 10) (-1 for faces without); ``labels`` (K,) int64 (1 / -1); ``path``;
    ``orig_size`` (h, w) of the file; ``scale`` (output pixels per original pixel; only eval
    resizes keep the aspect ratio, training samples are square ``image_size`` crops).

    ``rng`` None -> evaluation transform (``eval_size`` None keeps the original size).

    Speed (training samples, the same draws and targets either way): every random draw is made
    before the image is decoded (``draw_train_plan``), from the image size (read from the file
    header once, then cached); with ``reduced_decode`` an image whose crop will be shrunk at
    least 2, 4 or 8 times is decoded at that reduced size (``cv2.IMREAD_REDUCED_COLOR_*``: a
    DCT-domain downscale, nearly the pixels of the full decode, see ``apply_train_plan``);
    ``False`` decodes every image in full (pixel-exact with the reference pipeline).
    ``cv2_threads`` (default 1) is set in each process that loads samples.
    ``uint8_images`` needs an integer ``mean`` (``check_uint8_mean``); it is off here (the
    sample contract of this class) and on in ``widerface_splits`` (``dataset.uint8_images``).
    """

    def __init__(
        self,
        records: Sequence[FaceRecord],
        images_dir: str | os.PathLike,
        image_size: int = 640,
        eval_size: int | None = None,
        mean=BGR_MEAN,
        on_missing: str = "error",
        min_face_size: float = 0.0,
        landmark_policy: str = "drop",
        gt_dir: str | os.PathLike | None = None,
        source: str = "",
        reduced_decode: bool = True,
        cv2_threads: int | None = 1,
        uint8_images: bool = False,
    ):
        if on_missing not in ("error", "skip"):
            raise ValueError("on_missing must be 'error' or 'skip'")
        self.images_dir = Path(images_dir)
        self.image_size = int(image_size)
        self.eval_size = eval_size
        self.mean = tuple(float(m) for m in mean)
        self.uint8_images = bool(uint8_images)
        if self.uint8_images:
            check_uint8_mean(self.mean)
        self.min_face_size = float(min_face_size)
        self.landmark_policy = landmark_policy
        self.gt_dir = Path(gt_dir) if gt_dir is not None else None
        self.reduced_decode = bool(reduced_decode)
        self.cv2_threads = cv2_threads
        self._sizes: dict[int, tuple[int, int]] = {}
        self.clipped_boxes = 0
        self.dropped_boxes = 0
        self._warned: set[str] = set()
        records = list(records)
        missing = [r.path for r in records if not (self.images_dir / r.path).is_file()]
        if missing:
            msg = (
                f"{len(missing)} of {len(records)} images listed in {source or 'the labels'} "
                f"are missing under {self.images_dir}, e.g. {self.images_dir / missing[0]}"
            )
            if on_missing == "error" or len(missing) == len(records):
                raise DataError(msg + "; check the dataset root (or pass on_missing='skip')")
            log.warning("%s; skipping them", msg)
            gone = set(missing)
            records = [r for r in records if r.path not in gone]
        self.skipped_missing = len(missing)
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def read_image(self, index: int, reduction: int = 1) -> np.ndarray:
        path = self.images_dir / self.records[index].path
        flag = REDUCED_FLAGS[reduction] if reduction > 1 else cv2.IMREAD_COLOR
        img = cv2.imread(str(path), flag)
        if img is None:
            raise DataError(f"{path}: cannot read the image (corrupt or not an image)")
        if reduction == 1:
            self._sizes[index] = img.shape[:2]
        return img

    def file_size(self, index: int) -> tuple[int, int]:
        """(H, W) of an image as ``read_image`` gives it: cached, else from the file header
        (PIL reads only the header), else by decoding it."""
        if index not in self._sizes:
            try:
                from PIL import Image

                with Image.open(self.images_dir / self.records[index].path) as im:
                    w, h = im.size
                    if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # OpenCV applies EXIF turns
                        w, h = h, w
                self._sizes[index] = (h, w)
            except Exception:  # unreadable header: the decoder decides (and reports)
                self.read_image(index)
        return self._sizes[index]

    def _clip(self, rec: FaceRecord, height: int, width: int):
        boxes = rec.boxes.astype(np.float64)
        clipped = boxes.copy()
        clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
        clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
        changed = (clipped != boxes).any(axis=1)
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        if changed.any() and rec.path not in self._warned:
            self._warned.add(rec.path)
            self.clipped_boxes += int((changed & keep).sum())
            self.dropped_boxes += int((~keep).sum())
            log.warning(
                "%s: %d box(es) reach outside the %dx%d image: clipped, %d dropped",
                rec.path,
                int(changed.sum()),
                width,
                height,
                int((~keep).sum()),
            )
        return clipped[keep], rec.landmarks[keep].astype(np.float64), rec.labels[keep]

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        set_cv2_threads(self.cv2_threads)
        rec = self.records[index]
        if rng is None:
            img = self.read_image(index)
            height, width = img.shape[:2]
            boxes, landmarks, labels = self._clip(rec, height, width)
            image, boxes, landmarks, labels, scale = eval_transform(
                img, boxes, landmarks, labels, self.eval_size, self.mean, self.uint8_images
            )
        else:
            height, width = self.file_size(index)
            state = rng.bit_generator.state
            plan = self._plan(rec, height, width, rng)
            f = plan.decode_reduction(self.image_size) if self.reduced_decode else 1
            img = self.read_image(index, f)
            if img.shape[:2] != (-(-height // f), -(-width // f)):
                # the header's size was not the decoded one: decode in full, draw again
                img = img if f == 1 else self.read_image(index)
                height, width = img.shape[:2]
                self._sizes[index] = (height, width)
                rng.bit_generator.state = state
                plan, f = self._plan(rec, height, width, rng), 1
            image, boxes, landmarks, labels = apply_train_plan(
                img, plan, self.image_size, self.mean, f, self.uint8_images
            )
            scale = float("nan")  # crops: no single mapping back to the file
        return {
            "image": torch.from_numpy(image),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "landmarks": torch.from_numpy(np.ascontiguousarray(landmarks, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "path": rec.path,
            "orig_size": (height, width),
            "scale": scale,
        }

    def _plan(self, rec: FaceRecord, height: int, width: int, rng: np.random.Generator):
        boxes, landmarks, labels = self._clip(rec, height, width)
        return draw_train_plan(
            height,
            width,
            boxes,
            landmarks,
            labels,
            self.image_size,
            rng,
            self.min_face_size,
            self.landmark_policy,
        )

    # evaluation helpers
    def keys(self) -> list[tuple[str, str]]:
        """``(event, name)`` per sample, the keys of ``src.data.widerface_gt.WiderFaceGT``."""
        return [(r.event, r.name) for r in self.records]

    def widerface_gt(self):
        """The ground truth for ``evaluate_widerface``: the official .mat files when ``gt_dir``
        has them, else built from the records (settings by face size, see ``from_records``)."""
        from src.data.widerface_gt import GT_FILES, WiderFaceGT, load_widerface_gt

        if self.gt_dir is not None and all((self.gt_dir / f).is_file() for f in GT_FILES.values()):
            return load_widerface_gt(self.gt_dir)
        return WiderFaceGT.from_records((r.event, r.name, r.xywh()) for r in self.records)


def collate_faces(batch: Sequence[dict], mean: Sequence[float] = BGR_MEAN) -> dict:
    """Stack samples: ``image`` (B, 3, Hmax, Wmax) padded bottom/right with the mean colour:
    float samples (minus the mean) with 0, uint8 samples with ``mean`` (so ``subtract_mean``
    makes that padding exactly 0 as well),
    ``boxes`` (B, Kmax, 4) and ``landmarks`` (B, Kmax, 10) padded with -1 rows, ``labels``
    (B, Kmax) padded with 0 (-1 already means "face without landmarks"), ``num_faces`` (B,),
    ``orig_size`` (B, 2), ``scale`` (B,), ``path`` list. Normalised coordinates are rescaled to
    the padded canvas, so ``boxes * [Wmax, Hmax, Wmax, Hmax]`` are pixels of the batch tensor.
    """
    b = len(batch)
    hmax = max(s["image"].shape[1] for s in batch)
    wmax = max(s["image"].shape[2] for s in batch)
    kmax = max(len(s["boxes"]) for s in batch)
    first = batch[0]["image"]
    same = all(s["image"].shape == first.shape for s in batch)
    if first.dtype == torch.uint8:
        images = first.new_empty((b, 3, hmax, wmax))
        if not same:
            images[:] = torch.tensor(check_uint8_mean(mean), dtype=torch.uint8).view(3, 1, 1)
    else:
        images = (
            first.new_empty((b, 3, hmax, wmax)) if same else first.new_zeros((b, 3, hmax, wmax))
        )
    boxes = torch.full((b, kmax, 4), -1.0)
    landmarks = torch.full((b, kmax, 10), -1.0)
    labels = torch.zeros((b, kmax), dtype=torch.int64)
    num = torch.zeros(b, dtype=torch.int64)
    for i, s in enumerate(batch):
        _, h, w = s["image"].shape
        images[i, :, :h, :w] = s["image"]
        k = len(s["boxes"])
        num[i] = k
        if k == 0:
            continue
        sx, sy = w / wmax, h / hmax
        fx = torch.tensor([sx, sy] * 2)
        boxes[i, :k] = s["boxes"] * fx if (sx, sy) != (1.0, 1.0) else s["boxes"]
        lm = s["landmarks"].clone()
        has = s["labels"] > 0
        if (sx, sy) != (1.0, 1.0):
            lm[has] = lm[has] * torch.tensor([sx, sy] * 5)
        landmarks[i, :k] = lm
        labels[i, :k] = s["labels"]
    return {
        "image": images,
        "boxes": boxes,
        "landmarks": landmarks,
        "labels": labels,
        "num_faces": num,
        "orig_size": torch.tensor([s["orig_size"] for s in batch], dtype=torch.int64),
        "scale": torch.tensor([s["scale"] for s in batch], dtype=torch.float64),
        "path": [s["path"] for s in batch],
    }


def widerface_splits(
    root: str | os.PathLike,
    image_size: int = 640,
    eval_size: int | None = None,
    train_labels: str = "train/label.txt",
    train_images: str = "train/images",
    val_gt: str = "wider_face_split/wider_face_val_bbx_gt.txt",
    val_images: str = "val/images",
    gt_dir: str = "ground_truth",
    on_missing: str = "error",
    min_face_size: float = 0.0,
    landmark_policy: str = "drop",
    uint8_images: bool = True,
) -> dict[str, WiderFaceDataset]:
    """``{"train": ..., "val": ...}`` from a WIDER FACE root (paths relative to ``root``).

    ``uint8_images`` (``dataset.uint8_images``, default true): samples carry uint8 BGR images
    and the Task subtracts the mean on the device (bit-identical to ``false``, the float path).

    Default layout (what ``synthetic_faces`` writes; the official zips map onto it by passing
    e.g. ``train_images="WIDER_train/images"``, ``val_images="WIDER_val/images"``)::

        root/train/label.txt                                  RetinaFace training labels
        root/train/images/<event>/<name>.jpg
        root/val/images/<event>/<name>.jpg
        root/wider_face_split/wider_face_val_bbx_gt.txt       official validation text
        root/ground_truth/wider_{face,easy,medium,hard}_val.mat
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: WIDER FACE root not found (set the dataset root)")
    train = WiderFaceDataset(
        parse_retinaface_labels(root / train_labels),
        root / train_images,
        image_size,
        eval_size,
        on_missing=on_missing,
        min_face_size=min_face_size,
        landmark_policy=landmark_policy,
        source=str(root / train_labels),
        uint8_images=uint8_images,
    )
    val = WiderFaceDataset(
        parse_wider_val_gt(root / val_gt),
        root / val_images,
        image_size,
        eval_size,
        on_missing=on_missing,
        gt_dir=root / gt_dir,
        source=str(root / val_gt),
        uint8_images=uint8_images,
    )
    return {"train": train, "val": val}


widerface_splits.kind = "face_detection"  # the dataset kind Tasks declare in `accepts`
