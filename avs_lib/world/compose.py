"""Compose AVS clips from an asset library.

A clip is T frames over one background photo; each frame comes with its own 1 s of audio.
On-screen objects are cut-outs that drift a little between frames; some of them sound, some are
silent distractors. Off-screen sources are heard and never seen. Masks come from the cut-outs'
alpha channels after occlusion, so they are exact. Every clip records its true sources, which is
what lets the workbench score derivation recall and elimination AUC.

Randomness: clip ``i`` of subset ``s`` draws from ``default_rng([seed, SUBSET_IDS[s], i])``, so a
clip does not depend on which other clips were made or in which order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from avs_lib.world.assets import AssetLibrary

SUBSETS = ("s4", "ms3", "avss", "msmi")
SUBSET_IDS = {name: i for i, name in enumerate(SUBSETS)}


# Knobs added after worlds were first written: world.json leaves each out while it has this default
# value, so a world written before the knob existed is still the same world (the same world.json).
LATER_KNOB_DEFAULTS = {"ms3_silent": (1, 2), "ms3_pause": 0.0}


@dataclass
class WorldConfig:
    """Knobs of a composed world. The defaults are the embedded default world."""

    kind: str = "stamps"
    subsets: tuple[str, ...] = SUBSETS
    clips: int = 200  # per subset
    subset_clips: dict = field(default_factory=dict)  # {subset: clips} for subsets that differ from `clips`
    size: int = 128  # frames are size x size pixels
    seed: int = 0
    sample_rate: int = 16000
    frames: int = 5
    frames_v2: int = 10  # AVSS clips of the v2-like part
    v2_fraction: float = 0.3  # share of AVSS clips that are 10-frame v2 clips
    offscreen_rate: float = 0.5  # probability that a clip has an off-screen source (ms3, avss, msmi)
    s4_offscreen: bool = False  # True: s4 clips may carry an off-screen source too (the old, contaminated s4)
    holdout_members: int = 0  # per class with >= 3 members: this many members are heard/seen in val/test only
    offscreen_gain: tuple[float, float] = (0.4, 1.0)
    onscreen_gain: tuple[float, float] = (0.5, 1.0)
    ambience_gain: float = 0.08
    noise_snr_db: float = 25.0
    drift: float = 0.03  # largest move per frame, as a fraction of the frame side
    msmi_pulse: float = 0.35  # how much a sounding MSMI instance grows with its loudness
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test
    ms3_silent: tuple[int, int] = (1, 2)  # silent distractors per ms3 clip, an inclusive range (lowers the floor)
    # Chance that a sounding on-screen object of an ms3 clip pauses in a frame (0: every one sounds in
    # every frame). A pausing object is silent in that frame: off its mask, out of the oracle, quiet in
    # its second of audio. It lowers the floor without adding objects to the frame (see compose_clip).
    ms3_pause: float = 0.0

    def __post_init__(self) -> None:
        unknown = [s for s in self.subsets if s not in SUBSETS]
        if unknown:
            raise ValueError(f"unknown subsets {unknown}: choose from {', '.join(SUBSETS)}")
        unknown = [s for s in self.subset_clips if s not in SUBSETS]
        if unknown:
            raise ValueError(f"subset_clips names unknown subsets {unknown}: choose from {', '.join(SUBSETS)}")
        if min([self.clips, *self.subset_clips.values()]) < 1 or self.size < 16:
            raise ValueError("a world needs at least 1 clip per subset and frames of at least 16 px")
        if abs(sum(self.splits) - 1) > 1e-6:
            raise ValueError(f"split fractions {self.splits} must sum to 1")
        low, high = self.ms3_silent
        if not 0 <= low <= high:  # the bound by the library's classes is checked where the library is known
            raise ValueError(f"ms3_silent={tuple(self.ms3_silent)}: give LOW <= HIGH, from 0")
        if not 0.0 <= self.ms3_pause < 1.0:
            raise ValueError(f"ms3_pause={self.ms3_pause}: give a chance in [0, 1)")
        if self.holdout_members < 0:
            raise ValueError(f"holdout_members={self.holdout_members} must be 0 (none) or more")

    def clips_of(self, subset: str) -> int:
        """How many clips ``subset`` has."""
        return int(self.subset_clips.get(subset, self.clips))


def recipe(cfg: WorldConfig, later: tuple[str, ...] = tuple(LATER_KNOB_DEFAULTS)) -> dict:
    """``cfg`` as a record of it (world.json, a cache key) writes it: each knob of ``later`` is left
    out while at its ``LATER_KNOB_DEFAULTS`` value, so what was written before the knob existed is
    still what is written. ``later``: the knobs newer than the record (world.json: all of them)."""
    plain = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return {k: v for k, v in asdict(cfg).items() if k not in later or plain(v) != LATER_KNOB_DEFAULTS[k]}


@dataclass
class Source:
    """One true source of a clip: an on-screen object (sounding or silent) or an off-screen sound."""

    instance: int
    class_index: int  # index into the library's classes (0-based); semantic masks use class_index + 1
    class_name: str
    member: str
    sound: str | None  # which recording it plays; None for a silent object
    on_screen: bool
    sounding: bool
    gain: float
    bboxes: list[list[int]] | None = None  # per frame [x0, y0, x1, y1] of its visible pixels, None off screen
    active: list[bool] | None = None  # per frame: does it sound? None: as `sounding` says, in every frame

    def sounds_in(self, frame: int) -> bool:
        return self.sounding and (self.active is None or self.active[frame])

    def to_dict(self) -> dict:
        # `active` only where a source pauses, so a world without pauses writes what it always wrote
        return {k: v for k, v in self.__dict__.items() if k != "active" or v is not None}


@dataclass
class Clip:
    name: str
    subset: str
    split: str
    frames: np.ndarray  # [T, H, W, 3] uint8
    audio: np.ndarray  # [T * sample_rate] float32, frame t hears audio[t*sr:(t+1)*sr]
    instance_map: np.ndarray  # [T, H, W] int16: -1 background, else the visible object's instance id
    sources: list[Source]
    background: str
    label: str = ""  # AVSS part: v1s, v1m or v2
    extra: dict = field(default_factory=dict)

    @property
    def sounding_instances(self) -> list[int]:
        return [s.instance for s in self.sources if s.on_screen and s.sounding]

    def binary_masks(self) -> np.ndarray:
        """[T, H, W] uint8 in {0, 1}: pixels of the objects sounding in each frame."""
        return (self.semantic_masks() > 0).astype(np.uint8)

    def semantic_masks(self) -> np.ndarray:
        """[T, H, W] uint8: class index + 1 on the objects sounding in each frame, 0 elsewhere."""
        out = np.zeros(self.instance_map.shape, np.uint8)
        for s in self.sources:
            if s.on_screen and s.sounding:
                for t in range(len(out)):
                    if s.sounds_in(t):
                        out[t][self.instance_map[t] == s.instance] = s.class_index + 1
        return out

    def instance_mask(self, instance: int) -> np.ndarray:
        return (self.instance_map == instance).astype(np.uint8)


# ----------------------------------------------------------------------------- audio
def _loop_sound(sound: np.ndarray, length: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Repeat a recording with short random gaps so that every 1 s frame hears it."""
    out = np.zeros(length, np.float32)
    pos = -int(rng.integers(0, max(1, len(sound))))  # start inside the recording
    max_gap = int(0.15 * sample_rate)
    while pos < length:
        start, end = max(pos, 0), min(pos + len(sound), length)
        out[start:end] += sound[start - pos : end - pos]
        pos += len(sound) + int(rng.integers(0, max_gap + 1))
    return out


def _frame_envelope(wave: np.ndarray, frames: int) -> np.ndarray:
    rms = np.sqrt(np.mean(wave.reshape(frames, -1) ** 2, axis=1))
    return rms / (rms.max() + 1e-9)


def mix_sources(waves: list[np.ndarray], gains: list[float], rng: np.random.Generator, noise_snr_db: float) -> np.ndarray:
    """Sum of gained sources plus white noise at the given SNR, scaled to peak at most 0.9."""
    mix = np.zeros_like(waves[0]) if waves else None
    for wave, gain in zip(waves, gains):
        mix = mix + gain * wave
    signal_power = float(np.mean(mix**2)) + 1e-12
    noise = rng.standard_normal(len(mix)).astype(np.float32) * np.sqrt(signal_power / 10 ** (noise_snr_db / 10))
    mix = mix + noise
    return (mix * (0.9 / max(float(np.abs(mix).max()), 1e-6))).astype(np.float32)


PAUSE_RAMP_S = 0.02  # a pause fades out and in over 20 ms inside the quiet second, so it does not click


def _pause_sources(sounding: list[Source], waves: list[np.ndarray], frames: int, chance: float,
                   rng: np.random.Generator, sample_rate: int) -> None:
    """Let each sounding on-screen object pause in some frames (``WorldConfig.ms3_pause``): it stays
    on screen, and in a frame where it pauses it is silent (its second of audio is quiet, its pixels
    leave the mask). ``waves[i]`` is ``sounding[i]``'s recording; both are changed in place.

    Every object sounds in at least one frame (else it would be a silent distractor) and every frame
    has at least one sounding object (an AVSBench MS3 frame always has one): where a draw breaks
    either, one of its pauses is lifted at random. So a deaf model cannot tell from a frame which of
    the objects it shows sound in it, while the second of audio that goes with the frame can."""
    active = rng.random((len(sounding), frames)) >= chance
    for i in range(len(sounding)):
        if not active[i].any():
            active[i, int(rng.integers(frames))] = True
    for t in range(frames):
        if not active[:, t].any():
            active[int(rng.integers(len(sounding))), t] = True
    ramp = max(1, int(PAUSE_RAMP_S * sample_rate))
    for i, source in enumerate(sounding):
        source.active = [bool(a) for a in active[i]]
        envelope = np.repeat(active[i].astype(np.float32), sample_rate)
        for t in np.flatnonzero(~active[i]):
            start, end = t * sample_rate, (t + 1) * sample_rate
            if t > 0 and active[i, t - 1]:
                envelope[start:start + ramp] = np.linspace(1, 0, ramp, dtype=np.float32)
            if t + 1 < frames and active[i, t + 1]:
                envelope[end - ramp:end] = np.linspace(0, 1, ramp, dtype=np.float32)
        waves[i] *= envelope


# ----------------------------------------------------------------------------- vision
def _background(library: AssetLibrary, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    index = int(rng.integers(len(library.backgrounds)))
    bg = library.backgrounds[index]
    side = bg.shape[0]
    crop = int(rng.integers(side * 6 // 10, side + 1))
    y0, x0 = int(rng.integers(0, side - crop + 1)), int(rng.integers(0, side - crop + 1))
    patch = Image.fromarray(bg[y0 : y0 + crop, x0 : x0 + crop]).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(patch), library.background_names[index]


@dataclass
class _Placed:
    instance: int
    cutout: np.ndarray  # RGBA
    height: float  # object height in pixels at scale 1
    x: float  # centre, pixels
    y: float
    vx: float
    vy: float
    pulse: np.ndarray | None = None  # per-frame scale factor


def _render(bg: np.ndarray, objects: list[_Placed], frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste the objects (in list order: later ones occlude earlier ones) on every frame."""
    video = np.empty((frames, size, size, 3), np.uint8)
    instance_map = np.full((frames, size, size), -1, np.int16)
    for t in range(frames):
        canvas = bg.astype(np.float32)
        for obj in objects:
            scale = 1.0 if obj.pulse is None else float(obj.pulse[t])
            h = max(4, round(obj.height * scale))
            w = max(4, round(h * obj.cutout.shape[1] / obj.cutout.shape[0]))
            rgba = np.asarray(Image.fromarray(obj.cutout).resize((w, h), Image.Resampling.BILINEAR))
            cx = obj.x + obj.vx * t
            cy = obj.y + obj.vy * t
            x0, y0 = round(cx - w / 2), round(cy - h / 2)
            # clip the paste rectangle to the frame
            fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            patch = rgba[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
            alpha = patch[..., 3:4].astype(np.float32) / 255.0
            region = canvas[fy0:fy1, fx0:fx1]
            canvas[fy0:fy1, fx0:fx1] = region * (1 - alpha) + patch[..., :3] * alpha
            instance_map[t, fy0:fy1, fx0:fx1][patch[..., 3] >= 128] = obj.instance
        video[t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return video, instance_map


def _bboxes(instance_map: np.ndarray, instance: int) -> list[list[int]]:
    boxes = []
    for frame in instance_map:
        ys, xs = np.nonzero(frame == instance)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(ys) else [0, 0, 0, 0])
    return boxes


# ----------------------------------------------------------------------------- clip sampling
def _split_of(index: int, clips: int, splits: tuple[float, float, float]) -> str:
    """Contiguous blocks: the first ~70 % of clip indices are train, then val, then test. From 3
    clips on, val and test get at least one clip each, so a small world can still be evaluated."""
    n_val = int(round(splits[1] * clips))
    n_test = int(round(splits[2] * clips))
    if clips >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = max(0, clips - n_val - n_test)
    if index < n_train:
        return "train"
    return "val" if index < n_train + n_val else "test"


HOLDOUT_MIN_MEMBERS = 3  # a class needs this many members before any is held out


def heldout_members(library: AssetLibrary, cfg: WorldConfig) -> dict[int, set[int]]:
    """{class index: member indices} that only val/test clips may use (``cfg.holdout_members`` per
    class with at least ``HOLDOUT_MIN_MEMBERS`` members; at least two members stay in training).

    Drawn from ``default_rng([seed, 1000 + class index])``: a fixed set per world seed, independent
    of the clips. Train clips, the semantic memory and the audio pretraining stream never hear them,
    so val/test frames of these members measure generalisation to unheard sounds."""
    out: dict[int, set[int]] = {}
    for c, cls in enumerate(library.classes):
        n = len(cls.members)
        if cfg.holdout_members == 0 or n < HOLDOUT_MIN_MEMBERS:
            continue
        count = min(cfg.holdout_members, n - 2)
        rng = np.random.default_rng([cfg.seed, 1000 + c])
        out[c] = {int(i) for i in rng.choice(n, size=count, replace=False)}
    return out


def heldout_member_names(library: AssetLibrary, cfg: WorldConfig) -> dict[str, list[str]]:
    """{class name: held-out member names}, for reports and world.json readers."""
    return {library.classes[c].name: sorted(library.classes[c].members[i].name for i in members)
            for c, members in heldout_members(library, cfg).items()}


def check_fits(library: AssetLibrary, cfg: WorldConfig) -> None:
    """Each on-screen object of a clip has its own class: an ms3 clip's 3 sounding objects and
    ``ms3_silent``'s most distractors must fit in the library's classes."""
    most = 3 + cfg.ms3_silent[1]
    if "ms3" in cfg.subsets and most > len(library.classes):
        raise ValueError(f"ms3_silent={tuple(cfg.ms3_silent)}: an ms3 clip could show {most} objects, each of its own "
                         f"class, but the '{library.kind}' library has {len(library.classes)} classes; give "
                         f"--ms3-silent with HIGH at most {len(library.classes) - 3}")


def compose_clip(library: AssetLibrary, subset: str, index: int, cfg: WorldConfig,
                 held_out: dict[int, set[int]] | None = None) -> Clip:
    """Compose clip ``index`` of ``subset``; the same arguments always give the same clip.

    A training-split clip never shows or plays a held-out member: those of ``cfg``'s own seed, or
    ``held_out`` when given. A stream that draws with a seed of its own (fresh epochs, the visual
    pretraining) passes the world's set here, which its own seed would not reproduce."""
    rng = np.random.default_rng([cfg.seed, SUBSET_IDS[subset], index])
    size, sr = cfg.size, cfg.sample_rate
    n_classes = len(library.classes)
    frames, label = cfg.frames, ""
    split = _split_of(index, cfg.clips_of(subset), cfg.splits)
    held = (heldout_members(library, cfg) if held_out is None else held_out) if split == "train" else {}

    def pick_member(class_index: int) -> int:
        """A uniform member draw; in train clips a held-out draw is redrawn among the others. The
        first draw is always made, so clips that never meet a held-out member are unchanged."""
        n_members = len(library.classes[class_index].members)
        choice = int(rng.integers(n_members))
        if choice in held.get(class_index, ()):
            allowed = [i for i in range(n_members) if i not in held[class_index]]
            choice = allowed[int(rng.integers(len(allowed)))]
        return choice

    # Which classes are on screen, which of them sound.
    if subset == "s4":
        n_sounding, n_silent = 1, int(rng.random() < 0.3)
    elif subset == "ms3":
        n_sounding, n_silent = int(rng.integers(2, 4)), int(rng.integers(cfg.ms3_silent[0], cfg.ms3_silent[1] + 1))
    elif subset == "avss":
        if rng.random() < cfg.v2_fraction:
            label, frames = "v2", cfg.frames_v2
            n_sounding = int(rng.integers(1, 4))
        else:
            n_sounding = 1 if rng.random() < 0.5 else int(rng.integers(2, 4))
            label = "v1s" if n_sounding == 1 else "v1m"
        n_silent = int(rng.integers(0, 3))
    elif subset == "msmi":
        n_sounding, n_silent = 0, 0  # handled below: instances of one class
    else:
        raise ValueError(f"unknown subset {subset!r}")

    bg, bg_name = _background(library, rng, size)
    sources: list[Source] = []
    placed: list[_Placed] = []
    waves: list[np.ndarray] = []
    gains: list[float] = []
    length = frames * sr

    def new_object(class_index: int, member_index: int, sounding: bool, height: float, x: float) -> None:
        cls = library.classes[class_index]
        member = cls.members[member_index]
        instance = len(sources)
        sound_name, wave, gain = None, None, 0.0
        if sounding:
            which = int(rng.integers(len(member.sounds)))
            sound_name = member.sound_names[which]
            wave = _loop_sound(member.sounds[which], length, rng, sr)
            gain = float(rng.uniform(*cfg.onscreen_gain))
            waves.append(wave)
            gains.append(gain)
        y = float(rng.uniform(0.35, 0.65)) * size
        drift = cfg.drift * size
        obj = _Placed(instance, member.image, height, x, y, float(rng.uniform(-drift, drift)), float(rng.uniform(-drift, drift)))
        if subset == "msmi" and sounding:
            # The sounding instance grows with its loudness so one frame can tell it apart.
            obj.pulse = 1.0 + cfg.msmi_pulse * _frame_envelope(wave, frames)
        placed.append(obj)
        sources.append(Source(instance, class_index, cls.name, member.name, sound_name, True, sounding, gain))

    if subset == "msmi":
        class_index = int(rng.integers(n_classes))
        n_instances = int(rng.integers(2, 5))
        n_sounding = int(rng.integers(1, min(2, n_instances - 1) + 1))
        sounding_set = set(rng.choice(n_instances, size=n_sounding, replace=False).tolist())
        slots = (np.arange(n_instances) + 0.5) / n_instances
        # One base size for all instances: only the sounding ones grow, with their loudness.
        height = size * float(rng.uniform(0.22, 0.3))
        for k in range(n_instances):
            x = float(slots[k] + rng.uniform(-0.04, 0.04)) * size
            new_object(class_index, pick_member(class_index), k in sounding_set, height, x)
        on_screen_classes = {class_index}
    else:
        n_objects = n_sounding + n_silent
        chosen = rng.choice(n_classes, size=n_objects, replace=False)
        sounding_flags = [True] * n_sounding + [False] * n_silent
        order = rng.permutation(n_objects)  # left-to-right slots, shuffled
        scale_range = (0.45, 0.7) if n_objects == 1 else (0.3, 0.5)
        for k in range(n_objects):
            slot = (order[k] + 0.5) / n_objects
            x = float(slot + rng.uniform(-0.05, 0.05)) * size
            height = size * float(rng.uniform(*scale_range))
            cls_index = int(chosen[k])
            new_object(cls_index, pick_member(cls_index), sounding_flags[k], height, x)
        on_screen_classes = {int(c) for c in chosen}

    if subset == "ms3" and cfg.ms3_pause > 0:
        _pause_sources([s for s in sources if s.sounding], waves, frames, cfg.ms3_pause, rng, sr)

    # Off-screen source: a class that is not on screen, heard only. Not in s4 by default: s4 is the
    # single-source subset the encoder and the memory (Eq. 2-4) learn from.
    if (subset != "s4" or cfg.s4_offscreen) and rng.random() < cfg.offscreen_rate:
        candidates = [c for c in range(n_classes) if c not in on_screen_classes]
        class_index = int(rng.choice(candidates))
        cls = library.classes[class_index]
        member = cls.members[pick_member(class_index)]
        which = int(rng.integers(len(member.sounds)))
        gain = float(rng.uniform(*cfg.offscreen_gain))
        waves.append(_loop_sound(member.sounds[which], length, rng, sr))
        gains.append(gain)
        sources.append(Source(len(sources), class_index, cls.name, member.name, member.sound_names[which], False, True, gain))

    if library.ambience:
        which = int(rng.integers(len(library.ambience)))
        waves.append(_loop_sound(library.ambience[which], length, rng, sr))
        gains.append(cfg.ambience_gain)

    audio = mix_sources(waves, gains, rng, cfg.noise_snr_db)
    video, instance_map = _render(bg, placed, frames, size)
    for src in sources:
        if src.on_screen:
            src.bboxes = _bboxes(instance_map, src.instance)
    name = f"{subset}_{index:05d}"
    return Clip(name, subset, split, video, audio, instance_map, sources, bg_name, label)
