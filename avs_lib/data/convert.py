"""Convert an AVSBench-Semantic root into DDESeg's re-organised layout.

DDESeg's release keeps one CSV row per second (``uid = <clip>_<second>``), a 1 s wav per frame
under ``audios/``, class-index PNGs under ``labels_semantic/`` and a ``label2idx.json`` whose
indices start at 1 (background 1, so a mask value is its index minus one).
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from avs_lib.core.errors import DataError
from avs_lib.core.files import read_json
from avs_lib.data.datasets import avss_records, read_audio_segment, read_image, read_mask


def avss_to_ddeseg(src: str | Path, dst: str | Path) -> int:
    """Write ``dst`` in DDESeg's layout from the AVSS root ``src``; returns the number of frames."""
    src, dst = Path(src), Path(dst)
    records = avss_records(src)
    rows = []
    for rec in records:
        base = dst / rec.category / rec.clip
        (base / "frames").mkdir(parents=True, exist_ok=True)
        (base / "labels_semantic").mkdir(parents=True, exist_ok=True)
        (base / "audios").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rec.image, base / "frames" / f"{rec.frame}.jpg")
        mask = read_mask(rec, read_image(rec.image).shape[:2])
        Image.fromarray(mask.astype(np.uint8), mode="L").save(base / "labels_semantic" / f"{rec.frame}.png")
        info = soundfile.info(str(rec.audio))
        soundfile.write(str(base / "audios" / f"{rec.frame}.wav"), read_audio_segment(rec, None), info.samplerate, subtype="PCM_16")
        rows.append([rec.clip, f"{rec.clip}_{rec.frame}", rec.split, rec.category])
    with open(dst / "metadata_w_silent.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["vid", "uid", "split", "subset"])
        writer.writerows(rows)
    label_file = src / "label2idx.json"
    if not label_file.exists():
        raise DataError(f"{label_file}: not found; AVSS roots written by `avs world` have one")
    zero_based = read_json(label_file)
    (dst / "label2idx.json").write_text(json.dumps({k: v + 1 for k, v in zero_based.items()}, indent=1) + "\n")
    return len(rows)
