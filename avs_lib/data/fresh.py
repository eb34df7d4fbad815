"""Training clips composed fresh each epoch from a composed world's recipe (``train_clips=fresh``).

A written world holds a fixed set of training clips: on the default world 1 400 ms3 compositions
(7 000 frames, five nearly identical frames per clip). Trained for six epochs, the oracle ceiling
reaches 0.82 J&F on those training frames and 0.71 on the test frames: the models learn the
compositions they are shown. The world is a recipe, though (``avs_lib.world.compose``), and a
composition costs about 12 ms here, so each epoch can see clips no epoch has seen before.

``fresh_train_frames(root, layout, epoch, ...)`` composes epoch ``epoch``'s training split: as many
clips as the world's training split has, with the world's settings and asset library, but drawn
with ``epoch_seed(world seed, epoch)`` instead of the world's seed. The frames then go the way the
files go (``avs_lib.data.frames.load_frames``), so that a fresh epoch differs from a written one
in the draw only:

* the mixture passes through 16-bit PCM, as the world's ``.wav`` files store it;
* each frame is resized with ``resize_frame``; its audio feature is the encoder over the first
  0.96 s log-mel example of its second (``vggish_examples``), or the oracle's multi-hot vector read
  from the clip's true sources;
* an s4 training clip keeps the mask of its first frame only, as AVSBench and the written worlds do;
* the world's held-out members stay out (``compose_clip``'s ``held_out``: the epoch's own seed would
  hold out others).

A test composes with the world's own seed and checks that the result equals the written training
split read through ``load_frames``. The validation and test splits are never composed afresh: they
stay the world's files, so every epoch is scored on the same frames. Clip names carry the epoch
(``ms3_00012~e3``) so that they never meet a written clip's name (the oracle's jitter and the
sources are keyed by name).

Which encoders can embed a fresh clip: the oracles, the log-mel encoders (``small``,
``vggish:PATH``) and the waveform encoders (``htsat:PATH``, ``birdnet``). Precomputed embeddings
exist only for the clips they were computed on, so ``precomputed:DIR`` is refused.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from avs_lib.audio.frontends import resample, vggish_examples
from avs_lib.audio.pretrain import world_setup
from avs_lib.audio.registry import OnDemandEmbeddings, OracleAudio, PrecomputedEmbeddings, embed
from avs_lib.core.errors import ConfigError
from avs_lib.data.frames import FrameSet
from avs_lib.data.transforms import resize_frame
from avs_lib.world.compose import _split_of, compose_clip, heldout_members
from avs_lib.world.write import sidecar_record

# the layouts whose training split is one subset's clips, and that subset
FRESH_LAYOUTS = {"ms3": "ms3", "s4": "s4"}
STREAM_SALT = 0x5EED_F4E5  # separates the epochs' seeds from any world's own seed


def epoch_seed(world_seed: int, epoch: int) -> int:
    """The seed that composes epoch ``epoch``'s training clips (0-based): a function of the
    world's seed and the epoch only, and never the world's seed itself (that would redraw the
    written clips)."""
    seed = int(np.random.SeedSequence([world_seed, STREAM_SALT, epoch]).generate_state(1)[0])
    return seed if seed != world_seed else seed + 1


def pcm16(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``audio`` as the world's ``.wav`` files give it back: written as 16-bit PCM, read as float32."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, audio, sample_rate, subtype="PCM_16", format="WAV")
    buffer.seek(0)
    wave, _ = soundfile.read(buffer, dtype="float32", always_2d=True)
    return wave.mean(axis=1)


def train_clip_count(root: str | Path, layout: str) -> int:
    """How many clips the world's training split of ``layout`` holds (what each fresh epoch composes)."""
    _, world = world_setup(root)
    return _train_clips(world, _fresh_subset(root, layout))


def _train_clips(world, subset: str) -> int:
    clips = world.clips_of(subset)
    return sum(_split_of(i, clips, world.splits) == "train" for i in range(clips))


def _fresh_subset(root: str | Path, layout: str) -> str:
    if layout not in FRESH_LAYOUTS:
        raise ConfigError(f"train_clips=fresh composes {', '.join(FRESH_LAYOUTS)} clips; layout={layout!r} trains "
                          "on the written files only (train_clips=files)")
    if not (Path(root) / "world.json").exists():
        raise ConfigError(f"train_clips=fresh: {root} has no world.json, so no recipe to compose clips from; "
                          "it works on a world written by `avs world` (AVSBench trains on its files: "
                          "train_clips=files)")
    return FRESH_LAYOUTS[layout]


def check_fresh(root: str | Path, layout: str, encoder) -> None:
    """Raise ``ConfigError`` (saying why and what works) unless fresh clips of ``layout`` can be
    composed from the world at ``root`` and embedded by ``encoder``: before any training work."""
    _fresh_subset(root, layout)
    if isinstance(encoder, PrecomputedEmbeddings) and not isinstance(encoder, OnDemandEmbeddings):
        raise ConfigError("train_clips=fresh: precomputed embeddings exist only for the clips they were computed "
                          "on; a fresh clip needs an encoder that runs (small, vggish:PATH, htsat:PATH, birdnet, "
                          "oracle) or train_clips=files")


def _audio_features(encoder, names: list[str], frames: list[int], waves: list[np.ndarray], records: dict,
                    sample_rate: int) -> np.ndarray:
    """F_a [N, d] of fresh frames: one 1 s segment per frame in ``waves`` (at ``sample_rate``)."""
    if isinstance(encoder, OracleAudio):
        return encoder.rows([(name, frame, records[name]) for name, frame in zip(names, frames)])
    if isinstance(encoder, OnDemandEmbeddings):  # htsat:PATH, birdnet: waveform encoders
        inner = encoder.encoder
        segments = [resample(w, sample_rate, inner.sample_rate) for w in waves]
        return np.asarray(inner.embed_frames(segments), dtype=np.float32)
    log_mels = np.stack([vggish_examples(w, sample_rate)[0] for w in waves])  # [N, 96, 64]
    return embed(encoder, log_mels)


def fresh_train_frames(root: str | Path, layout: str, epoch: int, image_size: int, encoder,
                       progress: bool = False, seed: int | None = None, clips: int | None = None) -> FrameSet:
    """Epoch ``epoch``'s training frames, composed afresh (see the module docstring). ``seed``
    overrides ``epoch_seed(world seed, epoch)`` (a test passes the world's own seed to redraw the
    written split); ``clips`` composes only the first that many (a benchmark's sample)."""
    check_fresh(root, layout, encoder)
    subset = _fresh_subset(root, layout)
    library, world = world_setup(root)  # the asset library is read once per epoch
    draw = replace(world, seed=epoch_seed(world.seed, epoch) if seed is None else seed)
    held_out = heldout_members(library, world)  # the world's, which the epoch's own seed would not give
    count = _train_clips(world, subset) if clips is None else clips
    sr = world.sample_rate
    images, masks, valid, waves, names, frames, categories, records = [], [], [], [], [], [], [], {}
    for index in tqdm(range(count), desc=f"fresh {subset} clips, epoch {epoch + 1}", disable=not progress,
                      leave=False):
        clip = compose_clip(library, subset, index, draw, held_out)
        name = clip.name if seed is not None else f"{clip.name}~e{epoch + 1}"
        records[name] = sidecar_record(clip)
        audio = pcm16(clip.audio, sr)
        binary = clip.binary_masks()
        category = next(s.class_name for s in clip.sources if s.on_screen and s.sounding) if subset == "s4" else ""
        for t in range(len(clip.frames)):
            image, mask = resize_frame(clip.frames[t], binary[t], image_size)
            images.append(image.transpose(2, 0, 1))
            has_mask = subset != "s4" or t == 0  # s4 training clips keep frame 1's mask only
            masks.append(mask if has_mask else np.zeros_like(mask))
            valid.append(has_mask)
            waves.append(audio[t * sr:(t + 1) * sr])
            names.append(name)
            frames.append(t)
            categories.append(category)
    audio_features = _audio_features(encoder, names, frames, waves, records, sr)
    return FrameSet(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks).astype(np.int64)),
                    torch.tensor(valid), torch.from_numpy(np.asarray(audio_features, dtype=np.float32)),
                    names, frames, categories, records)
