"""WS-DAN trainer: how the WSDAN model, its loss, a classification dataset and accuracy meet.

Training step (Hu et al. 2019; GuYuc/WS-DAN.PyTorch train.py): one forward on the raw batch
gives logits, the feature matrix and M attention maps; per sample two maps are drawn with
probability ~ sqrt(sum of the map); the first guides attention *cropping* (threshold
U(crop_theta) of its max, padded box, resized back), the second attention *dropping* (erase
where the map exceeds U(drop_theta) of its max). The crops and the drops go through the
model again. loss = CE(raw)/3 + CE(crop)/3 + CE(drop)/3 + center loss (see
src/losses/ws_dan.py). The augmentation is batched on the device, drawn from torch's RNG.

Evaluation: logits of the raw image and of the crop guided by the *mean* attention map
(threshold ``eval_crop_theta``, padding ``eval_crop_padding``) are averaged; top-1/top-5
accuracy (fractions in [0, 1]) and the cross-entropy of the averaged logits.

Batches arrive as uint8 RGB crops (``dataset.uint8_images``, the default; augmented training
batches with their ``jitter`` factors) or float32 normalised images (the float path);
``normalise`` is the one place that makes the network input (``normalize_batch``: ``/ 255``,
brightness / saturation jitter and the ImageNet normalisation on the device) and every entry
point goes through it: ``on_train_batch_start`` (and ``training_step`` for direct callers),
``evaluate``, ``visualize``, ``predict_one``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from src.data.cub import open_rgb
from src.data.transforms import denormalize, normalize_batch
from src.metrics.accuracy import TopKAccuracy
from src.models.ws_dan.augment import attention_crop, attention_drop, sample_attention_maps
from src.tasks.base import Task, unwrap


def _theta(value: Any) -> float | tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value)
    lo, hi = (float(v) for v in value)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"WS-DAN threshold range must satisfy 0 <= lo <= hi <= 1, got {value}")
    return lo, hi


def _mid(theta: float | tuple[float, float]) -> float:
    return theta if isinstance(theta, float) else (theta[0] + theta[1]) / 2.0


def heatmap_overlay(image: np.ndarray, attention: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """HxWx3 uint8 picture with an (h, w) attention map drawn over it (red = strong).

    As the reference's eval.py: the map is resized to the picture, scaled to [0, 1] by its
    max, square-rooted, coloured (R, G, B) = (a, min(a, 1 - a), 1 - a) and blended.
    """
    height, width = image.shape[:2]
    a = attention.detach().float()[None, None]
    a = F.interpolate(a, size=(height, width), mode="bilinear", align_corners=True)[0, 0]
    a = torch.sqrt(a.clamp(min=0) / a.max().clamp(min=1e-12)).cpu().numpy()
    heat = np.stack([a, np.where(a < 0.5, a, 1.0 - a), 1.0 - a], axis=-1)
    blended = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * heat
    return (np.clip(blended, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def _picture(image: torch.Tensor) -> np.ndarray | None:
    """(3, H, W) uint8 -> (H, W, 3) uint8 array; None for a float (normalised) image."""
    if image.dtype != torch.uint8:
        return None
    return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())


class WSDANTask(Task):
    accepts = {"loss": ("ws_dan",), "dataset": ("classification",)}
    monitor = "val/acc_top1"
    monitor_mode = "max"

    def __init__(
        self,
        net: torch.nn.Module,
        loss: torch.nn.Module,
        data: dict[str, Any],
        crop_theta: Sequence[float] | float = (0.4, 0.6),
        crop_padding: float = 0.1,
        drop_theta: Sequence[float] | float = (0.2, 0.5),
        eval_crop_theta: float = 0.1,
        eval_crop_padding: float = 0.05,
        num_visualize: int = 4,
        picture_size: int = 256,
    ):
        super().__init__(loss, data)
        self.net = net
        self.crop_theta = _theta(crop_theta)
        self.crop_padding = float(crop_padding)
        self.drop_theta = _theta(drop_theta)
        self.eval_crop_theta = _theta(eval_crop_theta)
        self.eval_crop_padding = float(eval_crop_padding)
        self.num_visualize = int(num_visualize)
        self.picture_size = int(picture_size)
        self.check_num_classes(net.num_classes)
        # Centers get their final (num_classes, M * C) shape now, before any checkpoint loads.
        self.loss.build(net.num_classes, net.feature_dim)

    # ---- data -----------------------------------------------------------------------
    def class_names(self) -> list[str]:
        for split in ("val", "train"):
            names = getattr(self.data.get(split), "class_names", None)
            if names:
                return list(names)
        return [str(k) for k in range(self.net.num_classes)]

    def normalise(self, batch: dict) -> dict:
        """The batch with its ``image`` as the network input: uint8 -> float32 jittered (its
        ``jitter`` factors) and ImageNet-normalised on its device; a float batch unchanged."""
        if batch["image"].dtype != torch.uint8:
            return batch
        out = {k: v for k, v in batch.items() if k != "jitter"}
        out["image"] = normalize_batch(batch["image"], batch.get("jitter"))
        return out

    def on_train_batch_start(self, batch: Any, step: int) -> Any:
        return self.normalise(batch)

    # ---- training -------------------------------------------------------------------
    def augment(self, images: torch.Tensor, attention_maps: torch.Tensor):
        """(crops, drops) of a batch from its (B, M, h, w) attention maps."""
        with torch.no_grad():
            maps, _ = sample_attention_maps(attention_maps, num=2)
            crops = attention_crop(images, maps[:, :1], self.crop_theta, self.crop_padding)
            drops = attention_drop(images, maps[:, 1:], self.drop_theta)
        return crops, drops

    def training_step(self, batch: dict, opt: Any) -> dict[str, torch.Tensor]:
        batch = self.normalise(batch)  # already done by on_train_batch_start
        images, labels = batch["image"], batch["label"]
        logits_raw, feature_matrix, attention_maps = self.net(images)
        crops, drops = self.augment(images, attention_maps)
        logits_crop = self.net(crops)[0]
        logits_drop = self.net(drops)[0]
        return self.loss(logits_raw, logits_crop, logits_drop, feature_matrix, labels)

    # ---- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def refine(self, images: torch.Tensor):
        """Test-time WS-DAN: ``(averaged logits, raw logits, mean attention map (B, h, w))``."""
        model = unwrap(self.net)
        logits_raw, _, attention_maps = model(images)
        mean_map = attention_maps.float().mean(dim=1, keepdim=True)
        crops = attention_crop(images, mean_map, self.eval_crop_theta, self.eval_crop_padding)
        logits_crop = model(crops)[0]
        return (logits_raw.float() + logits_crop.float()) / 2.0, logits_raw.float(), mean_map[:, 0]

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        refined, raw = TopKAccuracy((1, 5)), TopKAccuracy((1,))
        loss_sum, count = None, 0
        for batch in loader:
            batch = self.normalise(batch)
            images, labels = batch["image"], batch["label"]
            logits, logits_raw, _ = self.refine(images)
            refined.update(logits, labels)
            raw.update(logits_raw, labels)
            batch_loss = F.cross_entropy(logits, labels, reduction="sum")
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            count += int(labels.shape[0])
        result = refined.compute()
        result["acc_top1_raw"] = raw.compute()["acc_top1"]
        result["loss"] = float(loss_sum) / count if count else float("nan")
        return result

    # ---- pictures -------------------------------------------------------------------
    @torch.no_grad()
    def visualize(self, batch: dict) -> dict[str, list]:
        n = self.num_visualize
        raw = batch["image"][:n]
        jitter = batch.get("jitter")
        images = self.normalise({"image": raw, "jitter": None if jitter is None else jitter[:n]})
        images = images["image"]
        labels = batch["label"][:n]
        logits, _, mean_map = self.refine(images)
        crops = attention_crop(images, mean_map, _mid(self.crop_theta), self.crop_padding)
        drops = attention_drop(images, mean_map, _mid(self.drop_theta))
        names = self.class_names()
        predicted = logits.argmax(dim=1).tolist()
        out: dict[str, list] = {"attention": [], "crops": [], "drops": []}
        for i, (label, pred) in enumerate(zip(labels.tolist(), predicted)):
            caption = f"true: {names[label]} / predicted: {names[pred]}"
            picture = _picture(raw[i]) if jitter is None else None  # uint8 as it came
            picture = denormalize(images[i]) if picture is None else picture
            out["attention"].append((heatmap_overlay(picture, mean_map[i]), caption))
            out["crops"].append((denormalize(crops[i]), caption))
            out["drops"].append((denormalize(drops[i]), caption))
        return out

    def predict_one(self, path: Path, out_dir: Path, stem: str) -> dict:
        dataset = self.data.get("val") or self.data.get("train")
        if dataset is None or not hasattr(dataset, "preprocess"):
            raise RuntimeError("WS-DAN predict needs a dataset with preprocess() for its transform")
        device = next(unwrap(self.net).parameters()).device
        raw = dataset.preprocess(open_rgb(path))[None].to(device)
        image = self.normalise({"image": raw})["image"]
        logits, _, mean_map = self.refine(image)
        probs = logits.softmax(dim=1)[0]
        top = probs.topk(min(5, probs.numel()))
        names = self.class_names()
        picture = out_dir / f"{stem}_attention.png"
        shown = _picture(raw[0])
        shown = Image.fromarray(denormalize(image[0]) if shown is None else shown)
        if min(shown.size) < self.picture_size:  # small network inputs: enlarge to see
            scale = self.picture_size / min(shown.size)
            shown = shown.resize(
                (round(shown.width * scale), round(shown.height * scale)), Image.BILINEAR
            )
        Image.fromarray(heatmap_overlay(np.asarray(shown), mean_map[0])).save(picture)
        return {
            "path": str(path),
            "top5": [
                {"class_id": int(k), "class_name": names[int(k)], "probability": float(p)}
                for p, k in zip(top.values.tolist(), top.indices.tolist())
            ],
            "attention_picture": str(picture),
        }
