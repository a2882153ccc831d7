"""A port of the reference RetinaFace training data pipeline, the oracle of the data tests and the
baseline of ``benchmarks/retinaface_data.py``: biubug6/Pytorch_Retinaface ``data/wider_face.py``
(``WiderFaceDetection``: label.txt parsed into per-image lists, ``cv2.imread``, a per-face Python
loop building the ``(K, 15)`` annotation array) and ``data/data_augment.py`` (``preproc``:
``_crop``, ``_distort``, ``_pad_to_square``, ``_mirror``, ``_resize_subtract_mean``), step by step
with the same arithmetic, written independently of ``src/``.

The one difference: random draws come from a ``random.Random`` instance passed in (the reference
uses the global ``random`` module), so a test can seed it.
"""

from __future__ import annotations

import random

import cv2
import numpy as np
import torch

PRE_SCALES = [0.3, 0.45, 0.6, 0.8, 1.0]
RGB_MEANS = (104, 117, 123)


def matrix_iof(a, b):
    lt = np.maximum(a[:, np.newaxis, :2], b[:, :2])
    rb = np.minimum(a[:, np.newaxis, 2:], b[:, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return area_i / np.maximum(area_a[:, np.newaxis], 1)


def _crop(image, boxes, labels, landm, img_dim, rnd):
    height, width, _ = image.shape
    pad_image_flag = True
    for _ in range(250):
        scale = rnd.choice(PRE_SCALES)
        short_side = min(width, height)
        w = int(scale * short_side)
        h = w
        left = 0 if width == w else rnd.randrange(width - w)
        t = 0 if height == h else rnd.randrange(height - h)
        roi = np.array((left, t, left + w, t + h))
        value = matrix_iof(boxes, roi[np.newaxis])
        flag = value >= 1
        if not flag.any():
            continue
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        mask_a = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
        boxes_t = boxes[mask_a].copy()
        labels_t = labels[mask_a].copy()
        landms_t = landm[mask_a].copy()
        landms_t = landms_t.reshape([-1, 5, 2])
        if boxes_t.shape[0] == 0:
            continue
        image_t = image[roi[1] : roi[3], roi[0] : roi[2]]
        boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2])
        boxes_t[:, :2] -= roi[:2]
        boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:])
        boxes_t[:, 2:] -= roi[:2]
        landms_t[:, :, :2] = landms_t[:, :, :2] - roi[:2]
        landms_t[:, :, :2] = np.maximum(landms_t[:, :, :2], np.array([0, 0]))
        landms_t[:, :, :2] = np.minimum(landms_t[:, :, :2], roi[2:] - roi[:2])
        landms_t = landms_t.reshape([-1, 10])
        b_w_t = (boxes_t[:, 2] - boxes_t[:, 0] + 1) / w * img_dim
        b_h_t = (boxes_t[:, 3] - boxes_t[:, 1] + 1) / h * img_dim
        mask_b = np.minimum(b_w_t, b_h_t) > 0.0
        boxes_t = boxes_t[mask_b]
        labels_t = labels_t[mask_b]
        landms_t = landms_t[mask_b]
        if boxes_t.shape[0] == 0:
            continue
        pad_image_flag = False
        return image_t, boxes_t, labels_t, landms_t, pad_image_flag
    return image, boxes, labels, landm, pad_image_flag


def _distort(image, rnd):
    def _convert(image, alpha=1, beta=0):
        tmp = image.astype(float) * alpha + beta
        tmp[tmp < 0] = 0
        tmp[tmp > 255] = 255
        image[:] = tmp

    image = image.copy()
    if rnd.randrange(2):
        if rnd.randrange(2):
            _convert(image, beta=rnd.uniform(-32, 32))
        if rnd.randrange(2):
            _convert(image, alpha=rnd.uniform(0.5, 1.5))
        image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        if rnd.randrange(2):
            _convert(image[:, :, 1], alpha=rnd.uniform(0.5, 1.5))
        if rnd.randrange(2):
            tmp = image[:, :, 0].astype(int) + rnd.randint(-18, 18)
            tmp %= 180
            image[:, :, 0] = tmp
        image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
    else:
        if rnd.randrange(2):
            _convert(image, beta=rnd.uniform(-32, 32))
        image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        if rnd.randrange(2):
            _convert(image[:, :, 1], alpha=rnd.uniform(0.5, 1.5))
        if rnd.randrange(2):
            tmp = image[:, :, 0].astype(int) + rnd.randint(-18, 18)
            tmp %= 180
            image[:, :, 0] = tmp
        image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
        if rnd.randrange(2):
            _convert(image, alpha=rnd.uniform(0.5, 1.5))
    return image


def _mirror(image, boxes, landms, rnd):
    _, width, _ = image.shape
    if rnd.randrange(2):
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, 0::2] = width - boxes[:, 2::-2]
        landms = landms.copy()
        landms = landms.reshape([-1, 5, 2])
        landms[:, :, 0] = width - landms[:, :, 0]
        tmp = landms[:, 1, :].copy()
        landms[:, 1, :] = landms[:, 0, :]
        landms[:, 0, :] = tmp
        tmp1 = landms[:, 4, :].copy()
        landms[:, 4, :] = landms[:, 3, :]
        landms[:, 3, :] = tmp1
        landms = landms.reshape([-1, 10])
    return image, boxes, landms


def _pad_to_square(image, rgb_mean, pad_image_flag):
    if not pad_image_flag:
        return image
    height, width, _ = image.shape
    long_side = max(width, height)
    image_t = np.empty((long_side, long_side, 3), dtype=image.dtype)
    image_t[:, :] = rgb_mean
    image_t[0 : 0 + height, 0 : 0 + width] = image
    return image_t


def _resize_subtract_mean(image, insize, rgb_mean, rnd):
    interp_methods = [
        cv2.INTER_LINEAR,
        cv2.INTER_CUBIC,
        cv2.INTER_AREA,
        cv2.INTER_NEAREST,
        cv2.INTER_LANCZOS4,
    ]
    interp_method = interp_methods[rnd.randrange(5)]
    image = cv2.resize(image, (insize, insize), interpolation=interp_method)
    image = image.astype(np.float32)
    image -= rgb_mean
    return image.transpose(2, 0, 1)


class Preproc:
    def __init__(self, img_dim, rgb_means=RGB_MEANS, rnd=None):
        self.img_dim = img_dim
        self.rgb_means = rgb_means
        self.rnd = rnd or random.Random(0)

    def __call__(self, image, targets):
        assert targets.shape[0] > 0, "this image does not have gt"
        boxes = targets[:, :4].copy()
        labels = targets[:, -1].copy()
        landm = targets[:, 4:-1].copy()
        image_t, boxes_t, labels_t, landm_t, pad_image_flag = _crop(
            image, boxes, labels, landm, self.img_dim, self.rnd
        )
        image_t = _distort(image_t, self.rnd)
        image_t = _pad_to_square(image_t, self.rgb_means, pad_image_flag)
        image_t, boxes_t, landm_t = _mirror(image_t, boxes_t, landm_t, self.rnd)
        height, width, _ = image_t.shape
        image_t = _resize_subtract_mean(image_t, self.img_dim, self.rgb_means, self.rnd)
        boxes_t[:, 0::2] /= width
        boxes_t[:, 1::2] /= height
        landm_t[:, 0::2] /= width
        landm_t[:, 1::2] /= height
        labels_t = np.expand_dims(labels_t, 1)
        targets_t = np.hstack((boxes_t, landm_t, labels_t))
        return image_t, targets_t


class WiderFaceDetection:
    """``label.txt`` + images root -> (image tensor (3, S, S), (K, 15) targets), as the
    reference's dataset (its ``__getitem__`` per-face loop included)."""

    def __init__(self, txt_path, images_dir, preproc=None):
        self.preproc = preproc
        self.imgs_path = []
        self.words = []
        labels = []
        is_first = True
        with open(txt_path) as f:
            lines = f.readlines()
        for line in lines:
            line = line.rstrip()
            if line.startswith("#"):
                if is_first:
                    is_first = False
                else:
                    self.words.append(labels.copy())
                    labels.clear()
                path = line[2:]
                self.imgs_path.append(f"{images_dir}/{path}")
            else:
                labels.append([float(x) for x in line.split(" ")])
        self.words.append(labels)

    def __len__(self):
        return len(self.imgs_path)

    def __getitem__(self, index):
        img = cv2.imread(self.imgs_path[index])
        labels = self.words[index]
        annotations = np.zeros((0, 15))
        if len(labels) == 0:
            return annotations
        for label in labels:
            annotation = np.zeros((1, 15))
            annotation[0, 0] = label[0]
            annotation[0, 1] = label[1]
            annotation[0, 2] = label[0] + label[2]
            annotation[0, 3] = label[1] + label[3]
            annotation[0, 4] = label[4]
            annotation[0, 5] = label[5]
            annotation[0, 6] = label[7]
            annotation[0, 7] = label[8]
            annotation[0, 8] = label[10]
            annotation[0, 9] = label[11]
            annotation[0, 10] = label[13]
            annotation[0, 11] = label[14]
            annotation[0, 12] = label[16]
            annotation[0, 13] = label[17]
            annotation[0, 14] = -1 if annotation[0, 4] < 0 else 1
            annotations = np.append(annotations, annotation, axis=0)
        target = np.array(annotations)
        if self.preproc is not None:
            img, target = self.preproc(img, target)
        return torch.from_numpy(img), target
