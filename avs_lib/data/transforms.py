"""Joint image/mask transforms written with Pillow and numpy (torchvision does not import here).

A sample is a dict with ``image`` ([H, W, 3] uint8), ``mask`` ([H, W] integer) and anything else,
which passes through. Random transforms draw from the ``rng`` the dataset passes in, which the
dataset derives from (seed, epoch, index): the same sample gets the same crop whatever the
number of loader workers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize_pair(sample: dict, width: int, height: int) -> dict:
    out = dict(sample)
    out["image"] = np.asarray(Image.fromarray(sample["image"]).resize((width, height), Image.Resampling.BILINEAR))
    if sample.get("mask") is not None:
        mask = sample["mask"]
        # Nearest keeps class indices exact; int32 is the widest integer mode Pillow resizes.
        resized = Image.fromarray(mask.astype(np.int32)).resize((width, height), Image.Resampling.NEAREST)
        out["mask"] = np.asarray(resized).astype(mask.dtype)
    return out


@dataclass
class Resize:
    size: int | tuple[int, int]  # (height, width) or a square side

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = (self.size, self.size) if isinstance(self.size, int) else self.size
        return _resize_pair(sample, w, h)


def _crop(sample: dict, top: int, left: int, h: int, w: int) -> dict:
    out = dict(sample)
    out["image"] = sample["image"][top : top + h, left : left + w]
    if sample.get("mask") is not None:
        out["mask"] = sample["mask"][top : top + h, left : left + w]
    return out


@dataclass
class RandomCrop:
    size: int

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = sample["image"].shape[:2]
        if h < self.size or w < self.size:
            raise ValueError(f"cannot crop {self.size} px from an image of {h}x{w}; resize first")
        return _crop(sample, int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1)), self.size, self.size)


@dataclass
class CenterCrop:
    size: int

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = sample["image"].shape[:2]
        return _crop(sample, (h - self.size) // 2, (w - self.size) // 2, self.size, self.size)


@dataclass
class RandomHorizontalFlip:
    p: float = 0.5

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        out = dict(sample)
        out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
        if sample.get("mask") is not None:
            out["mask"] = np.ascontiguousarray(sample["mask"][:, ::-1])
        return out


@dataclass
class Normalize:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        out = dict(sample)
        image = sample["image"].astype(np.float32) / 255.0
        out["image"] = (image - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return out


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) images [B, 3, H, W] -> ImageNet-normalised float32, on their device:
    the one normalisation of frames held as tensors (training, analysis, notebooks)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def resize_frame(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame [H, W, 3] and its mask [H, W] resized to size x size (bilinear / nearest): the resize
    of frames held as tensors (``avs_lib.data.frames.load_frames``), the same one ``Resize`` applies."""
    out = _resize_pair({"image": image, "mask": mask}, size, size)
    return out["image"], out["mask"]


def flip_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of each frame of a batch with probability 1/2, the same flip for its mask:
    the training augmentation of frames held as tensors. The draw comes from ``generator`` so that a
    run is reproducible from (seed, epoch)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images, masks = images.clone(), masks.clone()
    images[flip] = images[flip].flip(-1)
    masks[flip] = masks[flip].flip(-1)
    return images, masks


class Compose:
    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def to_tensors(sample: dict) -> dict:
    """uint8 images become floats in [0, 1]; already-normalised float images are kept."""
    out = dict(sample)
    image = sample["image"]
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if sample.get("mask") is not None:
        out["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"]).astype(np.int64))
    out["audio"] = torch.from_numpy(np.ascontiguousarray(sample["audio"], dtype=np.float32))
    return out


def train_transforms(size: int) -> Compose:
    """Resize slightly larger, random crop, flip: the usual AVS training augmentation."""
    return Compose([Resize(int(round(size * 1.1))), RandomCrop(size), RandomHorizontalFlip(0.5)])


def eval_transforms(size: int) -> Compose:
    return Compose([Resize(size)])
