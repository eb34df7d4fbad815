"""Pretraining the world's audio encoder on the world's own "AudioSet".

DDESeg's derivation (Eq. 5) assumes a foundation model pretrained on mixtures with multi-label
targets (HTS-AT on AudioSet), which places a mixture's feature near the centres of its parts. A
composed world has no such model, so it gets the same kind of pretraining from its asset library:

* ``MixtureStream``: an unlimited stream of fresh 1 s windows, each composed on the fly with the
  world's mixing recipe (``avs_lib.world.compose``: looped recordings, 1-3 sources of distinct
  classes with random gains, an ambience bed, white noise at the world's SNR, peak scaling). Every
  multi-source window comes with its parts (each source alone over the same bed), which are also
  single-source training examples. Held-out members (``WorldConfig.holdout_members``) never enter.
* ``torch_log_mel``: the VGGish log-mel front end of ``avs_lib.audio.frontends`` in batched torch (matched to
  the numpy reference within a tested tolerance).
* ``pretrain``: multi-label BCE over the classes present, on L2-normalised embeddings with a cosine
  head, plus (``parts_weight > 0``) a term pulling a mixture's embedding towards the normalised mean
  of its parts' embeddings. Deterministic for a seed.
* ``pretrained_encoder``: the cached result for a written world, keyed by a hash of the asset
  library, the held-out set and the settings; ``avs pretrain-audio`` runs it with a progress bar.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avs_lib.audio.clips import frame_log_mels
from avs_lib.audio.encoders import (SmallAudioEncoder, audio_encoder_from_blob, encoder_id, read_audio_encoder_file,
                                    save_audio_encoder, train_small_audio_encoder)
from avs_lib.audio.frontends import (VGGISH_EXAMPLE_FRAMES, VGGISH_FFT, VGGISH_HOP, VGGISH_LOG_OFFSET, VGGISH_WINDOW,
                                     vggish_mel_matrix)
from avs_lib.core.cache import data_identity, note_rebuild
from avs_lib.core.files import read_json
from avs_lib.data.datasets import AVSDataset, world_classes
from avs_lib.world.assets import AssetLibrary, load_library
from avs_lib.world.compose import LATER_KNOB_DEFAULTS, _loop_sound, WorldConfig, heldout_members, mix_sources

PRETRAIN_VERSION = 1  # bump when the stream or the objective changes: it is part of the cache key
STEPS_PER_EPOCH = 40  # TrainConfig.encoder_epochs counts "epochs" of this many stream batches


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (all of them enter the cache key)."""

    steps: int = 600
    batch_size: int = 128  # examples per step: mixtures plus the parts of the multi-source ones
    sources: tuple[float, float, float] = (0.34, 0.33, 0.33)  # probability of 1, 2, 3 sources in a window
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    parts_weight: float = 1.0  # weight of the mixture-to-parts term (0: BCE only)
    dim: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128)
    scale: float = 16.0  # cosine-head temperature
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 4:
            raise ValueError(f"pretraining needs steps >= 1 and batch_size >= 4 (got {self.steps}, {self.batch_size})")
        if abs(sum(self.sources) - 1) > 1e-6 or len(self.sources) != 3:
            raise ValueError(f"sources={self.sources}: three probabilities (1, 2, 3 sources) summing to 1")


# ----------------------------------------------------------------------------- front end
_MEL_CACHE: dict = {}


def torch_log_mel(waves: torch.Tensor) -> torch.Tensor:
    """[B, S] 16 kHz waveforms -> [B, frames, 64] VGGish log-mel, as ``avs_lib.audio.frontends.vggish_log_mel``
    (periodic Hann 400, hop 160, |rfft 512|, HTK mel 125-7500 Hz, log(mel + 0.01)), batched in float32."""
    key = (waves.device, waves.dtype)
    if key not in _MEL_CACHE:
        n = torch.arange(VGGISH_WINDOW, dtype=torch.float64)
        window = (0.5 - 0.5 * torch.cos(2 * torch.pi * n / VGGISH_WINDOW)).to(waves.device, waves.dtype)
        mel = torch.tensor(vggish_mel_matrix(), dtype=waves.dtype, device=waves.device)  # a copy: the matrix is read-only
        _MEL_CACHE[key] = (window, mel)
    window, mel = _MEL_CACHE[key]
    frames = waves.unfold(-1, VGGISH_WINDOW, VGGISH_HOP) * window  # [B, n, 400]
    spectrum = torch.fft.rfft(frames, n=VGGISH_FFT).abs()  # [B, n, 257]
    return torch.log(spectrum @ mel + VGGISH_LOG_OFFSET)


def torch_examples(waves: torch.Tensor) -> torch.Tensor:
    """[B, S >= 0.96 s] -> [B, 96, 64]: the first VGGish example of each window."""
    return torch_log_mel(waves)[:, :VGGISH_EXAMPLE_FRAMES]


# ----------------------------------------------------------------------------- the stream
@dataclass
class Batch:
    waves: np.ndarray  # [N, S] float32: mixtures first, then parts
    targets: np.ndarray  # [N, C] float32 multi-hot
    n_mixtures: int  # rows [0, n_mixtures) are windows as drawn, the rest are parts
    parts_of: list[list[int]]  # for each mixture row: the rows of its parts (empty for one source)
    members: list[list[tuple[int, int]]] = field(default_factory=list)  # (class, member) heard in each row


class MixtureStream:
    """Fresh 1 s windows from an asset library with the world's mixing recipe; held-out members excluded.

    ``batch(step)`` draws from ``default_rng([seed, step])``: the same step always gives the same batch."""

    def __init__(self, library: AssetLibrary, world: WorldConfig, excluded: dict[int, set[int]], config: PretrainConfig):
        self.library, self.world, self.config = library, world, config
        self.sample_rate = library.sample_rate
        self.length = library.sample_rate  # one frame of audio
        self.excluded = {c: set(m) for c, m in excluded.items()}
        # (member index, recording) of every allowed recording, per class
        self.recordings = [[(i, sound) for i, member in enumerate(cls.members) if i not in self.excluded.get(c, ())
                            for sound in member.sounds] for c, cls in enumerate(library.classes)]
        empty = [library.classes[c].name for c, recs in enumerate(self.recordings) if not recs]
        if empty:
            raise ValueError(f"classes {empty} have no recording left after holding members out")
        self.num_classes = len(library.classes)

    def _source(self, rng: np.random.Generator, class_index: int) -> tuple[int, np.ndarray]:
        member, sound = self.recordings[class_index][int(rng.integers(len(self.recordings[class_index])))]
        return member, _loop_sound(sound, self.length, rng, self.sample_rate)

    def batch(self, step: int) -> Batch:
        cfg, world = self.config, self.world
        rng = np.random.default_rng([cfg.seed, step])
        mixtures, parts, targets, part_targets, parts_of, heard, part_heard = [], [], [], [], [], [], []
        total = 0
        while total < cfg.batch_size:
            n = 1 + int(rng.choice(3, p=cfg.sources))
            classes = rng.choice(self.num_classes, size=n, replace=False)
            drawn = [self._source(rng, int(c)) for c in classes]
            gains = [float(rng.uniform(world.offscreen_gain[0], world.onscreen_gain[1])) for _ in range(n)]
            bed = []
            if self.library.ambience:
                ambience = self.library.ambience[int(rng.integers(len(self.library.ambience)))]
                bed = [_loop_sound(ambience, self.length, rng, self.sample_rate)]
            bed_gain = [world.ambience_gain] * len(bed)
            mixtures.append(mix_sources([w for _, w in drawn] + bed, gains + bed_gain, rng, world.noise_snr_db))
            target = np.zeros(self.num_classes, np.float32)
            target[classes] = 1
            targets.append(target)
            heard.append([(int(c), m) for c, (m, _) in zip(classes, drawn)])
            rows = []
            if n > 1:  # the parts: each source alone over the same bed, free because they were synthesised
                for c, (m, wave), gain in zip(classes, drawn, gains):
                    rows.append(len(parts))
                    parts.append(mix_sources([wave] + bed, [gain] + bed_gain, rng, world.noise_snr_db))
                    one = np.zeros(self.num_classes, np.float32)
                    one[c] = 1
                    part_targets.append(one)
                    part_heard.append([(int(c), m)])
            parts_of.append(rows)
            total += 1 + len(rows)
        n_mix = len(mixtures)
        parts_of = [[n_mix + r for r in rows] for rows in parts_of]
        waves = np.stack(mixtures + parts).astype(np.float32)
        return Batch(waves, np.stack(targets + part_targets), n_mix, parts_of, heard + part_heard)


# ----------------------------------------------------------------------------- the objective
def parts_loss(embeddings: torch.Tensor, parts_of: list[list[int]]) -> torch.Tensor:
    """Mean over multi-source mixtures of 1 - cos(e_mix, normalise(mean of its parts' embeddings)).

    The parts are detached targets: the term moves the mixture, not its parts, so that a mixture's
    feature lies between the features its sources have alone (what Eq. 5's nearest centres need)."""
    rows = [(i, p) for i, p in enumerate(parts_of) if p]
    if not rows:
        return embeddings.sum() * 0
    index = torch.tensor([i for i, _ in rows])
    targets = torch.stack([embeddings[p].detach().mean(0) for _, p in rows])
    return (1 - F.cosine_similarity(embeddings[index], F.normalize(targets, dim=-1), dim=-1)).mean()


def pretrain(library: AssetLibrary, world: WorldConfig, config: PretrainConfig, excluded: dict[int, set[int]] | None = None,
             progress: bool = False, device: str = "cpu") -> tuple[SmallAudioEncoder, list[dict]]:
    """Train a ``SmallAudioEncoder`` on ``MixtureStream`` for ``config.steps`` batches.

    Returns the frozen encoder (eval mode, L2-normalised embeddings) and its history: every
    ``log_every`` steps the mean BCE, parts term and total loss over those steps, and the seconds so far."""
    from tqdm.auto import tqdm

    excluded = heldout_members(library, world) if excluded is None else excluded
    stream = MixtureStream(library, world, excluded, config)
    torch.manual_seed(config.seed)
    model = SmallAudioEncoder(config.dim, stream.num_classes, channels=config.channels, normalise=True,
                              scale=config.scale).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # linear warm-up, then cosine to 5 % of the peak rate
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / config.warmup_steps) * (
        0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, s / config.steps)))))
    history, window, started = [], [], time.perf_counter()
    bar = tqdm(range(config.steps), desc="pretrain audio encoder", disable=not progress, unit="step")
    model.train()
    for step in bar:
        batch = stream.batch(step)
        x = torch_examples(torch.from_numpy(batch.waves).to(device))
        y = torch.from_numpy(batch.targets).to(device)
        embeddings = model(x)
        bce = F.binary_cross_entropy_with_logits(model.logits(embeddings), y)
        pull = parts_loss(embeddings, batch.parts_of)
        loss = bce + config.parts_weight * pull
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        window.append((bce.item(), pull.item(), loss.item()))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mean = np.mean(window, axis=0)
            history.append({"step": step + 1, "bce": float(mean[0]), "parts": float(mean[1]), "loss": float(mean[2]),
                            "seconds": round(time.perf_counter() - started, 2)})
            bar.set_postfix(bce=f"{mean[0]:.3f}", parts=f"{mean[1]:.3f}")
            window = []
    model.eval().requires_grad_(False)
    return model, history


# ----------------------------------------------------------------------------- cache for a written world
def world_setup(root: str | Path) -> tuple[AssetLibrary, WorldConfig]:
    """The asset library and the configuration a world was written with (from its ``world.json``).

    A world written before ``s4_offscreen`` / ``holdout_members`` existed held nothing out and had
    off-screen sources in s4; it is read so."""

    path = Path(root) / "world.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: audio pretraining needs a composed world "
                                "(`avs world --out DIR`); for AVSBench use audio_encoder=vggish:PATH or precomputed:DIR")
    meta = read_json(path)
    config = dict(meta["config"])
    config.setdefault("holdout_members", 0)
    config.setdefault("s4_offscreen", True)
    for knob, value in LATER_KNOB_DEFAULTS.items():  # world.json leaves these out at their old value
        config.setdefault(knob, value)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    world = WorldConfig(**config)
    library = load_library(meta.get("library", world.kind), world.sample_rate, warn_on_fallback=False)
    if library.class_names != meta["classes"]:
        raise ValueError(f"{path}: the world's classes differ from the '{library.kind}' asset library installed here; "
                         "rebuild the world with `avs world`")
    return library, world


def library_fingerprint(library: AssetLibrary) -> str:
    """A hash of everything of the library that the stream hears: names, recordings, ambience."""
    digest = hashlib.sha256(f"{library.kind}:{library.sample_rate}".encode())
    for cls in library.classes:
        digest.update(cls.name.encode())
        for member in cls.members:
            digest.update(member.name.encode())
            for name, sound in zip(member.sound_names, member.sounds):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(sound, dtype=np.float32).tobytes())
    for sound in library.ambience:
        digest.update(np.ascontiguousarray(sound, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def pretrain_key(library: AssetLibrary, world: WorldConfig, excluded: dict[int, set[int]], config: PretrainConfig) -> str:
    recipe = {"gains": [world.offscreen_gain, world.onscreen_gain], "ambience_gain": world.ambience_gain,
              "noise_snr_db": world.noise_snr_db, "sample_rate": world.sample_rate}
    text = json.dumps({"version": PRETRAIN_VERSION, "library": library_fingerprint(library), "recipe": recipe,
                       "excluded": {str(c): sorted(m) for c, m in sorted(excluded.items())}, "config": asdict(config)},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pretrained_encoder(root: str | Path, cache_dir: str | Path, config: PretrainConfig | None = None,
                       progress: bool = False, device: str = "cpu") -> tuple[SmallAudioEncoder, list[str], dict]:
    """(frozen encoder, class names, record) for the world at ``root``: loaded from
    ``<cache_dir>/pretrained_audio_<key>.pt`` when its key matches, else pretrained and saved there.
    The record holds the settings, the history, the held-out members and the wall time."""
    config = config or PretrainConfig()
    library, world = world_setup(root)
    excluded = heldout_members(library, world)
    key = pretrain_key(library, world, excluded, config)
    path = Path(cache_dir) / f"pretrained_audio_{key}.pt"
    if path.exists():
        blob = read_audio_encoder_file(path, device)  # verified: a damaged file is one message naming it
        return audio_encoder_from_blob(blob, device), blob["class_names"], blob["meta"]
    started = time.perf_counter()
    encoder, history = pretrain(library, world, config, excluded, progress=progress, device=device)
    record = {"key": key, "config": asdict(config), "history": history, "seconds": round(time.perf_counter() - started, 1),
              "heldout": {library.classes[c].name: sorted(library.classes[c].members[i].name for i in m)
                          for c, m in excluded.items()}, "library": library_fingerprint(library)}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    save_audio_encoder(encoder.cpu(), path, library.class_names, record)
    return encoder, library.class_names, record


def prepare_audio_encoder(root: str | Path, cache_dir: str | Path, dim: int = 128, epochs: int = 15, seed: int = 0,
                          progress: bool = False) -> tuple[SmallAudioEncoder, list[str], str]:
    """The world's small audio encoder, trained once and reused from ``cache_dir``.

    A composed world (``root/world.json``): pretrained on the world's stream of mixtures for
    ``epochs x STEPS_PER_EPOCH`` batches (``avs_lib.audio.pretrain``). Other roots (AVSBench): trained
    with cross-entropy on the S4 training clips for ``epochs`` epochs.
    Returns (encoder, class names, encoder id); the id changes with the weights and keys the cache."""
    if (Path(root) / "world.json").exists():
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
        note_rebuild(path, root)
    s4 = AVSDataset(root, "s4", "train")
    examples = frame_log_mels(s4, progress)
    labels = np.array([classes.index(r.category) for r in s4.records])
    encoder, history = train_small_audio_encoder(examples, labels, len(classes), dim=dim, epochs=epochs, seed=seed,
                                                 progress=progress)
    save_audio_encoder(encoder, path, classes, {"history": history, "root": str(root), "inputs": inputs})
    return encoder, classes, encoder_id(encoder)
