"""The audio of a dataset's frames and clips, read the way the encoders take it (log-mel examples, waveform segments).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from avs_lib.audio.frontends import vggish_examples
from avs_lib.core.errors import DataError
from avs_lib.data.datasets import LAYOUTS, AVSDataset, FrameRecord, layout_records, read_audio_segment
from avs_lib.data.layouts import METADATA, vpo_metadata


def _log_mel(record) -> np.ndarray:
    return vggish_examples(read_audio_segment(record, 16000))[0]  # [96, 64], the first 0.96 s of the frame


def frame_log_mels(dataset: AVSDataset, progress: bool = False) -> np.ndarray:
    return np.stack([_log_mel(r) for r in tqdm(dataset.records, desc=f"log-mel {dataset.layout}/{dataset.split}",
                                               disable=not progress, leave=False)])


def present_layouts(root: str | Path) -> list[str]:
    """The layouts whose metadata file exists under ``root`` (VPO: any of its subsets)."""
    root = Path(root)
    found = [layout for layout in LAYOUTS if layout in METADATA and (root / METADATA[layout]).exists()]
    if any((root / vpo_metadata(s)).exists() for s in ("ss", "ms", "msmi")):
        found.append("vpo")
    return found


def clip_records(root: str | Path, layouts: list[str], vpo_subset: str = "msmi",
                 splits: list[str] | None = None) -> dict[str, list[FrameRecord]]:
    """clip -> its records in frame order, over ``splits`` (default: all) of ``layouts``. A clip name
    used by two layouts for different audio files is an error (the embeddings are keyed by clip name)."""
    clips: dict[str, list[FrameRecord]] = {}
    owner: dict[str, str] = {}
    for layout in layouts:
        kwargs = {"vpo_subset": vpo_subset} if layout == "vpo" else {}
        seen: dict[str, list[FrameRecord]] = {}
        for split in splits or [None]:
            for record in layout_records(root, layout, split, **kwargs):
                seen.setdefault(record.clip, []).append(record)
        for clip, records in seen.items():
            records = sorted(records, key=lambda r: r.frame)
            if clip in clips:
                if [r.audio for r in clips[clip]] != [r.audio for r in records]:
                    raise DataError(f"clip {clip!r} is in layouts {owner[clip]} and {layout} with different audio; "
                                    "embed them into separate folders")
                continue
            clips[clip], owner[clip] = records, layout
    return clips


def clip_segments(records: list[FrameRecord], sample_rate: int) -> list[np.ndarray]:
    """Each frame's audio, for frames 0..last (a frame without a record, e.g. a second missing from
    a release, is silence, so row t stays frame t)."""
    by_frame = {r.frame: r for r in records}
    last = max(by_frame)
    length = None
    out = []
    for t in range(last + 1):
        if t in by_frame:
            wave = read_audio_segment(by_frame[t], sample_rate)
            length = length or len(wave)
            out.append(wave)
        else:
            out.append(None)
    return [w if w is not None else np.zeros(length or sample_rate, np.float32) for w in out]
