"""The training loader: frames held in memory for small data, streamed from disk for large data.

One path, two sources of frames, chosen by size (``choose_loader``):

* ``memory``: ``avs_lib.features.load_frames`` decodes a split once into tensors (``FrameSet``).
  The small composed worlds use it, and with ``augment=flip`` the batches are drawn exactly as
  before this module existed (``flip_batch`` on each global batch, from the epoch's generator), so
  committed results stay bit-for-bit reproducible.
* ``stream``: ``stream_frames`` keeps only the records and the audio embeddings F_a (small); the
  ``images`` and ``masks`` of the returned ``FrameSet`` are ``DecodedView`` s that decode on
  indexing. Training reads through a ``torch.utils.data.DataLoader`` whose worker processes read,
  decode, crop, resize and augment each frame (``FrameDataset``); masks travel as uint8, batches
  are pinned and copied with ``non_blocking`` on CUDA. Nothing of the frames is held per rank, so a
  rank's memory does not grow with the data nor with the number of ranks (the page cache, shared by
  every process, holds the files).

``loader=auto`` (the default) streams the splits of a dataset whose decoded tensors (its three
splits, images uint8 + masks int64 at ``image_size``) would take more than ``MEMORY_LIMIT_BYTES``;
``loader=memory`` or ``loader=stream`` forces either. The default world (10 000 ms3 frames
at 96 px, 0.94 GiB) is held; AVSS at 224 px (over 60 000 frames, over 30 GiB) streams.

Determinism (``RankBatchSampler``): the order of an epoch is ``torch.randperm`` from the generator
seeded with ``seed * 100_003 + epoch``, as before; the global batch ``step`` is
``order[step * B:(step + 1) * B]`` and rank r takes the r-th of ``world`` equal slices of it, so any
number of ranks sees, together, the batches of one process. Each frame's augmentation draws from
``frame_rng(seed, epoch, index)``, so it is the same whatever the number of workers or ranks, and a
sampler started at ``start_step`` (a run resumed inside an epoch) yields the very batches the
uninterrupted run yields from that step on.
"""
from __future__ import annotations

from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import torch

from avs_lib.analysis.truth import sounds_in
from avs_lib.data.augment import augment_frame, frame_rng, scale_boxes
from avs_lib.data.datasets import AVSDataset, FrameRecord, layout_records, load_sources
from avs_lib.data.transforms import flip_batch, resize_frame
from avs_lib.audio.registry import frame_embeddings
from avs_lib.core.files import read_json
from avs_lib.data.frames import FrameSet, decode_frame, load_frames

LOADERS = ("auto", "memory", "stream")
MEMORY_LIMIT_BYTES = 2 * 2**30  # a dataset above this (decoded, images uint8 + masks int64) streams


def memory_bytes(frames: int, image_size: int) -> int:
    """What ``load_frames`` holds for ``frames`` frames: images uint8 [3, S, S] and masks int64 [S, S]."""
    return frames * image_size * image_size * (3 + 8)


def choose_loader(loader: str, frames: int, image_size: int) -> str:
    """``memory`` or ``stream`` for a split of ``frames`` frames (see the module docstring)."""
    if loader not in LOADERS:
        raise ValueError(f"loader={loader!r}: choose one of {', '.join(LOADERS)}")
    if loader != "auto":
        return loader
    return "stream" if memory_bytes(frames, image_size) > MEMORY_LIMIT_BYTES else "memory"


# ----------------------------------------------------------------------------- frames decoded on demand
class DecodedView:
    """``images`` or ``masks`` of a streamed split: indexing (an int, a slice, a list or a tensor of
    indices, a boolean tensor) decodes those frames and resizes them as ``load_frames`` does, so the
    result equals the in-memory tensor's (images uint8 [n, 3, S, S], masks int64 [n, S, S])."""

    def __init__(self, records: list[FrameRecord], image_size: int, part: str):
        self.records, self.image_size, self.part = records, image_size, part

    def __len__(self) -> int:
        return len(self.records)

    @property
    def shape(self) -> tuple:
        s = self.image_size
        return (len(self), 3, s, s) if self.part == "images" else (len(self), s, s)

    def _one(self, i: int) -> torch.Tensor:
        image, mask = resize_frame(*decode_frame(self.records[i]), self.image_size)
        if self.part == "images":
            return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return torch.from_numpy(mask.astype(np.int64))

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)) or (torch.is_tensor(key) and key.ndim == 0):
            return self._one(int(key))
        if isinstance(key, slice):
            indices = range(len(self))[key]
        elif torch.is_tensor(key) and key.dtype == torch.bool:
            indices = torch.nonzero(key).flatten().tolist()
        else:
            indices = [int(i) for i in key]
        if not indices:
            s = self.image_size
            return torch.zeros((0, 3, s, s) if self.part == "images" else (0, s, s),
                               dtype=torch.uint8 if self.part == "images" else torch.int64)
        return torch.stack([self._one(i) for i in indices])


def stream_frames(root: str | Path, layout: str, split: str, image_size: int, encoder, encoder_id: str,
                  cache_dir: str | Path, progress: bool = False, **layout_kwargs):
    """A ``FrameSet`` of a split whose frames stay on disk (``DecodedView``); its audio embeddings,
    validity flags and names are held as ``load_frames`` holds them."""
    dataset = AVSDataset(root, layout, split, **layout_kwargs)
    records = dataset.records
    audio = frame_embeddings(dataset, encoder, encoder_id, cache_dir, progress)
    return FrameSet(DecodedView(records, image_size, "images"), DecodedView(records, image_size, "masks"),
                    torch.tensor([bool(r.masks) for r in records]), torch.from_numpy(np.asarray(audio, dtype=np.float32)),
                    [r.clip for r in records], [r.frame for r in records], [r.category for r in records],
                    load_sources(root, layout, **layout_kwargs))


def split_frames(config, root: str | Path, split: str, encoder, encoder_id: str, cache_dir: str | Path,
                 progress: bool = False, workers: int | Pool = 1):
    """A split of ``config.layout`` held in memory or streamed, as ``choose_loader`` decides for the
    three splits together (what ``prepare`` holds); held frames are decoded by ``workers`` processes."""
    frames = len(layout_records(root, config.layout, None))
    kind = choose_loader(getattr(config, "loader", "auto"), frames, config.image_size)
    if kind == "stream":
        return stream_frames(root, config.layout, split, config.image_size, encoder, encoder_id, cache_dir, progress)
    return load_frames(root, config.layout, split, config.image_size, encoder, encoder_id, cache_dir, progress,
                       workers=workers)


def is_streamed(frames) -> bool:
    return isinstance(frames.images, DecodedView)


# ----------------------------------------------------------------------------- boxes
def _world_size(root: Path) -> int | None:
    """The frame side a composed world's boxes are given in (``world.json`` at the layout's root or
    the world's root, for AVSS and VPO), None for real datasets."""
    for folder in (root, root.parent):
        if (folder / "world.json").exists():
            return int(read_json(folder / "world.json")["config"]["size"])
    return None


def frame_boxes(sources: dict, clip: str, frame: int) -> list[list[int]]:
    """Boxes [x0, y0, x1, y1] of the objects that sound on screen in frame ``frame`` of ``clip``, as
    the world's sources sidecar records them; empty where nothing is recorded (AVSBench has no boxes)."""
    record = sources.get(clip)
    if not record:
        return []
    boxes = []
    for source in record.get("sources", []):
        per_frame = source.get("bboxes")
        if source.get("on_screen") and sounds_in(source, frame) and per_frame and frame < len(per_frame):
            x0, y0, x1, y1 = per_frame[frame]
            if x1 > x0 and y1 > y0:
                boxes.append([x0, y0, x1, y1])
    return boxes


# ----------------------------------------------------------------------------- dataset and sampler
class FrameDataset(torch.utils.data.Dataset):
    """Training samples of a ``FrameSet`` (held or streamed), augmented with ``augment`` (see
    ``avs_lib.data.augment``). Items are keyed by ``(epoch, index)`` (what ``RankBatchSampler``
    yields), so a worker process needs no state to draw the epoch's augmentation."""

    def __init__(self, frames, image_size: int, augment: str, seed: int, root: str | Path | None = None):
        self.frames, self.image_size, self.augment, self.seed = frames, image_size, augment, seed
        self.streamed = is_streamed(frames)
        sources = frames.sources or {}
        world_size = _world_size(Path(root)) if root is not None and sources else None
        self.boxes_scale = None
        if world_size and not self.streamed:
            self.boxes_scale = image_size / world_size  # held frames are at image_size, boxes at the world's size
        self.sources = sources if augment == "released" else {}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if self.streamed:
            image, mask = decode_frame(self.frames.images.records[index])
        else:
            image = self.frames.images[index].permute(1, 2, 0).numpy()
            mask = self.frames.masks[index].numpy()
        boxes = frame_boxes(self.sources, self.frames.clips[index], self.frames.frames[index])
        if boxes and self.boxes_scale:
            boxes = scale_boxes(boxes, self.boxes_scale, self.boxes_scale)
        image, mask = augment_frame(image, mask, self.image_size, self.augment, frame_rng(self.seed, epoch, index), boxes)
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)), "audio": self.frames.audio[index],
                "valid": self.frames.valid[index], "index": index}


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training frames in ``epoch`` (the engine's since its first version)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class RankBatchSampler(torch.utils.data.Sampler):
    """This rank's slice of each global batch of an epoch, from ``start_step`` on (see the module
    docstring): a list of ``(epoch, index)`` keys per step."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, steps_per_epoch: int, rank: int = 0,
                 world: int = 1, start_step: int = 0):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be divisible by the {world} processes")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.steps, self.rank, self.world, self.start_step = steps_per_epoch, rank, world, start_step

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        share = self.batch_size // self.world
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in batch[self.rank * share:(self.rank + 1) * share]]


def make_loader(frames, config, epoch: int, steps_per_epoch: int, rank: int = 0, world: int = 1,
                start_step: int = 0, device: torch.device | None = None, root: str | Path | None = None):
    """The ``DataLoader`` of an epoch: worker processes (``config.loader_workers``) for streamed
    frames, the main process for held ones; pinned memory on CUDA."""
    dataset = FrameDataset(frames, config.image_size, effective_augment(config), config.seed, root)
    sampler = RankBatchSampler(len(frames), config.batch_size, config.seed, epoch, steps_per_epoch, rank, world,
                               start_step)
    workers = getattr(config, "loader_workers", 2) if dataset.streamed else 0
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       pin_memory=device is not None and device.type == "cuda",
                                       prefetch_factor=4 if workers else None,
                                       # the loader's own seed: the global generator (the model's draws) is left alone
                                       generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))


def effective_augment(config) -> str:
    augment = getattr(config, "augment", "flip")
    return "none" if augment == "flip" and not config.flip else augment


def epoch_batches(frames, config, epoch: int, steps_per_epoch: int, rank: int, world: int, device: torch.device,
                  start_step: int = 0, root: str | Path | None = None):
    """This rank's batches of an epoch, on ``device``: (images uint8, masks int64, audio, valid,
    indices of the frames). Held frames with ``augment=flip`` take the engine's original path (a
    flip of each global batch from the epoch's generator, bit-for-bit as before); everything else
    goes through ``make_loader``."""
    share = config.batch_size // world
    if not is_streamed(frames) and getattr(config, "augment", "flip") == "flip":
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(frames), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            images, masks = frames.images[batch], frames.masks[batch]
            if config.flip:
                images, masks = flip_batch(images, masks, generator)
            if step < start_step:
                continue
            sl = slice(rank * share, (rank + 1) * share)
            audio, valid = frames.audio[batch], frames.valid[batch]
            yield (*(t[sl].to(device) for t in (images, masks, audio, valid)), batch[sl])
        return
    non_blocking = device.type == "cuda"
    for item in make_loader(frames, config, epoch, steps_per_epoch, rank, world, start_step, device, root):
        yield (item["image"].to(device, non_blocking=non_blocking),
               item["mask"].to(device, non_blocking=non_blocking).long(),
               item["audio"].to(device, non_blocking=non_blocking), item["valid"].to(device, non_blocking=non_blocking),
               item["index"])
