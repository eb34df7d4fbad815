"""Frames in memory: every frame of a split, resized, with its mask and its audio embedding F_a.

``load_frames`` reads a split into a ``FrameSet`` of tensors; the embeddings come from the audio
encoder the registry built (``avs_lib.audio.registry.frame_embeddings``, through the embedding
cache). ``prepare`` (``avs_lib.training.prepare``) calls it for the three splits of a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import torch

from avs_lib.audio.registry import frame_embeddings
from avs_lib.core.parallel import map_in_processes
from avs_lib.data.datasets import AVSDataset, FrameRecord, load_sources, read_image, read_mask
from avs_lib.data.transforms import resize_frame


@dataclass
class FrameSet:
    images: torch.Tensor  # [N, 3, S, S] uint8
    masks: torch.Tensor  # [N, S, S] int64
    valid: torch.Tensor  # [N] bool: the frame has a ground truth
    audio: torch.Tensor  # [N, d] F_a
    clips: list[str]
    frames: list[int]
    categories: list[str]
    sources: dict = field(default_factory=dict)  # clip -> true sources (composed worlds only)

    def __len__(self) -> int:
        return len(self.clips)


def decode_frame(record: FrameRecord) -> tuple[np.ndarray, np.ndarray]:
    """(image [H, W, 3] uint8, mask [H, W] uint8) of a record at its files' own resolution."""
    image = read_image(record.image)
    return image, read_mask(record, image.shape[:2]).astype(np.uint8)


def _decode_resized(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    record, image_size = job
    image, mask = resize_frame(*decode_frame(record), image_size)
    return image.transpose(2, 0, 1), mask  # [3, S, S], [S, S]


def load_frames(root: str | Path, layout: str, split: str, image_size: int, encoder: torch.nn.Module,
                encoder_id: str, cache_dir: str | Path, progress: bool = False, workers: int | Pool = 1,
                **layout_kwargs) -> FrameSet:
    """Every frame of ``split`` at ``image_size``, its mask and F_a; ``workers`` (a number of processes or
    an open pool) decodes the frames (the same tensors either way; on 2 cores the log-mels lost more to
    the transfer than they gained, so they are computed here)."""
    dataset = AVSDataset(root, layout, split, **layout_kwargs)
    decoded = map_in_processes(_decode_resized, [(r, image_size) for r in dataset.records], workers,
                               f"frames {layout}/{split}", progress)
    images, masks = [image for image, _ in decoded], [mask for _, mask in decoded]
    valid = [bool(r.masks) for r in dataset.records]
    audio = frame_embeddings(dataset, encoder, encoder_id, cache_dir, progress)
    return FrameSet(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks).astype(np.int64)),
                    torch.tensor(valid), torch.from_numpy(np.asarray(audio, dtype=np.float32)),
                    [r.clip for r in dataset.records], [r.frame for r in dataset.records],
                    [r.category for r in dataset.records], load_sources(root, layout, **layout_kwargs))


