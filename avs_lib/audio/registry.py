"""The one audio-encoder registry: an ``audio_encoder`` spec (small, vggish:PATH, htsat:PATH, birdnet, precomputed:DIR, oracle, oracle-heard) to the encoder and the embeddings it gives.

``parse_spec`` is the only place a spec is read. Two callers ask for an encoder:

* ``audio_encoder_from_spec`` (``avs train``, ``prepare``): (encoder, class names, encoder id).
  ``small`` and ``vggish:PATH`` are torch modules over VGGish log-mel examples (embedded through
  the embedding cache, ``frame_embeddings``); ``htsat:PATH`` and ``birdnet`` take waveforms and are
  embedded clip by clip into the cache (``OnDemandEmbeddings``); ``precomputed:DIR`` reads the
  files ``avs embed`` wrote; ``oracle`` / ``oracle-heard`` read a composed world's true sources
  (``OracleAudio``).
* ``frame_encoder`` (``avs embed``): an object that embeds each frame's second of audio, for the
  encoders that compute (``small``, ``vggish:PATH``, ``htsat:PATH``, ``birdnet``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avs_lib.analysis.truth import sounds_in
from avs_lib.audio.birdnet import BirdNETEncoder
from avs_lib.audio.clips import clip_records, clip_segments, frame_log_mels, present_layouts
from avs_lib.audio.embed import forget_other_data
from avs_lib.audio.encoders import PrecomputedEmbeddings, load_htsat, load_vggish
from avs_lib.audio.frontends import vggish_examples
from avs_lib.audio.htsat import HTSATEncoder
from avs_lib.audio.pretrain import prepare_audio_encoder
from avs_lib.core.cache import EmbeddingCache
from avs_lib.core.errors import ConfigError
from avs_lib.core.files import atomic_write
from avs_lib.data.datasets import AVSDataset, load_sources, world_classes


# ----------------------------------------------------------------------------- specs
SPEC_FORMS = {"small": "small", "vggish": "vggish:PATH", "htsat": "htsat:PATH", "birdnet": "birdnet",
              "precomputed": "precomputed:DIR", "oracle": "oracle", "oracle-heard": "oracle-heard"}
TAKES_PATH = ("vggish", "htsat", "precomputed")  # the kinds whose spec names a file or folder
LOG_MEL_KINDS = ("small", "vggish")  # torch modules over VGGish log-mel examples [N, 96, 64]
WAVEFORM_KINDS = ("htsat", "birdnet")  # encoders of each frame's waveform (their own front ends)
FRAME_ENCODER_KINDS = LOG_MEL_KINDS + WAVEFORM_KINDS  # what ``avs embed`` can compute


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed ``audio_encoder`` spec: its ``kind`` (a key of ``SPEC_FORMS``) and ``path`` ("" when
    the kind takes none)."""

    kind: str
    path: str = ""


def parse_spec(spec: str, kinds: tuple[str, ...] = tuple(SPEC_FORMS), what: str = "audio_encoder") -> EncoderSpec:
    """``spec`` as an ``EncoderSpec``; a spec of another kind than ``kinds``, or without the path
    its kind needs (or with one it does not take), is a ValueError that lists the accepted forms."""
    kind, _, path = spec.partition(":")
    if kind in kinds and bool(path) == (kind in TAKES_PATH):
        return EncoderSpec(kind, path)
    forms = [SPEC_FORMS[k] for k in kinds]
    listed = f"{', '.join(forms[:-1])} or {forms[-1]}" if len(forms) > 1 else forms[0]
    raise ValueError(f"{what} {spec!r}: use {listed}")


ORACLE_SPECS = {"oracle": "on screen", "oracle-heard": "heard"}


class OracleAudio:
    """An audio input that knows the answer: for each frame the multi-hot vector [C] of the classes
    that sound on screen (``oracle``, the headroom's ceiling), or of every class heard, on screen or
    off (``oracle-heard``: a perfect derivation with nothing eliminated), read from a composed world's
    true sources (``*_sources.jsonl``). Outside DDESeg: an instrument that bounds what any audio
    encoder could give a model on this data.

    A deterministic Gaussian jitter (std ``jitter``, seeded by the clip's name and frame) keeps the
    single-source features of a class from being identical, so that Eq. 3's sub-clusters exist.
    Real datasets (AVSBench) record no sources: the oracle is refused there; on AVSS the classes in
    the frame's semantic mask would give the on-screen oracle, which this workbench does not build."""

    def __init__(self, spec: str, root: str | Path, jitter: float = 1e-3):
        if spec not in ORACLE_SPECS:
            raise ConfigError(f"audio_encoder={spec!r}: the oracles are {', '.join(ORACLE_SPECS)}")
        self.spec, self.root, self.jitter = spec, Path(root), jitter
        if not (self.root / "world.json").exists():
            raise ConfigError(f"audio_encoder={spec}: {self.root} has no world.json, so no true sources: the oracle "
                              "needs the sources a composed world records beside its metadata (*_sources.jsonl); "
                              "AVSBench and VPO record none. Use a real encoder there (small, htsat:PATH, "
                              "precomputed:DIR) or zero_audio=true for the floor")
        self.classes = world_classes(self.root)
        digest = hashlib.sha256(json.dumps(self.classes).encode())
        for path in sorted(self.root.rglob("*sources.jsonl")):
            digest.update(path.read_bytes())
        self.identifier = f"{spec}-{digest.hexdigest()[:16]}"

    def classes_of(self, record: dict, frame: int | None = None) -> list[int]:
        """Class indices the oracle reports for frame ``frame`` of one clip's source record (a source
        that pauses in that frame is not reported; ``None``: every frame's)."""
        heard = self.spec == "oracle-heard"
        return sorted({s["class_index"] for s in record["sources"] if sounds_in(s, frame) and (heard or s["on_screen"])})

    def embed(self, dataset: AVSDataset) -> np.ndarray:
        """[N, C] float32: one row per record of ``dataset``."""
        sources = load_sources(dataset.root, dataset.layout,
                               **{k: v for k, v in dataset.layout_kwargs.items() if k == "vpo_subset"})
        if not sources:
            raise ConfigError(f"audio_encoder={self.spec}: {dataset.root} records no true sources for layout "
                              f"{dataset.layout!r}; the oracle needs them (composed worlds write them)")
        for record in dataset.records:
            if record.clip not in sources:
                raise ConfigError(f"audio_encoder={self.spec}: clip {record.clip} has no line in the sources of "
                                  f"{dataset.root} ({dataset.layout}); rebuild the world")
        return self.rows([(r.clip, r.frame, sources[r.clip]) for r in dataset.records])

    def rows(self, frames: list[tuple[str, int, dict]]) -> np.ndarray:
        """[N, C] float32 for (clip name, frame, the clip's source record) triples: the multi-hot of
        ``classes_of`` plus the jitter seeded by clip name and frame."""
        rows = np.zeros((len(frames), len(self.classes)), np.float32)
        for i, (clip, frame, record) in enumerate(frames):
            rows[i, self.classes_of(record, frame)] = 1.0
            seed = int.from_bytes(hashlib.sha256(f"{clip}/{frame}".encode()).digest()[:8], "little")
            rows[i] += self.jitter * np.random.default_rng(seed).standard_normal(len(self.classes)).astype(np.float32)
        return rows


class FileAudioEncoder(torch.nn.Module):
    """Wraps an encoder of log-mel examples loaded from a local file (``vggish:/path/vggish.pth``).
    HTS-AT takes waveforms (``htsat:PATH`` goes through ``frame_encoder``), so VGGish is the only
    file encoder of log-mels."""

    def __init__(self, spec: str):
        super().__init__()
        parsed = parse_spec(spec, ("vggish",))
        self.net = load_vggish(parsed.path)
        digest = hashlib.sha256(Path(parsed.path).read_bytes()).hexdigest()[:16]
        self.identifier = f"{parsed.kind}-{digest}"

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.net(log_mel)


def audio_encoder_from_spec(spec: str, root: str | Path, cache_dir: str | Path, dim: int, epochs: int,
                            progress: bool = False):
    """(encoder, class names, encoder id) for ``spec``: 'small' trains the world's encoder; 'oracle'
    and 'oracle-heard' read the world's true sources (``OracleAudio``; their size is the number of
    classes, whatever ``dim`` says)."""
    parsed = parse_spec(spec)
    if parsed.kind in ORACLE_SPECS:
        oracle = OracleAudio(spec, root)
        return oracle, oracle.classes, oracle.identifier
    if parsed.kind == "small":
        return prepare_audio_encoder(root, cache_dir, dim, epochs, seed=0, progress=progress)
    if parsed.kind == "precomputed":
        return PrecomputedEmbeddings(parsed.path), world_classes(root), f"precomputed-{Path(parsed.path).resolve()}"
    if parsed.kind in WAVEFORM_KINDS:  # embedded per clip into the cache
        embeddings = OnDemandEmbeddings(spec, root, cache_dir)
        return embeddings, world_classes(root), embeddings.identifier
    encoder = FileAudioEncoder(spec).eval()
    return encoder, world_classes(root), encoder.identifier


def frame_embeddings(dataset: AVSDataset, encoder, encoder_id: str, cache_dir: str | Path, progress: bool = False) -> np.ndarray:
    """F_a of every record [N, d]: row ``frame`` of the clip's file for precomputed embeddings, else
    the encoder over the frame's log-mel, through the embedding cache; the oracle's rows from the
    world's true sources."""
    if isinstance(encoder, OracleAudio):
        return encoder.embed(dataset)
    if isinstance(encoder, PrecomputedEmbeddings):
        rows = []
        for record in dataset.records:
            clip = encoder(record.clip)
            if record.frame >= len(clip):
                raise ValueError(f"embedding of clip {record.clip} has {len(clip)} rows; frame {record.frame + 1} needs more")
            rows.append(clip[record.frame])
        return np.stack(rows)
    log_mels = frame_log_mels(dataset, progress)
    cache = EmbeddingCache(Path(cache_dir) / "embeddings")
    return cache.get_or_compute(encoder_id, log_mels, lambda: embed(encoder, log_mels))


@torch.no_grad()
def embed(encoder: torch.nn.Module, log_mels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    encoder = encoder.eval()
    device = next(encoder.parameters()).device
    out = [encoder(torch.from_numpy(log_mels[i:i + batch_size]).to(device)).cpu() for i in range(0, len(log_mels), batch_size)]
    return torch.cat(out).numpy()


class LogMelEncoder:
    """A torch encoder of VGGish log-mel examples [N, 96, 64] (``small``, ``vggish:PATH``) as a frame encoder."""

    sample_rate = 16000

    def __init__(self, module: torch.nn.Module, identifier: str, device: str | torch.device = "cpu"):
        self.module, self.identifier, self.device = module.to(device).eval(), identifier, torch.device(device)
        with torch.no_grad():
            self.dim = int(self.module(torch.zeros(1, 96, 64, device=self.device)).shape[-1])

    @torch.no_grad()
    def embed_frames(self, segments: list[np.ndarray]) -> np.ndarray:
        # the first 0.96 s example of the frame's second: the input avs train gives these encoders
        log_mels = np.stack([vggish_examples(s, self.sample_rate)[0] for s in segments])
        return self.module(torch.from_numpy(log_mels).to(self.device)).cpu().numpy().astype(np.float32)


def frame_encoder(spec: str, root: str | Path | None = None, cache_dir: str | Path | None = None,
                  device: str = "cpu", audio_dim: int = 128, encoder_epochs: int = 15, progress: bool = False):
    """An object with ``identifier``, ``dim``, ``sample_rate`` and ``embed_frames(segments)`` for ``spec``:
    ``small``, ``vggish:PATH``, ``htsat:PATH`` or ``birdnet``."""
    parsed = parse_spec(spec, FRAME_ENCODER_KINDS, what="encoder")
    if parsed.kind == "small":
        if root is None:
            raise ValueError("the 'small' encoder is trained on a world: give the dataset root")
        cache = Path(cache_dir) if cache_dir else Path(root) / "cache"
        module, _, identifier = prepare_audio_encoder(root, cache, audio_dim, encoder_epochs, seed=0, progress=progress)
        return LogMelEncoder(module, identifier, device)
    if parsed.kind == "vggish":
        module = FileAudioEncoder(spec)
        return LogMelEncoder(module, module.identifier, device)
    if parsed.kind == "htsat":
        if not Path(parsed.path).is_file():
            load_htsat(parsed.path)  # raises the missing-file message that says what to download
        return HTSATEncoder(parsed.path, device)
    return BirdNETEncoder(device)


class OnDemandEmbeddings(PrecomputedEmbeddings):
    """``audio_encoder=htsat:PATH`` or ``birdnet`` in ``avs train``: a ``PrecomputedEmbeddings`` over
    ``<cache>/embeddings/<encoder id>/`` that embeds a clip the first time it is asked for, from the
    layouts found under ``root`` (the same files ``avs embed`` writes)."""

    def __init__(self, spec: str, root: str | Path, cache_dir: str | Path, device: str = "cpu"):
        self.encoder = frame_encoder(spec, root, cache_dir, device)
        self.identifier = self.encoder.identifier
        folder = Path(cache_dir) / "embeddings" / self.identifier
        folder.mkdir(parents=True, exist_ok=True)
        forget_other_data(folder, root)
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
