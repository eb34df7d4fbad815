"""Asset libraries: what a composed AVS world is made of.

An asset library is a list of classes; each class has members (one thing you can see, with
one or more sounds it makes). Two libraries exist:

* ``stamps``: real photographic cut-outs (with alpha) and their real recordings from Debian's
  ``tuxpaint-stamps-default`` (GPL-2), extra instrument recordings from ``sonic-pi-samples``
  (CC0), backgrounds from the sample photos shipped inside the scikit-image and scikit-learn
  wheels. The class grouping lives in ``stamps_classes.json`` beside this file.
* ``procedural``: drawn shapes with a colour and texture per class and synthesized sounds with
  2-4 strongly different subtypes per class (intra-class variation). Needs no file at all.

Both are built deterministically: the procedural library from a fixed seed, the stamps one from
files read in a fixed order.
"""
from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

STAMPS_CLASSES_FILE = "stamps_classes.json"
# Cut-outs are stored at most this large: worlds are rendered at 96-224 px, and resizing a
# 1000 px stamp per frame would dominate composition time.
MAX_CUTOUT_SIDE = 256
BACKGROUND_SIDE = 320


class AssetsUnavailable(RuntimeError):
    """The files an asset library needs are not installed on this machine."""


@dataclass
class Member:
    """One visible thing of a class (a stamp, or a procedural subtype) and the sounds it makes."""

    name: str
    image: np.ndarray  # [H, W, 4] uint8 RGBA, cropped to its alpha
    sounds: list[np.ndarray]  # each [samples] float32 at the library's sample rate
    sound_names: list[str]


@dataclass
class AssetClass:
    name: str
    members: list[Member]


@dataclass
class AssetLibrary:
    kind: str
    sample_rate: int
    classes: list[AssetClass]
    backgrounds: list[np.ndarray]  # each [H, W, 3] uint8
    background_names: list[str]
    ambience: list[np.ndarray] = field(default_factory=list)  # quiet beds mixed under clips

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]


# ----------------------------------------------------------------------------- shared helpers
def _crop_to_alpha(rgba: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(rgba[..., 3] >= 128)
    if len(ys) == 0:
        raise ValueError("cut-out has an empty alpha channel")
    return rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _limit_side(img: Image.Image, side: int) -> Image.Image:
    scale = side / max(img.size)
    if scale >= 1:
        return img
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(new, Image.Resampling.LANCZOS)


def _normalise_sound(wave: np.ndarray, sample_rate: int, name: str = "recording") -> np.ndarray:
    """Trim silence at both ends and scale to unit RMS so that gains in the mixer mean the same
    thing for every recording."""
    import librosa

    wave = np.asarray(wave, dtype=np.float32)
    trimmed, _ = librosa.effects.trim(wave, top_db=40)
    if len(trimmed) >= sample_rate // 10:
        wave = trimmed
    rms = float(np.sqrt(np.mean(wave**2)))
    if rms < 1e-6:
        raise ValueError(f"{name} is silent: remove it from {STAMPS_CLASSES_FILE}")
    return (wave / rms).astype(np.float32)


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any file libsndfile understands (wav, ogg, flac), downmix to mono, resample."""
    import librosa
    import soundfile

    try:
        wave, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types; all mean the same to a user
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    wave = wave.mean(axis=1)
    if sr != sample_rate:
        wave = librosa.resample(wave, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return wave.astype(np.float32)


def _square_crop(img: Image.Image, side: int) -> np.ndarray:
    short = min(img.size)
    left, top = (img.width - short) // 2, (img.height - short) // 2
    img = img.crop((left, top, left + short, top + short)).resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ----------------------------------------------------------------------------- stamps library
def stamps_class_file() -> dict:
    with resources.files("avs_lib.world").joinpath(STAMPS_CLASSES_FILE).open() as fh:
        return json.load(fh)


def stamps_available() -> bool:
    spec = stamps_class_file()
    return Path(spec["stamps_root"]).is_dir() and Path(spec["sonic_pi_root"]).is_dir()


def _background_photos() -> list[tuple[str, Path]]:
    """Colour sample photos bundled inside the scikit-image and scikit-learn wheels."""
    found: list[tuple[str, Path]] = []
    try:
        import skimage

        data_dir = Path(skimage.__file__).parent / "data"
        for name in ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]:
            if (data_dir / name).exists():
                found.append((f"skimage:{name}", data_dir / name))
    except ImportError:
        pass
    try:
        import sklearn

        img_dir = Path(sklearn.__file__).parent / "datasets" / "images"
        for name in ["china.jpg", "flower.jpg"]:
            if (img_dir / name).exists():
                found.append((f"sklearn:{name}", img_dir / name))
    except ImportError:
        pass
    return found


def stamp_sound_path(spec: dict, stamp: str, ref: str) -> Path:
    """The file of one sound reference of the class file ``spec``: ``stamp``, the stamp's own
    ``<stamp>.ogg``, or ``sonic-pi:NAME``, a sonic-pi sample."""
    if ref == "stamp":
        return Path(spec["stamps_root"]) / f"{stamp}.ogg"
    source, name = ref.split(":", 1)
    if source != "sonic-pi":
        raise ValueError(f"{STAMPS_CLASSES_FILE}: unknown sound source {ref!r}")
    return Path(spec["sonic_pi_root"]) / f"{name}.flac"


def stamps_asset_files() -> list[Path]:
    """Every file the stamps library reads from the Debian packages: each member's cut-out and
    recordings, and the ambience (the background photos come from the Python wheels)."""
    spec = stamps_class_file()
    files = {stamp_sound_path(spec, "", ref) for ref in spec["ambience"]}
    for cls in spec["classes"]:
        for entry in cls["members"]:
            files.add(Path(spec["stamps_root"]) / f"{entry['stamp']}.png")
            files.update(stamp_sound_path(spec, entry["stamp"], ref) for ref in entry.get("sounds", ["stamp"]))
    return sorted(files)


@functools.lru_cache(maxsize=4)
def load_stamps_library(sample_rate: int = 16000) -> AssetLibrary:
    """Read the stamps library; raise :class:`AssetsUnavailable` naming what to install."""
    spec = stamps_class_file()
    stamps_root, sonic_root = Path(spec["stamps_root"]), Path(spec["sonic_pi_root"])
    if not stamps_root.is_dir() or not sonic_root.is_dir():
        raise AssetsUnavailable(
            f"the 'stamps' asset library needs {stamps_root} and {sonic_root}: "
            "install them with `apt-get install tuxpaint-stamps-default sonic-pi-samples`, "
            "or use --kind procedural"
        )

    classes = []
    for cls in spec["classes"]:
        members = []
        for entry in cls["members"]:
            stamp = entry["stamp"]
            png = stamps_root / f"{stamp}.png"
            if not png.exists():
                raise AssetsUnavailable(f"stamp image {png} is missing; reinstall tuxpaint-stamps-default")
            with Image.open(png) as img:
                rgba = _limit_side(img.convert("RGBA"), MAX_CUTOUT_SIDE)
            refs = entry.get("sounds", ["stamp"])
            paths = [stamp_sound_path(spec, stamp, r) for r in refs]
            sounds = [_normalise_sound(read_audio(p, sample_rate), sample_rate, str(p)) for p in paths]
            names = [f"{stamp}.ogg" if r == "stamp" else r for r in refs]
            members.append(Member(Path(stamp).name, _crop_to_alpha(np.asarray(rgba)), sounds, names))
        classes.append(AssetClass(cls["name"], members))

    photos = _background_photos()
    if not photos:
        raise AssetsUnavailable("no background photos found: install scikit-image or scikit-learn")
    backgrounds, bg_names = [], []
    for name, path in photos:
        with Image.open(path) as img:
            backgrounds.append(_square_crop(img, BACKGROUND_SIDE))
        bg_names.append(name)
    ambience = [
        _normalise_sound(read_audio(stamp_sound_path(spec, "", ref), sample_rate), sample_rate)
        for ref in spec["ambience"]
    ]
    return AssetLibrary("stamps", sample_rate, classes, backgrounds, bg_names, ambience)


# ----------------------------------------------------------------------------- procedural library
PROCEDURAL_CLASSES = [
    # name, shape, RGB colour, texture
    ("bell", "circle", (230, 190, 40), "solid"),
    ("drum", "square", (200, 60, 50), "stripes"),
    ("siren", "triangle", (40, 110, 220), "dots"),
    ("bird", "star", (60, 180, 90), "solid"),
    ("engine", "ring", (120, 120, 130), "checker"),
    ("flute", "cross", (180, 80, 200), "stripes"),
    ("dog", "diamond", (150, 95, 45), "dots"),
    ("cricket", "hexagon", (90, 200, 200), "gradient"),
    ("horn", "ellipse", (240, 130, 30), "checker"),
    ("bee", "pentagon", (250, 230, 120), "stripes"),
    ("clock", "crescent", (70, 70, 200), "gradient"),
    ("whistle", "arrow", (220, 90, 140), "solid"),
]
CUTOUT_SIDE = 128


def _polygon(n: int, radius: float, centre: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(centre + radius * math.cos(phase + 2 * math.pi * i / n), centre + radius * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]


def _draw_shape(shape: str, side: int, aspect: float) -> np.ndarray:
    """A binary shape mask [side, side]; ``aspect`` stretches it so that members differ a little."""
    big = side * 2  # supersample for smooth edges
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    c, r = big / 2, big * 0.46
    if shape == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif shape == "square":
        draw.rectangle([c - r * 0.85, c - r * 0.85, c + r * 0.85, c + r * 0.85], fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(3, r, c), fill=255)
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + math.pi * i / 5
            pts.append((c + rad * math.cos(ang), c + rad * math.sin(ang)))
        draw.polygon(pts, fill=255)
    elif shape == "ring":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        draw.ellipse([c - r * 0.5, c - r * 0.5, c + r * 0.5, c + r * 0.5], fill=0)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([c - w, c - r, c + w, c + r], fill=255)
        draw.rectangle([c - r, c - w, c + r, c + w], fill=255)
    elif shape == "diamond":
        draw.polygon([(c, c - r), (c + r * 0.7, c), (c, c + r), (c - r * 0.7, c)], fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, r, c, 0.0), fill=255)
    elif shape == "ellipse":
        draw.ellipse([c - r, c - r * 0.55, c + r, c + r * 0.55], fill=255)
    elif shape == "pentagon":
        draw.polygon(_polygon(5, r, c), fill=255)
    elif shape == "crescent":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        draw.ellipse([c - r * 0.4, c - r * 1.0, c + r * 1.3, c + r * 0.8], fill=0)
    elif shape == "arrow":
        draw.polygon([(c - r, c - r * 0.25), (c + r * 0.2, c - r * 0.25), (c + r * 0.2, c - r * 0.6), (c + r, c),
                      (c + r * 0.2, c + r * 0.6), (c + r * 0.2, c + r * 0.25), (c - r, c + r * 0.25)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    width = max(8, round(side * min(1.0, aspect)))
    height = max(8, round(side * min(1.0, 1 / aspect)))
    return np.asarray(img.resize((width, height), Image.Resampling.LANCZOS))


def _texture(kind: str, colour: tuple[int, int, int], h: int, w: int) -> np.ndarray:
    base = np.array(colour, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "solid":
        shade = np.ones((h, w), np.float32)
    elif kind == "stripes":
        shade = 0.65 + 0.35 * (np.sin(yy / 3.0) > 0)
    elif kind == "dots":
        shade = 1.0 - 0.45 * ((np.sin(xx / 3.5) * np.sin(yy / 3.5)) > 0.5)
    elif kind == "checker":
        shade = 0.6 + 0.4 * (((xx // 8) + (yy // 8)) % 2)
    elif kind == "gradient":
        shade = 0.5 + 0.5 * yy / max(h - 1, 1)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return np.clip(base[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)


def _synth(family: str, base_freq: float, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """One procedural recording. Families differ strongly in spectrum and time structure."""
    n = int(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    rng = np.random.default_rng(int(base_freq * 1000) + len(family))
    if family == "harmonic":  # tone with vibrato and 4 harmonics
        phase = 2 * np.pi * base_freq * t + 0.6 * np.sin(2 * np.pi * 5.5 * t)
        wave = sum(np.sin(k * phase) / k for k in range(1, 5))
    elif family == "noise_band":  # band-passed noise around 4 x base
        from scipy.signal import butter, sosfilt

        lo, hi = base_freq * 3, min(base_freq * 5, sample_rate / 2 * 0.95)
        sos = butter(4, [lo, hi], btype="band", fs=sample_rate, output="sos")
        wave = sosfilt(sos, rng.standard_normal(n))
    elif family == "chirp":  # repeated upward sweeps
        period = 0.25
        local = np.mod(t, period)
        freq = base_freq * (1 + 3 * local / period)
        wave = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
    elif family == "pulse_train":  # clicks filtered by a resonance
        wave = np.zeros(n)
        step = max(1, int(sample_rate / (base_freq / 40)))
        wave[::step] = 1.0
        decay = np.exp(-np.arange(int(0.02 * sample_rate)) / (0.004 * sample_rate))
        ring = decay * np.sin(2 * np.pi * base_freq * 2 * np.arange(len(decay)) / sample_rate)
        wave = np.convolve(wave, ring)[:n]
    elif family == "am_tone":  # amplitude-modulated tone
        wave = np.sin(2 * np.pi * base_freq * 1.5 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 9 * t))
    else:
        raise ValueError(f"unknown sound family {family!r}")
    wave = np.asarray(wave, dtype=np.float64)
    return (wave / (np.sqrt(np.mean(wave**2)) + 1e-12)).astype(np.float32)


SOUND_FAMILIES = ["harmonic", "noise_band", "chirp", "pulse_train", "am_tone"]


def _procedural_backgrounds(count: int, side: int, seed: int) -> list[np.ndarray]:
    """Smooth colour fields: low-resolution noise upsampled, so that objects stand out."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        low = rng.uniform(40, 200, size=(4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, size=(side, side, 3))
        out.append(np.clip(arr, 0, 255).astype(np.uint8))
    return out


@functools.lru_cache(maxsize=4)
def build_procedural_library(sample_rate: int = 16000, seed: int = 0) -> AssetLibrary:
    """Twelve classes, each a shape/colour/texture and 2-4 sound subtypes of different families.

    A member is one subtype: it looks like its class (with a small change of aspect ratio) and
    has one recording. Subtype families are picked per class without repetition, so the sounds
    of one class differ strongly (a cat's meow and hiss), which is DDESeg's intra-class variation.
    """
    rng = np.random.default_rng(seed)
    classes = []
    for index, (name, shape, colour, texture) in enumerate(PROCEDURAL_CLASSES):
        base_freq = 180.0 * 2 ** (index * 0.33)
        n_subtypes = int(rng.integers(2, 5))
        families = rng.choice(SOUND_FAMILIES, size=n_subtypes, replace=False)
        members = []
        for sub, family in enumerate(families):
            aspect = float(rng.uniform(0.8, 1.25))
            alpha = _draw_shape(shape, CUTOUT_SIDE, aspect)
            rgb = _texture(texture, colour, *alpha.shape)
            rgba = np.dstack([rgb, alpha])
            sound = _synth(str(family), base_freq * (1 + 0.07 * sub), sample_rate)
            members.append(Member(f"{name}_{family}", _crop_to_alpha(rgba), [sound], [f"synth:{family}"]))
        classes.append(AssetClass(name, members))
    backgrounds = _procedural_backgrounds(8, BACKGROUND_SIDE, seed + 1)
    return AssetLibrary("procedural", sample_rate, classes, backgrounds, [f"procedural:{i}" for i in range(8)])


def load_library(kind: str, sample_rate: int = 16000, warn_on_fallback: bool = True) -> AssetLibrary:
    """``stamps`` (falls back to ``procedural`` with one warning when not installed) or ``procedural``."""
    if kind == "procedural":
        return build_procedural_library(sample_rate)
    if kind != "stamps":
        raise ValueError(f"unknown asset library {kind!r}: choose 'stamps' or 'procedural'")
    try:
        return load_stamps_library(sample_rate)
    except AssetsUnavailable as err:
        if warn_on_fallback:
            warnings.warn(f"{err}; falling back to the procedural library", stacklevel=2)
        return build_procedural_library(sample_rate)


def default_kind() -> str:
    """The default world's library: ``stamps`` where installed, else ``procedural``."""
    return "stamps" if stamps_available() else "procedural"
