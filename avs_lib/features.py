"""Features: what a training run needs before its first step, computed once and cached.

``prepare(config)`` returns them all (``Prepared``); the pieces:

* ``prepare_audio_encoder``: the frozen audio encoder. For a composed world, the small encoder is
  pretrained on the world's own stream of mixtures (``avs_lib.pretrain``: multi-label, 1-3 sources,
  held-out members excluded) and cached under ``<cache>/``; for a dataset without ``world.json``
  (AVSBench) it is trained on the S4 training clips.
* ``load_frames``: every frame of a split, resized, with its mask and its audio embedding F_a,
  held in memory as tensors (``FrameSet``). Embeddings go through ``EmbeddingCache``.
* ``build_world_memory``: the semantic memory from the single-source training embeddings (S4 train
  frames whose clip has exactly one sounding source, where the world records its sources), or
  ``load_memory_file``: a memory given by ``memory_file`` (a saved ``.npz`` or DDESeg's released bank).

Relative data paths are read from the repository root (``avs_lib.paths``), so a notebook's kernel
in ``notebooks/`` reads the same world as ``avs`` run from the root.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from avs_lib.audio import vggish_examples
from avs_lib.cache import EmbeddingCache, data_identity
from avs_lib.config import ConfigError
from avs_lib.files import read_json
from avs_lib.data.datasets import AVSDataset, load_sources, read_audio_segment, read_image, read_mask
from avs_lib.data.transforms import resize_frame
from avs_lib.memory import SemanticMemory, build_semantic_memory, load_memory, save_memory
from avs_lib.models.audio_encoders import (PrecomputedEmbeddings, SmallAudioEncoder, audio_encoder_from_blob,
                                           read_audio_encoder_file, save_audio_encoder, train_small_audio_encoder)

SEMANTIC_LAYOUTS = ("avss", "avss-ddeseg", "vpo")


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


class FileAudioEncoder(torch.nn.Module):
    """Wraps an encoder of log-mel examples loaded from a local file (``vggish:/path/vggish.pth``)."""

    def __init__(self, spec: str):
        super().__init__()
        from avs_lib.models.audio_encoders import load_htsat, load_vggish

        kind, _, path = spec.partition(":")
        if kind == "vggish":
            self.net = load_vggish(path)
        elif kind == "htsat":
            self.net = load_htsat(path)
        else:
            raise ValueError(f"audio_encoder {spec!r}: use 'small', 'vggish:PATH', 'htsat:PATH' or 'precomputed:DIR'")
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        self.identifier = f"{kind}-{digest}"

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.net(log_mel)


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

    def classes_of(self, record: dict) -> list[int]:
        """Class indices the oracle reports for one clip's source record."""
        heard = self.spec == "oracle-heard"
        return sorted({s["class_index"] for s in record["sources"] if s["sounding"] and (heard or s["on_screen"])})

    def embed(self, dataset: AVSDataset) -> np.ndarray:
        """[N, C] float32: one row per record of ``dataset``."""
        sources = load_sources(dataset.root, dataset.layout,
                               **{k: v for k, v in dataset.layout_kwargs.items() if k == "vpo_subset"})
        if not sources:
            raise ConfigError(f"audio_encoder={self.spec}: {dataset.root} records no true sources for layout "
                              f"{dataset.layout!r}; the oracle needs them (composed worlds write them)")
        rows = np.zeros((len(dataset.records), len(self.classes)), np.float32)
        for i, record in enumerate(dataset.records):
            if record.clip not in sources:
                raise ConfigError(f"audio_encoder={self.spec}: clip {record.clip} has no line in the sources of "
                                  f"{dataset.root} ({dataset.layout}); rebuild the world")
            rows[i, self.classes_of(sources[record.clip])] = 1.0
            seed = int.from_bytes(hashlib.sha256(f"{record.clip}/{record.frame}".encode()).digest()[:8], "little")
            rows[i] += self.jitter * np.random.default_rng(seed).standard_normal(len(self.classes)).astype(np.float32)
        return rows


def audio_encoder_from_spec(spec: str, root: str | Path, cache_dir: str | Path, dim: int, epochs: int,
                            progress: bool = False):
    """(encoder, class names, encoder id) for ``spec``: 'small' trains the world's encoder; 'oracle'
    and 'oracle-heard' read the world's true sources (``OracleAudio``; their size is the number of
    classes, whatever ``dim`` says)."""
    if spec in ORACLE_SPECS:
        oracle = OracleAudio(spec, root)
        return oracle, oracle.classes, oracle.identifier
    if spec == "small":
        return prepare_audio_encoder(root, cache_dir, dim, epochs, seed=0, progress=progress)
    if spec.startswith("precomputed:"):
        folder = spec.split(":", 1)[1]
        return PrecomputedEmbeddings(folder), world_classes(root), f"precomputed-{Path(folder).resolve()}"
    if spec.startswith("htsat:") or spec == "birdnet":  # waveform encoders: embedded per clip into the cache
        from avs_lib.embed import OnDemandEmbeddings

        embeddings = OnDemandEmbeddings(spec, root, cache_dir)
        return embeddings, world_classes(root), embeddings.identifier
    encoder = FileAudioEncoder(spec).eval()
    return encoder, world_classes(root), encoder.identifier


def _log_mel(record) -> np.ndarray:
    return vggish_examples(read_audio_segment(record, 16000))[0]  # [96, 64], the first 0.96 s of the frame


def frame_log_mels(dataset: AVSDataset, progress: bool = False) -> np.ndarray:
    return np.stack([_log_mel(r) for r in tqdm(dataset.records, desc=f"log-mel {dataset.layout}/{dataset.split}",
                                               disable=not progress, leave=False)])


def encoder_id(model: torch.nn.Module) -> str:
    buffer = io.BytesIO()
    for name, tensor in sorted(model.state_dict().items()):
        buffer.write(name.encode())
        buffer.write(tensor.detach().cpu().numpy().tobytes())
    return "small-" + hashlib.sha256(buffer.getvalue()).hexdigest()[:16]


def prepare_audio_encoder(root: str | Path, cache_dir: str | Path, dim: int = 128, epochs: int = 15, seed: int = 0,
                          progress: bool = False) -> tuple[SmallAudioEncoder, list[str], str]:
    """The world's small audio encoder, trained once and reused from ``cache_dir``.

    A composed world (``root/world.json``): pretrained on the world's stream of mixtures for
    ``epochs x STEPS_PER_EPOCH`` batches (``avs_lib.pretrain``). Other roots (AVSBench): trained
    with cross-entropy on the S4 training clips for ``epochs`` epochs.
    Returns (encoder, class names, encoder id); the id changes with the weights and keys the cache."""
    if (Path(root) / "world.json").exists():
        from avs_lib.pretrain import STEPS_PER_EPOCH, PretrainConfig, pretrained_encoder

        config = PretrainConfig(steps=epochs * STEPS_PER_EPOCH, dim=dim, seed=seed)
        encoder, classes, _ = pretrained_encoder(root, cache_dir, config, progress=progress)
        return encoder, classes, encoder_id(encoder)
    classes = world_classes(root)
    path = Path(cache_dir) / f"audio_encoder_d{dim}_e{epochs}_s{seed}.pt"
    inputs = data_identity(root)
    if path.exists():
        blob = read_audio_encoder_file(path)
        if blob["meta"].get("inputs") == inputs:
            encoder = audio_encoder_from_blob(blob)
            return encoder, blob["class_names"], encoder_id(encoder)
        _note_rebuild(path, root)
    s4 = AVSDataset(root, "s4", "train")
    examples = frame_log_mels(s4, progress)
    labels = np.array([classes.index(r.category) for r in s4.records])
    encoder, history = train_small_audio_encoder(examples, labels, len(classes), dim=dim, epochs=epochs, seed=seed,
                                                 progress=progress)
    save_audio_encoder(encoder, path, classes, {"history": history, "root": str(root), "inputs": inputs})
    return encoder, classes, encoder_id(encoder)


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


def load_frames(root: str | Path, layout: str, split: str, image_size: int, encoder: torch.nn.Module,
                encoder_id: str, cache_dir: str | Path, progress: bool = False, **layout_kwargs) -> FrameSet:
    dataset = AVSDataset(root, layout, split, **layout_kwargs)
    images, masks, valid = [], [], []
    for i in tqdm(range(len(dataset)), desc=f"frames {layout}/{split}", disable=not progress, leave=False):
        rec = dataset.records[i]
        image = read_image(rec.image)
        mask = read_mask(rec, image.shape[:2])
        image, mask = resize_frame(image, mask.astype(np.uint8), image_size)
        images.append(image.transpose(2, 0, 1))
        masks.append(mask)
        valid.append(bool(rec.masks))
    audio = frame_embeddings(dataset, encoder, encoder_id, cache_dir, progress)
    return FrameSet(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks).astype(np.int64)),
                    torch.tensor(valid), torch.from_numpy(np.asarray(audio, dtype=np.float32)),
                    [r.clip for r in dataset.records], [r.frame for r in dataset.records],
                    [r.category for r in dataset.records], load_sources(root, layout, **layout_kwargs))


def _note_rebuild(path: Path, root: str | Path) -> None:
    """Say, in one line, that a cache file built from other data is rebuilt (it is overwritten atomically)."""
    print(f"note: {path} was built from another version of {root} (its world.json or metadata tables changed since); "
          "building it again", file=sys.stderr, flush=True)


def build_world_memory(root: str | Path, encoder: torch.nn.Module, encoder_id: str, cache_dir: str | Path,
                       k: int = 3, m: int = 5, seed: int = 0, progress: bool = False) -> SemanticMemory:
    """Eq. 2-4 on the single-source S4 training embeddings; saved to and reused from
    ``<cache>/memory_*.npz``. Where the world records its sources, frames of clips with more than
    one sounding source (an s4 off-screen source, ``WorldConfig.s4_offscreen``) are left out: Eq. 2-4
    assume single-source features."""
    classes = world_classes(root)
    safe_id = hashlib.sha256(encoder_id.encode()).hexdigest()[:16] if "/" in encoder_id else encoder_id
    path = Path(cache_dir) / f"memory_single_{safe_id}_k{k}_m{m}_s{seed}.npz"
    inputs = data_identity(root)
    if path.exists():
        # the name says which encoder, k, m and seed; the header says which data (a world rebuilt in
        # place keeps its cache folder and this name)
        if load_memory(path).meta.get("inputs") == inputs:
            return load_memory(path, class_names=classes)
        _note_rebuild(path, root)
    s4 = AVSDataset(root, "s4", "train")
    features = frame_embeddings(s4, encoder, encoder_id, cache_dir, progress)
    records, sources = s4.records, load_sources(root, "s4")
    if sources:
        single = np.array([sum(s["sounding"] for s in sources[r.clip]["sources"]) == 1 for r in records])
        features = np.asarray(features)[single]
        records = [r for r, keep in zip(records, single) if keep]
    labels = torch.tensor([classes.index(r.category) for r in records])
    memory = build_semantic_memory(torch.from_numpy(np.asarray(features)), labels, k=k, m=m, seed=seed,
                                   class_names=classes, encoder=encoder_id)
    memory.meta["inputs"] = inputs
    save_memory(memory, path)
    return memory


def load_memory_file(path: str | Path, config) -> SemanticMemory:
    """The memory named by ``config.memory_file``, verified against the config before any data work:
    its feature size must be ``audio_dim`` and its (k, m) the config's k and m (the model takes its
    sizes from the memory, so a silent difference would change the model). DDESeg's released bank
    (``.npy``) has k = 1 and its m (5 in ``1s_k5_feabank.npy``): train with ``k=1 m=5``. The classes
    are checked by ``load_memory`` once the encoder has named them (``prepare``)."""
    memory = load_memory(path, dim=config.audio_dim)
    if (memory.k, memory.m) != (config.k, config.m):
        raise ConfigError(f"memory_file={path} holds a memory with k={memory.k}, m={memory.m}, but the config says "
                          f"k={config.k}, m={config.m}; set k={memory.k} m={memory.m} (the model takes its sizes from "
                          "the memory)")
    return memory


@dataclass
class Prepared:
    train: FrameSet
    val: FrameSet
    test: FrameSet
    memory: SemanticMemory
    num_classes: int


def prepare(config, progress: bool = False) -> Prepared:
    """The frozen audio encoder, the memory (config.k, config.m) and the three splits of
    ``config.layout`` for a ``TrainConfig``, from the caches where they exist."""
    from avs_lib.paths import workbench_path

    data_root = workbench_path(config.data_root)
    cache = workbench_path(config.cache_dir) if config.cache_dir else data_root / "cache"
    memory_root = workbench_path(config.memory_root) if config.memory_root else data_root
    memory_file = workbench_path(config.memory_file) if config.memory_file else None
    given = load_memory_file(memory_file, config) if memory_file else None  # checked before the encoder's minutes
    encoder, classes, encoder_id = audio_encoder_from_spec(config.audio_encoder, memory_root, cache, config.audio_dim,
                                                           config.encoder_epochs, progress=progress)
    if given is not None:  # read again, now with the data's classes (a memory file is small)
        memory = load_memory(memory_file, class_names=classes, dim=config.audio_dim,
                             drop_background="background" not in classes)
    else:
        memory = build_world_memory(memory_root, encoder, encoder_id, cache, config.k, config.m, seed=0,
                                    progress=progress)
    from avs_lib.data.loader import split_frames  # held in memory or streamed, by size (config.loader)

    sets = [split_frames(config, data_root, split, encoder, encoder_id, cache, progress) for split in ("train", "val", "test")]
    num_classes = len(classes) + 1 if config.layout in SEMANTIC_LAYOUTS else 1
    return Prepared(*sets, memory=memory, num_classes=num_classes)
