"""``avs embed``: the audio embeddings of a dataset, one ``<out>/<clip>.npy`` [frames, d] per clip,
the layout ``audio_encoder=precomputed:DIR`` reads (``PrecomputedEmbeddings``; row t = frame t).

Encoders (``frame_encoder``):

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
import torch
from tqdm.auto import tqdm

from avs_lib.core.cache import data_identity
from avs_lib.data.datasets import LAYOUTS, DataError, FrameRecord, layout_records, read_audio_segment
from avs_lib.data.layouts import METADATA, vpo_metadata
from avs_lib.core.files import atomic_write, atomic_write_text, read_json
from avs_lib.audio.encoders import PrecomputedEmbeddings

HEADER = "embeddings.json"


class LogMelEncoder:
    """A torch encoder of VGGish log-mel examples [N, 96, 64] (``small``, ``vggish:PATH``) as a frame encoder."""

    sample_rate = 16000

    def __init__(self, module: torch.nn.Module, identifier: str, device: str | torch.device = "cpu"):
        self.module, self.identifier, self.device = module.to(device).eval(), identifier, torch.device(device)
        with torch.no_grad():
            self.dim = int(self.module(torch.zeros(1, 96, 64, device=self.device)).shape[-1])

    @torch.no_grad()
    def embed_frames(self, segments: list[np.ndarray]) -> np.ndarray:
        from avs_lib.audio.frontends import vggish_examples

        # the first 0.96 s example of the frame's second: the input avs train gives these encoders
        log_mels = np.stack([vggish_examples(s, self.sample_rate)[0] for s in segments])
        return self.module(torch.from_numpy(log_mels).to(self.device)).cpu().numpy().astype(np.float32)


def frame_encoder(spec: str, root: str | Path | None = None, cache_dir: str | Path | None = None,
                  device: str = "cpu", audio_dim: int = 128, encoder_epochs: int = 15, progress: bool = False):
    """An object with ``identifier``, ``dim``, ``sample_rate`` and ``embed_frames(segments)`` for ``spec``:
    ``small``, ``vggish:PATH``, ``htsat:PATH`` or ``birdnet``."""
    kind, _, path = spec.partition(":")
    if kind == "small":
        from avs_lib.data.frames import prepare_audio_encoder

        if root is None:
            raise ValueError("the 'small' encoder is trained on a world: give the dataset root")
        cache = Path(cache_dir) if cache_dir else Path(root) / "cache"
        module, _, identifier = prepare_audio_encoder(root, cache, audio_dim, encoder_epochs, seed=0, progress=progress)
        return LogMelEncoder(module, identifier, device)
    if kind == "vggish" and path:
        from avs_lib.data.frames import FileAudioEncoder

        module = FileAudioEncoder(spec)
        return LogMelEncoder(module, module.identifier, device)
    if kind == "htsat" and path:
        from avs_lib.audio.encoders import load_htsat
        from avs_lib.audio.htsat import HTSATEncoder

        if not Path(path).is_file():
            load_htsat(path)  # raises the missing-file message that says what to download
        return HTSATEncoder(path, device)
    if kind == "birdnet" and not path:
        from avs_lib.audio.birdnet import BirdNETEncoder

        return BirdNETEncoder(device)
    raise ValueError(f"encoder {spec!r}: use small, vggish:PATH, htsat:PATH or birdnet")


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


def _forget_other_data(folder: Path, root: str | Path) -> None:
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


class OnDemandEmbeddings(PrecomputedEmbeddings):
    """``audio_encoder=htsat:PATH`` or ``birdnet`` in ``avs train``: a ``PrecomputedEmbeddings`` over
    ``<cache>/embeddings/<encoder id>/`` that embeds a clip the first time it is asked for, from the
    layouts found under ``root`` (the same files ``avs embed`` writes)."""

    def __init__(self, spec: str, root: str | Path, cache_dir: str | Path, device: str = "cpu"):
        self.encoder = frame_encoder(spec, root, cache_dir, device)
        self.identifier = self.encoder.identifier
        folder = Path(cache_dir) / "embeddings" / self.identifier
        folder.mkdir(parents=True, exist_ok=True)
        _forget_other_data(folder, root)
        super().__init__(folder)
        self.source_root, self._table = Path(root), None

    def __call__(self, clip: str) -> np.ndarray:
        if not (self.root / f"{clip}.npy").exists():
            if self._table is None:
                self._table = clip_records(self.source_root, present_layouts(self.source_root))
            if clip not in self._table:
                raise FileNotFoundError(f"clip {clip!r} is not under {self.source_root}; run `avs embed ROOT --layout L "
                                        f"--encoder ... --out DIR` for its dataset and train with precomputed:DIR")
            segments = clip_segments(self._table[clip], self.encoder.sample_rate)
            array = np.asarray(self.encoder.embed_frames(segments), dtype=np.float32)
            atomic_write(self.root / f"{clip}.npy", lambda fh: np.save(fh, array))
        return super().__call__(clip)


# ----------------------------------------------------------------------------- how good are the embeddings?
def split_clips(root: str | Path, layout: str, split: str) -> list[str]:
    return sorted({r.clip for r in layout_records(root, layout, split)})


def encoder_quality(root: str | Path, folder: str | Path, k: int = 5) -> dict:
    """For a composed world (known sources) and a folder of embeddings (``avs embed``): the Eq. 2
    centroids from the single-source s4 training frames, then nearest-centroid accuracy on the
    single-source s4 test frames and the recall at K of the sounding classes among the K nearest
    centroids on the MS3 test frames (derivation's Eq. 5 candidates), with ``avs_lib.audio.quality``.
    Needs the files of the s4 train/test and MS3 test clips."""
    from avs_lib.audio.quality import FrameAudio, mixture_recall, nearest_centroid
    from avs_lib.data.datasets import AVSDataset, load_sources
    from avs_lib.data.frames import world_classes

    embeddings = PrecomputedEmbeddings(folder)
    classes = world_classes(root)

    def frames(layout: str, split: str) -> tuple[torch.Tensor, FrameAudio]:
        dataset, sources = AVSDataset(root, layout, split), load_sources(root, layout)
        if not sources:
            raise DataError(f"{root}: no sources sidecar for {layout}; encoder_quality needs a composed world")
        rows = torch.from_numpy(np.stack([embeddings(r.clip)[r.frame] for r in dataset.records]))
        sounding = [[(s["class_index"], s["member"]) for s in sources[r.clip]["sources"] if s["sounding"]]
                    for r in dataset.records]
        return rows, FrameAudio(np.empty(0), [r.clip for r in dataset.records], [r.frame for r in dataset.records],
                                sounding, dataset)

    train_x, train = frames("s4", "train")
    single = [i for i, s in enumerate(train.sounding) if len(s) == 1]
    labels = torch.tensor([train.sounding[i][0][0] for i in single])
    counts = torch.bincount(labels, minlength=len(classes))
    if (counts == 0).any():
        raise DataError(f"classes without single-source s4 training frames: {[classes[c] for c in torch.where(counts == 0)[0]]}")
    centroids = torch.zeros(len(classes), train_x.shape[1]).index_add_(0, labels, train_x[single]) / counts[:, None]
    s4_x, s4 = frames("s4", "test")
    ms3_x, ms3 = frames("ms3", "test")
    header = read_json(Path(folder) / HEADER) if (Path(folder) / HEADER).exists() else {}
    return {"encoder": header.get("encoder"), "dim": int(train_x.shape[1]), "classes": len(classes),
            "centroid_frames": len(single), "s4_nearest_centroid": nearest_centroid(s4_x, s4, centroids),
            "ms3_recall": mixture_recall(ms3_x, None, ms3, centroids, k)}
