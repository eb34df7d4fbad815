"""``avs embed``: the audio embeddings of a dataset, one ``<out>/<clip>.npy`` [frames, d] per clip,
the layout ``audio_encoder=precomputed:DIR`` reads (``PrecomputedEmbeddings``; row t = frame t).

Encoders (``avs_lib.audio.registry.frame_encoder``):

* ``small``: the world's own encoder (trained once and cached, as ``avs train`` does), and
* ``vggish:PATH``: over the first 0.96 s VGGish log-mel example of each frame's second
  (exactly the input ``avs train`` gives them, so the files equal what training computes);
* ``htsat:PATH``: HTS-AT's ``latent_output`` (768-d) of each frame's own second at 32 kHz
  (``avs_lib.audio.htsat``; DDESeg's cut);
* ``birdnet``: BirdNET V2.4's 1024-d embedding of a 3 s window centred on each frame, at 48 kHz
  (``avs_lib.audio.birdnet``; optional, non-commercial licence).

Resumable: a clip whose file exists is skipped; each file is written to a temporary name and
renamed (``atomic_write``), so an interrupted run never leaves half a file. ``embeddings.json`` in
the folder names the encoder; a second run with another encoder into the same folder is refused.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from avs_lib.audio.clips import clip_records, clip_segments
from avs_lib.core.cache import data_identity
from avs_lib.core.errors import DataError
from avs_lib.core.files import atomic_write, atomic_write_text

HEADER = "embeddings.json"


@dataclass
class EmbedSummary:
    out: str
    encoder: str
    dim: int
    clips: int
    written: int
    skipped: int
    frames: int
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _check_header(out: Path, encoder, inputs: str, root: Path) -> dict:
    """The folder's header (empty when new); another encoder's folder, or one embedded from another
    version of ``root`` (``inputs``: its ``data_identity``), is an error."""
    path = out / HEADER
    header = {}
    if path.exists():
        try:
            header = json.loads(path.read_text())
        except ValueError:
            raise ValueError(f"{path} is damaged; delete it (and the folder's .npy files if unsure which encoder "
                             "wrote them) and run again") from None
        if header.get("encoder") != encoder.identifier:
            raise ValueError(f"{out} holds embeddings of encoder {header.get('encoder')!r}, not {encoder.identifier!r}; "
                             "choose another --out folder (mixing encoders in one folder would be silent)")
        if header.get("inputs", inputs) != inputs:
            raise ValueError(f"{out} holds embeddings of another version of {root} (its world.json or metadata "
                             f"tables changed since they were written); delete {out} or choose another --out folder "
                             "(the clips there would be skipped as done)")
    return header


def embed_dataset(root: str | Path, layouts: list[str] | str, encoder, out: str | Path, progress: bool = True,
                  clips: list[str] | None = None, vpo_subset: str = "msmi",
                  splits: list[str] | str | None = None) -> EmbedSummary:
    """Write ``out/<clip>.npy`` [frames, d] for every clip of ``layouts`` under ``root`` (``splits``,
    default all), skipping clips already written. ``clips``: only these (default: all)."""
    out = Path(out)
    layouts = [l.strip() for l in layouts.split(",")] if isinstance(layouts, str) else list(layouts)
    out.mkdir(parents=True, exist_ok=True)
    inputs = data_identity(root)
    before = _check_header(out, encoder, inputs, Path(root))
    atomic_write_text(out / HEADER, json.dumps({
        "encoder": encoder.identifier, "dim": encoder.dim, "sample_rate": encoder.sample_rate, "inputs": inputs,
        "root": str(Path(root).resolve()), "layouts": sorted(set(before.get("layouts", [])) | set(layouts)), "format": "one <clip>.npy [frames, dim] float32 per clip",
    }, indent=1))
    splits = [x.strip() for x in splits.split(",")] if isinstance(splits, str) else splits
    table = clip_records(root, layouts, vpo_subset, splits)
    names = sorted(table) if clips is None else list(clips)
    start, written, skipped, frames = time.perf_counter(), 0, 0, 0
    for clip in tqdm(names, desc=f"embed {encoder.identifier}", disable=not progress, unit="clip"):
        target = out / f"{clip}.npy"
        if target.exists():
            skipped += 1
            continue
        if clip not in table:
            raise DataError(f"clip {clip!r} is not in layouts {layouts} under {root}")
        array = np.asarray(encoder.embed_frames(clip_segments(table[clip], encoder.sample_rate)), dtype=np.float32)
        atomic_write(target, lambda fh: np.save(fh, array))
        written, frames = written + 1, frames + len(array)
    return EmbedSummary(str(out), encoder.identifier, encoder.dim, len(names), written, skipped, frames,
                        round(time.perf_counter() - start, 2))


def forget_other_data(folder: Path, root: str | Path) -> None:
    """A cache folder of per-clip embeddings holds clips of one version of ``root`` (its
    ``data_identity``, in ``inputs.json``): embeddings of another version (a world rebuilt in place
    names its clips the same) are deleted, said in one line, and embedded again on demand."""
    inputs, record = data_identity(root), folder / "inputs.json"
    try:
        recorded = json.loads(record.read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        recorded = None  # a folder from before the record: which data it holds is unknown
    if recorded == inputs:
        return
    stale = sorted(folder.glob("*.npy"))
    if stale:
        print(f"note: {folder} held {len(stale)} clip embedding(s) of another version of {root} (or of unknown "
              "data); deleting them: they are embedded again as needed", file=sys.stderr, flush=True)
        for path in stale:
            path.unlink()
    atomic_write_text(record, json.dumps({"inputs": inputs, "root": str(Path(root).resolve())}))


