"""Training augmentation of one frame, deterministic from (seed, epoch, index).

``augment_frame(image, mask, size, kind, rng, boxes)`` takes a decoded frame ([H, W, 3] uint8, at
any resolution) and its mask ([H, W] integer) and returns both at ``size x size`` (uint8):

* ``released`` (the default of the AVSBench configs): DDESeg's released training augmentation as
  the issue describes it: a crop guided by the boxes of the sounding objects (a square-ish window
  of 50-100 % of each side that contains one sounding object's box, chosen at random, where the
  box fits; a random window where the frame has no box), resized to ``size``; a horizontal flip
  (p = 1/2); a colour jitter (brightness 0.2, contrast 0.2, saturation 0.2, hue 0.1, applied in a
  random order, as torchvision's ``ColorJitter``). Composed worlds record each object's box per
  frame in their sources sidecar; AVSBench (and AVSS, VPO) record none, so there the crop is a
  plain random crop of the same scale range.
* ``avsbench``: AVSBench's simpler resize-and-crop (resize to 1.1 x size, random ``size`` crop,
  flip), ``avs_lib.data.transforms.train_transforms``.
* ``flip``: resize, then a horizontal flip with p = 1/2.
* ``none``: resize only (evaluation).

Every random draw comes from ``rng``, which the caller seeds with (seed, epoch, index)
(``frame_rng``): the same frame gets the same draw in every run, whatever the number of loader
workers or ranks, and another draw in another epoch.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from avs_lib.data.transforms import _resize_pair, train_transforms

AUGMENTATIONS = ("released", "avsbench", "flip", "none")
JITTER = (0.2, 0.2, 0.2, 0.1)  # brightness, contrast, saturation, hue: DDESeg's released values
CROP_SCALE = (0.5, 1.0)  # side of the crop window as a fraction of the frame's side


def frame_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of every random draw of frame ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index])


def _span(rng: np.random.Generator, full: int, window: int, lo: int, hi: int) -> int:
    """Start of a window of ``window`` px inside [0, full) that contains [lo, hi) where it can:
    uniform over the starts that keep the box inside, the box's centre when the box is larger."""
    if hi - lo >= window:
        return int(min(max((lo + hi) // 2 - window // 2, 0), full - window))
    first, last = max(0, hi - window), min(lo, full - window)
    return int(rng.integers(first, last + 1))


def crop_window(height: int, width: int, boxes: list, rng: np.random.Generator,
                scale: tuple[float, float] = CROP_SCALE) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop window whose sides are ``scale`` of the frame's; when
    ``boxes`` ([x0, y0, x1, y1] in the frame's pixels) is not empty, the window contains one of
    them, drawn at random (or is centred on it when the box is larger than the window)."""
    s = float(rng.uniform(*scale))
    h, w = max(1, int(round(height * s))), max(1, int(round(width * s)))
    if boxes:
        x0, y0, x1, y1 = boxes[int(rng.integers(len(boxes)))]
        return _span(rng, height, h, y0, y1), _span(rng, width, w, x0, x1), h, w
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def _grey(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, factors: tuple = JITTER) -> np.ndarray:
    """torchvision's ColorJitter(brightness, contrast, saturation, hue) on [H, W, 3] uint8, in
    numpy: each factor drawn uniformly (brightness in [1 - b, 1 + b], hue shift in [-h, h] of a
    turn), the four applied in a random order. Factors 0 give the image back unchanged."""
    b, c, s, hue = factors
    draws = [float(rng.uniform(1 - b, 1 + b)), float(rng.uniform(1 - c, 1 + c)), float(rng.uniform(1 - s, 1 + s)),
             float(rng.uniform(-hue, hue))]
    order = rng.permutation(4)
    if b == c == s == hue == 0:
        return image
    out = image.astype(np.float32)
    for op in order:
        if op == 0 and b:
            out = out * draws[0]
        elif op == 1 and c:
            out = draws[1] * out + (1 - draws[1]) * float(_grey(out).mean())
        elif op == 2 and s:
            out = draws[2] * out + (1 - draws[2]) * _grey(out)[..., None]
        elif op == 3 and hue:
            hsv = np.asarray(Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)).convert("HSV")).copy()
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(draws[3] * 255))) % 256).astype(np.uint8)
            out = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")).astype(np.float32)
        out = np.clip(out, 0, 255)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.5:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
    return image, mask


def augment_frame(image: np.ndarray, mask: np.ndarray, size: int, kind: str, rng: np.random.Generator,
                  boxes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image [size, size, 3] uint8, mask [size, size] uint8) of one frame (see the module docstring)."""
    mask = mask.astype(np.uint8)
    if kind == "released":
        top, left, h, w = crop_window(image.shape[0], image.shape[1], boxes or [], rng)
        resized = _resize_pair({"image": image[top:top + h, left:left + w], "mask": mask[top:top + h, left:left + w]},
                               size, size)
        image, mask = _flip(resized["image"], resized["mask"], rng)
        return colour_jitter(image, rng), mask
    if kind == "avsbench":
        out = train_transforms(size)({"image": image, "mask": mask}, rng)
        return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"])
    if kind not in ("flip", "none"):
        raise ValueError(f"augmentation {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if image.shape[:2] != (size, size):
        resized = _resize_pair({"image": image, "mask": mask}, size, size)
        image, mask = resized["image"], resized["mask"]
    return _flip(image, mask, rng) if kind == "flip" else (image, mask)


def scale_boxes(boxes: list, factor_y: float, factor_x: float) -> list:
    """Boxes [x0, y0, x1, y1] given in one resolution, in another (rounded outwards)."""
    return [[int(np.floor(x0 * factor_x)), int(np.floor(y0 * factor_y)), int(np.ceil(x1 * factor_x)),
             int(np.ceil(y1 * factor_y))] for x0, y0, x1, y1 in boxes]
