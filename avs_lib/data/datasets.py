"""Loaders for AVSBench S4, MS3, AVSS (original and DDESeg's re-organised release) and VPO.

Every layout is first turned into a list of :class:`FrameRecord` (one per frame: image path,
mask path(s), audio path and which second of it the frame hears). :class:`AVSDataset` then reads
records into samples; :func:`check_data` reads every record once and lists every problem.

Masks come back as integer maps: {0, 1} for the binary layouts (S4, MS3), class indices
(0 = background) for the semantic ones (AVSS, VPO). Frames without a ground truth (S4 train
frames 2-5, as AVSBench ships them) come with ``mask_valid = False`` and an all-zero mask.

Layout names: ``s4``, ``ms3``, ``avss``, ``avss-ddeseg``, ``vpo`` (with ``vpo_subset`` ss, ms or msmi).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from avs_lib.audio.frontends import resample
from avs_lib.core.errors import BUILD_HINT, DataError
from avs_lib.core.files import read_json
from avs_lib.data.layouts import (METADATA, SOURCES, avss_files, ms3_files, s4_files, vpo_files, vpo_metadata,
                                  vpo_sources)
from avs_lib.data.palette import colours_to_indices
from avs_lib.data.transforms import to_tensors

LAYOUTS = ("s4", "ms3", "avss", "avss-ddeseg", "vpo")
SPLITS = ("train", "val", "test")


@dataclass
class FrameRecord:
    clip: str
    frame: int  # 0-based index within the clip
    split: str
    image: Path
    audio: Path
    audio_start_s: float  # the frame hears [audio_start_s, audio_start_s + audio_seconds) of the file
    audio_seconds: float | None  # None: the whole file (VPO)
    masks: list[Path] = field(default_factory=list)  # empty: no ground truth for this frame
    mask_kind: str = "binary"  # binary, palette (AVSS labels_rgb), index (class index PNG), instances (VPO)
    mask_class: int = 1  # VPO: the class index given to the instance masks
    category: str = ""


# ----------------------------------------------------------------------------- CSV helpers
def _read_csv(path: Path, required: list[str], layout: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: metadata file not found (layout '{layout}'); is the root right?")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises many types for a broken CSV
        raise DataError(f"{path}: cannot parse CSV ({err})") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; layout '{layout}' expects {required}")
    return frame


def _split_rows(frame: pd.DataFrame, split: str | None, path: Path) -> pd.DataFrame:
    if split is None:
        return frame
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose from {SPLITS}")
    rows = frame[frame["split"] == split]
    if rows.empty and len(frame):
        hint = " (VPO labels its test set 'val')" if split == "test" and path.name.startswith("vpo_") else ""
        raise DataError(f"{path}: no rows with split '{split}'{hint}; splits present: {sorted(set(frame['split']))}")
    return rows


# ----------------------------------------------------------------------------- layouts
def _clip_names(table: pd.DataFrame) -> pd.Series:
    """The clip-name column: ``name`` where the header has it, else the first column (AVSBench's own
    loaders read the name by position; the other columns are read by name)."""
    return table["name"] if "name" in table.columns else table.iloc[:, 0]


def s4_records(root: Path, split: str | None = None, frames: int = 5) -> list[FrameRecord]:
    csv_path = root / METADATA["s4"]
    table = _read_csv(csv_path, ["category", "split"], "s4")
    records = []
    rows = _split_rows(table, split, csv_path)
    for name, category, sp in zip(_clip_names(rows), rows["category"], rows["split"]):
        for t in range(frames):
            # AVSBench ships one mask (frame 1) per training clip and five per val/test clip.
            has_mask = sp != "train" or t == 0
            files = s4_files(root, sp, category, name, t)
            records.append(FrameRecord(
                clip=name, frame=t, split=sp, category=category, image=files["frame"],
                audio=files["wav"], audio_start_s=float(t), audio_seconds=1.0,
                masks=[files["mask"]] if has_mask else [], mask_kind="binary"))
    return records


def ms3_records(root: Path, split: str | None = None, frames: int = 5) -> list[FrameRecord]:
    csv_path = root / METADATA["ms3"]
    table = _read_csv(csv_path, ["split"], "ms3")
    records = []
    rows = _split_rows(table, split, csv_path)
    for name, sp in zip(_clip_names(rows), rows["split"]):
        for t in range(frames):
            files = ms3_files(root, sp, name, t)
            records.append(FrameRecord(
                clip=name, frame=t, split=sp, image=files["frame"],
                audio=files["wav"], audio_start_s=float(t), audio_seconds=1.0, masks=[files["mask"]], mask_kind="binary"))
    return records


AVSS_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}


def avss_records(root: Path, split: str | None = None, labels: tuple[str, ...] = ("v1s", "v1m", "v2")) -> list[FrameRecord]:
    csv_path = root / METADATA["avss"]
    table = _read_csv(csv_path, ["uid", "split", "label"], "avss")
    records = []
    for row in _split_rows(table, split, csv_path).itertuples(index=False):
        if row.label not in labels:
            continue
        if row.label not in AVSS_FRAMES:
            raise DataError(f"{csv_path}: clip {row.uid} has unknown label {row.label!r} (expected v1s, v1m or v2)")
        for t in range(AVSS_FRAMES[row.label]):
            files = avss_files(root, row.label, row.uid, t)
            records.append(FrameRecord(
                clip=row.uid, frame=t, split=row.split, category=row.label, image=files["frame"], audio=files["wav"],
                audio_start_s=float(t), audio_seconds=1.0, masks=[files["mask"]], mask_kind="palette"))
    return records


def avss_ddeseg_records(root: Path, split: str | None = None) -> list[FrameRecord]:
    """DDESeg's release: one CSV row per second, ``uid = <clip>_<second>``, 1 s wav per frame."""
    csv_path = root / METADATA["avss-ddeseg"]
    table = _read_csv(csv_path, ["uid", "split", "subset"], "avss-ddeseg")
    records = []
    for row in _split_rows(table, split, csv_path).itertuples(index=False):
        clip, _, second = row.uid.rpartition("_")
        if not clip or not second.isdigit():
            raise DataError(f"{csv_path}: uid {row.uid!r} is not '<clip>_<second>'")
        base = root / row.subset / clip
        t = int(second)
        records.append(FrameRecord(
            clip=clip, frame=t, split=row.split, category=row.subset,
            image=base / "frames" / f"{t}.jpg", audio=base / "audios" / f"{t}.wav", audio_start_s=0.0, audio_seconds=1.0,
            masks=[base / "labels_semantic" / f"{t}.png"], mask_kind="index"))
    return records


def vpo_records(root: Path, split: str | None = None, vpo_subset: str = "msmi") -> list[FrameRecord]:
    """VPO: image-level records; ``ann_Ids`` is read as any list of integers in the cell."""
    if vpo_subset not in ("ss", "ms", "msmi"):
        raise DataError(f"unknown VPO subset {vpo_subset!r}: choose ss, ms or msmi")
    csv_path = root / vpo_metadata(vpo_subset)
    table = _read_csv(csv_path, ["cateName", "cateId", "img_Id", "ann_Ids", "vgg_file", "split"], "vpo")
    records = []
    for row in _split_rows(table, split, csv_path).itertuples(index=False):
        img = int(row.img_Id)
        anns = [int(a) for a in re.findall(r"\d+", row.ann_Ids)]
        files = vpo_files(root, row.cateName, img, anns, row.vgg_file)
        records.append(FrameRecord(
            clip=f"{img:012d}", frame=0, split=row.split, category=row.cateName, image=files["frame"],
            audio=files["wav"], audio_start_s=0.0, audio_seconds=None, masks=files["masks"],
            mask_kind="instances", mask_class=int(row.cateId)))
    return records


def layout_records(root: str | Path, layout: str, split: str | None = None, **kwargs) -> list[FrameRecord]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist or is not a folder; {BUILD_HINT}")
    builders = {"s4": s4_records, "ms3": ms3_records, "avss": avss_records, "avss-ddeseg": avss_ddeseg_records, "vpo": vpo_records}
    if layout not in builders:
        raise DataError(f"unknown layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    return builders[layout](root, split, **kwargs)


# ----------------------------------------------------------------------------- reading files
def read_image(path: Path) -> np.ndarray:
    """[H, W, 3] uint8; a DataError naming the file if it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as err:
        raise DataError(f"{path}: image not found") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError for broken files
        raise DataError(f"{path}: unreadable image ({err})") from err


def read_mask(record: FrameRecord, size: tuple[int, int]) -> np.ndarray:
    """[H, W] int64 mask of a record, checked against the frame size (height, width)."""
    out = np.zeros(size, np.int64)
    for path in record.masks:
        try:
            with Image.open(path) as img:
                if record.mask_kind == "palette":
                    values = colours_to_indices(np.asarray(img.convert("RGB")))
                    if (values < 0).any():
                        raise DataError(f"{path}: colours outside the VOC palette")
                elif record.mask_kind == "index":
                    values = np.asarray(img if img.mode in ("L", "P", "I") else img.convert("L")).astype(np.int64)
                else:
                    values = (np.asarray(img.convert("L")) > 127).astype(np.int64)
        except FileNotFoundError as err:
            raise DataError(f"{path}: mask not found") from err
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{path}: unreadable mask ({err})") from err
        if values.shape != size:
            raise DataError(f"{path}: mask is {values.shape[1]}x{values.shape[0]} but its frame {record.image.name} is {size[1]}x{size[0]}")
        if record.mask_kind == "instances":
            out[values > 0] = record.mask_class
        else:
            out = values
    return out


def read_audio_segment(record: FrameRecord, sample_rate: int | None) -> np.ndarray:
    """The frame's audio as float32 mono at ``sample_rate`` (None: the file's own rate)."""
    import soundfile  # only where audio is read: a run on precomputed embeddings never needs it


    try:
        info = soundfile.info(str(record.audio))
        start = int(round(record.audio_start_s * info.samplerate))
        count = -1 if record.audio_seconds is None else int(round(record.audio_seconds * info.samplerate))
        wave, sr = soundfile.read(str(record.audio), start=start, frames=count, dtype="float32", always_2d=True)
    except Exception as err:
        if not record.audio.exists():
            raise DataError(f"{record.audio}: audio file not found") from err
        raise DataError(f"{record.audio}: unreadable audio ({err})") from err
    wave = wave.mean(axis=1)
    if count > 0 and len(wave) < count:
        raise DataError(f"{record.audio}: audio ends at {(start + len(wave)) / sr:.2f} s but frame {record.frame + 1} "
                        f"needs up to {record.audio_start_s + record.audio_seconds:.2f} s (truncated file?)")
    return wave if sample_rate is None else resample(wave, sr, sample_rate)


# ----------------------------------------------------------------------------- dataset
class AVSDataset(torch.utils.data.Dataset):
    """Per-frame samples of a layout: ``image`` [3, H, W], ``audio`` [samples], ``mask`` [H, W],
    ``mask_valid``, and ``clip``/``frame``/``split`` metadata. ``clips`` groups frames by clip."""

    def __init__(self, root: str | Path, layout: str, split: str | None = None, transform=None,
                 sample_rate: int = 16000, seed: int = 0, **layout_kwargs):
        self.root, self.layout, self.split = Path(root), layout, split
        self.layout_kwargs = layout_kwargs
        self.records = layout_records(root, layout, split, **layout_kwargs)
        if not self.records:
            raise DataError(f"{self.root}: no frames found for layout '{layout}' split '{split}'")
        self.transform, self.sample_rate, self.seed, self.epoch = transform, sample_rate, seed, 0
        self.clips: dict[str, list[int]] = {}
        for index, rec in enumerate(self.records):
            self.clips.setdefault(rec.clip, []).append(index)

    def set_epoch(self, epoch: int) -> None:
        """Random transforms depend on (seed, epoch, index): call this at each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def load_raw(self, index: int) -> dict:
        rec = self.records[index]
        image = read_image(rec.image)
        mask = read_mask(rec, image.shape[:2])
        return {"image": image, "mask": mask, "mask_valid": bool(rec.masks), "audio": read_audio_segment(rec, self.sample_rate),
                "clip": rec.clip, "frame": rec.frame, "split": rec.split, "category": rec.category}

    def __getitem__(self, index: int) -> dict:
        sample = self.load_raw(index)
        if self.transform is not None:
            sample = self.transform(sample, np.random.default_rng([self.seed, self.epoch, index]))
        return to_tensors(sample)

    def clip(self, name: str) -> list[dict]:
        """All frames of one clip, in order."""
        return [self[i] for i in sorted(self.clips[name], key=lambda i: self.records[i].frame)]


def load_sources(root: str | Path, layout: str, vpo_subset: str = "msmi") -> dict[str, dict]:
    """The true sources recorded beside a composed world's metadata, by clip name (empty for real
    datasets, which have no such file)."""
    root = Path(root)
    relative = vpo_sources(vpo_subset) if layout == "vpo" else SOURCES.get(layout)
    path = root / relative if relative is not None else None
    if path is None or not path.exists():
        return {}
    out = {}
    with open(path) as fh:
        for line in fh:
            rec = json.loads(line)
            out[rec["name"]] = rec
    return out


def clip_frames(dataset: AVSDataset, sources: dict[str, dict]) -> dict[str, list[int]]:
    """{clip name: indices of its frames in order}. For AVSBench layouts these are the dataset's own
    clips. VPO is image-level (each frame is a record named by its image id); for a composed world
    the sources sidecar says which image ids make up each clip, and those clips are returned under
    their world names (``msmi_00003``). Clips with no frame in ``dataset`` (another split) are left out."""
    if dataset.layout != "vpo" or not sources:
        return {name: sorted(idx, key=lambda i: dataset.records[i].frame) for name, idx in dataset.clips.items()}
    index_of = {int(rec.clip): i for i, rec in enumerate(dataset.records)}
    groups = {}
    for name, record in sources.items():
        indices = [index_of[i] for i in record.get("vpo", {}).get("img_ids", []) if i in index_of]
        if indices:
            groups[name] = indices
    return groups


# ----------------------------------------------------------------------------- checking a root
def check_data(root: str | Path, layout: str, split: str | None = None, progress: bool = False, **layout_kwargs) -> list[str]:
    """Read every file a layout names; return one line per problem (empty list: all good)."""
    from tqdm.auto import tqdm

    try:
        records = layout_records(root, layout, split, **layout_kwargs)
    except DataError as err:
        return [str(err)]
    if not records:
        return [f"{root}: the metadata lists no clips for layout '{layout}'"]
    problems: list[str] = []
    for rec in tqdm(records, desc=f"check {layout}", disable=not progress, unit="frame"):
        try:
            image = read_image(rec.image)
            read_mask(rec, image.shape[:2])
        except DataError as err:
            problems.append(str(err))
        try:
            read_audio_segment(rec, None)
        except DataError as err:
            problems.append(str(err))
    # A missing wav is named once, not once per frame that hears it.
    return list(dict.fromkeys(problems))


def world_classes(root: str | Path) -> list[str]:
    """Class names: a composed world's ``world.json``, else the sorted categories of the S4 training
    clips under ``root`` (AVSBench)."""
    path = Path(root) / "world.json"
    if path.exists():
        return read_json(path)["classes"]
    return sorted({r.category for r in AVSDataset(root, "s4", "train").records})


def world_frame_size(root: str | Path) -> int:
    """The side in pixels of a composed world's frames (the size its sources' boxes are given in)."""
    path = Path(root) / "world.json"
    if not path.exists():
        raise ValueError(f"{root} has no world.json: only a composed world records its frame size and sources")
    return int(read_json(path)["config"]["size"])
