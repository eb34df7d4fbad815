"""Where each file of a dataset layout lives: the one place that spells AVSBench's, AVSS's and
VPO's on-disk paths. The loaders (``avs_lib.data.datasets``) read these paths and the world writer
(``avs_lib.world.write``) writes to them, so the two cannot drift apart.

Frames are numbered from 0 here (``t``); AVSBench's file names count from 1.
"""
from __future__ import annotations

from pathlib import Path

# the layouts whose masks hold class indices (semantic); s4 and ms3 hold binary masks
SEMANTIC_LAYOUTS = ("avss", "avss-ddeseg", "vpo")

# metadata tables and the world's sources sidecars, relative to a layout's root
METADATA = {"s4": Path("Single-source") / "s4_meta_data.csv", "ms3": Path("Multi-sources") / "ms3_meta_data.csv",
            "avss": Path("metadata.csv"), "avss-ddeseg": Path("metadata_w_silent.csv")}
SOURCES = {"s4": Path("Single-source") / "s4_sources.jsonl", "ms3": Path("Multi-sources") / "ms3_sources.jsonl",
           "avss": Path("sources.jsonl")}


def vpo_metadata(vpo_subset: str) -> Path:
    return Path(f"vpo_{vpo_subset}_data_stereo.csv")


def vpo_sources(vpo_subset: str) -> Path:
    return Path(f"vpo_{vpo_subset}_sources.jsonl")


def s4_files(root: Path, split: str, category: str, name: str, t: int) -> dict[str, Path]:
    base = root / "Single-source" / "s4_data"
    return {"frame": base / "visual_frames" / split / category / name / f"{name}_{t + 1}.png",
            "mask": base / "gt_masks" / split / category / name / f"{name}_{t + 1}.png",
            "wav": base / "audio_wav" / split / category / f"{name}.wav",
            "log_mel": base / "audio_log_mel" / split / category / f"{name}.pkl"}


def ms3_files(root: Path, split: str, name: str, t: int) -> dict[str, Path]:
    base = root / "Multi-sources" / "ms3_data"
    return {"frame": base / "visual_frames" / name / f"{name}.mp4_{t + 1}.png",  # no split folder, as AVSBench
            "mask": base / "gt_masks" / split / name / f"{name}_{t + 1}.png",
            "wav": base / "audio_wav" / split / f"{name}.wav",
            "log_mel": base / "audio_log_mel" / split / f"{name}.pkl"}


def avss_files(root: Path, label: str, uid: str, t: int) -> dict[str, Path]:
    base = root / label / uid
    return {"frame": base / "frames" / f"{t}.jpg", "mask": base / "labels_rgb" / f"{t}.png", "wav": base / "audio.wav"}


def vpo_files(root: Path, category: str, img_id: int, ann_ids: list[int], vgg_file: str) -> dict:
    return {"frame": root / "data" / category / f"{img_id:012d}.jpg",
            "masks": [root / "mask" / category / f"{img_id:012d}_{a:012d}.png" for a in ann_ids],
            "wav": root / "VGGSound" / "audios" / f"{vgg_file}.wav"}
