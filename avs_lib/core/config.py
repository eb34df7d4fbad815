"""Configs as typed dataclasses, checked when they are read.

``TrainConfig`` holds everything a training run reads (model, data, optimisation, running); the
model's own switches (``DDESegConfig`` / ``AVSACConfig`` fields) ride in ``switches``. k, m and
``audio_dim`` live here and only here: the memory is built with them and the model takes its sizes
from the memory.

``load_config(path, overrides)`` reads a YAML file and ``key=value`` overrides and checks every
value before any work starts: an unknown key (with the nearest known one), a wrong type or an
unknown choice is a ``ConfigError`` that names the key, where it came from (the file or the
override) and what is allowed. ``check_values`` does the same for any config dataclass; the model
configs declare their string choices in a ``CHOICES`` class attribute and are checked with it.

This module sits at the bottom of the package: at import time it imports only ``avs_lib.core.errors``
and ``avs_lib.core.paths`` (the models' configs are read when a config's switches are checked, and
``avs_lib.data.layouts``, which imports only pathlib, when ``outline_weight`` is).
"""
from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from avs_lib.core.errors import ConfigError
from avs_lib.core.paths import workbench_path


@dataclass
class TrainConfig:
    # model
    model: str = "ddeseg"  # ddeseg, baseline, avsac
    size: str = "tiny"  # tiny, b0, b5
    variant: str = "paper"  # paper, released
    ablation: str | None = "full"  # baseline, derivation, enhancement, full (ddeseg only)
    switches: dict = field(default_factory=dict)  # any other DDESegConfig / AVSACConfig field
    # data
    data_root: str = "data/default_world"
    layout: str = "ms3"
    image_size: int = 96
    cache_dir: str | None = None  # None: <data_root>/cache
    audio_encoder: str = "small"  # small (pretrained on the world's mixture stream, avs_lib.audio.pretrain), vggish:PATH, htsat:PATH, precomputed:DIR, birdnet; oracle / oracle-heard (composed worlds: the true sounding classes, the headroom's ceiling)
    memory_root: str | None = None  # where the single-source (S4) clips for the memory live; None: data_root
    memory_file: str | None = None  # a saved memory (.npz) or DDESeg's released bank (.npy + label2idx.json) used as is; None: Eq. 2-4 on memory_root
    audio_dim: int = 128
    encoder_epochs: int = 15
    visual_pretrain_steps: int = 600  # switches.pretrained_backbone=world: batches of the world's visual pretraining
    k: int = 3
    m: int = 5
    zero_audio: bool = False  # trivial baseline: the model never hears anything
    # optimisation
    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 4e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    fused_adamw: bool = False  # AdamW's fused kernel, one call for every parameter (CPU and CUDA): on this CPU the main job's optimiser step takes 4-8 ms instead of 16-28 (benchmarks/bench_train.py --fused-adamw); not bit-identical to the per-parameter loop, so off where the committed numbers were measured
    backbone_lr_scale: float = 1.0  # the pretrained backbone's learning rate as a fraction of lr (fine-tuning practice: 0.1)
    bn_momentum: float | None = 0.1  # every BatchNorm's running-statistics momentum while training (None: each layer's own; Lite0's is TF's 0.01); evaluation reads these statistics, training does not (avs_lib.training.loop.set_batchnorm_momentum)
    avfs_weight: float = 1.0  # AVSAC only
    capacity_check: float = 0.0  # OUTSIDE THE PAPER: weight of an auxiliary on/off-screen loss on the elimination scores (0: off)
    attention_supervision: float = 0.0  # OUTSIDE THE PAPER: weight of an auxiliary loss that shows the fusion's cross-attention where each token's object is (composed worlds; 0: off)
    outline_weight: float = 0.0  # OUTSIDE THE PAPER: weight of a BCE over the pixels within 2 px of the true outline (binary masks: s4, ms3; avs_lib.training.losses.outline_loss; 0: off)
    flip: bool = True
    augment: str = "flip"  # flip (a flip of the held frames, the composed worlds' setting), released (DDESeg's: box-guided crop, flip, colour jitter; the AVSBench configs), avsbench (resize and crop), none (avs_lib.data.augment)
    train_clips: str = "files"  # files (the world's written training split, every epoch), fresh (composed worlds, ms3/s4: each epoch composes new training clips from the world's recipe; val/test stay the files; avs_lib.data.fresh)
    loader: str = "auto"  # auto (stream a dataset whose three splits, decoded, pass 2 GiB; else hold them in memory), memory, stream (avs_lib.data.loader)
    loader_workers: int = 2  # worker processes that decode streamed frames (0: in the training process)
    validations_per_epoch: int = 1  # >1: also validate inside each epoch, for a finer learning curve (val J&F against frames seen)
    # running
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    bf16: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPU too (AVX512-BF16 / AMX CPUs; benchmarks/bench_train.py says whether it pays)
    channels_last: bool = False  # NHWC weights and images (pays for CNN backbones in fp32 on CPU, not with bf16; see the README's Benchmarks)
    eval_batch_size: int = 5
    convention: str = "per_frame"
    out: str = "runs/default"
    resume: bool = False
    stop_after_epoch: int | None = None  # stop early (the schedule still spans `epochs`); resume later
    progress: bool = True
    threads: int | None = None
    tracking: str = "tensorboard"  # tensorboard, wandb (offline; the optional extra), both, none (avs_lib.training.tracking)

    CHOICES: typing.ClassVar[dict] = {
        "model": ("ddeseg", "baseline", "avsac"),
        "size": ("tiny", "b0", "b5"),
        "variant": ("paper", "released"),
        "ablation": ("baseline", "derivation", "enhancement", "full", None),
        "layout": ("s4", "ms3", "avss", "avss-ddeseg", "vpo"),
        "convention": ("per_frame", "avsbench", "dataset"),
        "device": ("auto", "cpu", "cuda", "cuda:N"),
        "tracking": ("tensorboard", "wandb", "both", "none"),
        "augment": ("released", "avsbench", "flip", "none"),
        "loader": ("auto", "memory", "stream"),
        "train_clips": ("files", "fresh"),
    }
    POSITIVE: typing.ClassVar[tuple] = ("image_size", "audio_dim", "encoder_epochs", "visual_pretrain_steps", "k", "m", "epochs", "batch_size",
                                        "lr", "eval_batch_size", "threads", "stop_after_epoch",
                                        "validations_per_epoch", "backbone_lr_scale")


# The model takes these sizes from the memory it is built with (``build_model(memory=...)``).
MEMORY_SET_SWITCHES = ("k", "m", "audio_dim", "memory_classes")


# ----------------------------------------------------------------------------- checking values
def _type_name(hint) -> str:
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "dict": "a mapping (key: value)"}.get(hint.__name__, hint.__name__)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = " or ".join(_type_name(a) for a in args)
    return names + (" or null" if type(None) in typing.get_args(hint) else "")


def _coerce(value, hint):
    """``value`` as type ``hint``, or raise TypeError. YAML 1.1 reads ``1e-3`` as a string; a float
    field takes it as the number it spells. Integers never take a fraction."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for option in typing.get_args(hint):
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except TypeError:
                pass
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError from None
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if hint is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    return value


def _in_choices(value, allowed: tuple) -> bool:
    if value in allowed:
        return True
    # "cuda:N" stands for any device index
    return isinstance(value, str) and "cuda:N" in allowed and value.startswith("cuda:") and value[5:].isdigit()


def check_values(cls, values: dict, sources: dict | str, prefix: str = "") -> dict:
    """Check ``values`` against the dataclass ``cls``: known keys, types (coerced where a YAML
    reading is unambiguous) and the string choices in ``cls.CHOICES``. ``sources`` says where each
    key came from (one string for all, or {key: where}); ``prefix`` is put before each key named in a
message (``switches.``). Returns the checked values."""
    where = (lambda key: sources.get(key, "the config")) if isinstance(sources, dict) else (lambda key: sources)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    checked = {}
    for key, value in values.items():
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{prefix}{near[0]}'? " if near else ""
            raise ConfigError(f"{where(key)}: unknown key '{prefix}{key}' for {cls.__name__}; {hint}"
                              f"known keys: {', '.join(known)}")
        try:
            value = _coerce(value, hints[key])
        except TypeError:
            raise ConfigError(f"{where(key)}: '{prefix}{key}' must be {_type_name(hints[key])}, got {value!r} "
                              f"({type(value).__name__})") from None
        allowed = getattr(cls, "CHOICES", {}).get(key)
        if allowed is not None and not _in_choices(value, allowed):
            raise ConfigError(f"{where(key)}: '{prefix}{key}' is {value!r}; choose one of "
                              + ", ".join("null" if a is None else str(a) for a in allowed))
        if key in getattr(cls, "POSITIVE", ()) and value is not None and value <= 0:
            raise ConfigError(f"{where(key)}: '{prefix}{key}' must be positive, got {value!r}")
        checked[key] = value
    return checked


def model_config_class(model: str):
    # Imported here so that this module stays at the bottom of the package.
    from avs_lib.models import AVSACConfig, DDESegConfig

    return AVSACConfig if model == "avsac" else DDESegConfig


def _without_ddeseg_file_switches(switches: dict, sources: dict) -> tuple[dict, dict]:
    """A DDESeg config file read for AVSAC (``--config configs/tiny_world.yaml model=avsac``): the
    file's DDESeg-only switches (``fusion_query``, the decoder's stride, ...) describe the DDESeg
    model it was written for and are set aside, as ``avs ablation`` does for its AVSAC row
    (``avsac_switches``). The same switches given on the command line are still refused, and so is
    a file's ``frozen_stages`` (AVSAC's backbone always trains: beside DDESeg it would differ by
    more than the decoder)."""
    from avs_lib.models import AVSACConfig, DDESegConfig

    avsac, ddeseg = {f.name for f in fields(AVSACConfig)}, {f.name for f in fields(DDESegConfig)}
    aside = {k for k in switches if k in ddeseg and k not in avsac and k != "frozen_stages"
             and str(sources.get(k, "")).startswith("config ")}
    return ({k: v for k, v in switches.items() if k not in aside},
            {k: v for k, v in sources.items() if k not in aside})


def config_from_dict(values: dict, sources: dict | str = "the config") -> TrainConfig:
    """A checked ``TrainConfig``; ``switches`` are checked against the chosen model's config."""
    checked = check_values(TrainConfig, values, sources)
    model = checked.get("model", TrainConfig.model)
    switches = checked.get("switches") or {}
    if switches:
        switch_sources = ({k: sources.get(f"switches.{k}", sources.get("switches", "the config")) for k in switches}
                          if isinstance(sources, dict) else sources)
        from_memory = sorted(set(switches) & set(MEMORY_SET_SWITCHES))
        if from_memory:
            where = switch_sources if isinstance(switch_sources, str) else switch_sources[from_memory[0]]
            raise ConfigError(f"{where}: 'switches.{from_memory[0]}' is set from the semantic memory; set the "
                              "top-level keys k, m and audio_dim instead (the memory is built with them)")
        if model == "avsac" and isinstance(switch_sources, dict):
            switches, switch_sources = _without_ddeseg_file_switches(switches, switch_sources)
        checked["switches"] = check_values(model_config_class(model), switches, switch_sources, prefix="switches.")
    config = TrainConfig(**checked)
    if config.bn_momentum is not None and not 0 < config.bn_momentum <= 1:
        where = sources.get("bn_momentum", "the config") if isinstance(sources, dict) else sources
        raise ConfigError(f"{where}: bn_momentum={config.bn_momentum} must lie in (0, 1] (0.1: PyTorch's default; "
                          "null: each BatchNorm layer keeps its own)")
    from avs_lib.data.layouts import SEMANTIC_LAYOUTS  # pathlib only, like the models' configs read above

    if config.outline_weight < 0 or (config.outline_weight and config.layout in SEMANTIC_LAYOUTS):
        where = sources.get("outline_weight", "the config") if isinstance(sources, dict) else sources
        why = ("must not be negative" if config.outline_weight < 0 else
               f"weighs binary masks' outlines (the s4 and ms3 layouts), not the {config.layout!r} layout's classes")
        raise ConfigError(f"{where}: outline_weight={config.outline_weight} {why}; 0 turns it off")
    if config.warmup_epochs < 0 or config.min_lr < 0 or config.weight_decay < 0 or config.loader_workers < 0:
        raise ConfigError(f"{sources if isinstance(sources, str) else 'the config'}: warmup_epochs, min_lr and "
                          "weight_decay and loader_workers must not be negative")
    return config


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with YAML typing (``epochs=3``, ``bf16=false``, ``switches.tau=0.5``)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value (for example epochs=3)")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value  # a bare string YAML cannot read; the type check decides


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path`` (a relative path missing from the working folder is read from the
    repository root, as data paths are); a missing, unreadable or non-mapping file is a ConfigError."""
    import yaml

    path = Path(path)
    if not path.is_file() and not path.is_absolute():
        from_root = workbench_path(path)
        path = from_root if from_root.is_file() else path
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist (see configs/ for examples)")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{at}: {getattr(error, 'problem', error)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of key: value lines, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] = (), **values) -> TrainConfig:
    """A checked ``TrainConfig`` from a YAML file (optional), then typed keyword values (what a
    notebook passes: ``load_config(layout="ms3", epochs=3, switches={"num_tokens": 5})``), then
    ``key=value`` overrides (what the command line passes); later sources win."""
    given, values, sources = values, {}, {}
    if path is not None:
        values = read_yaml(path)
        sources = {key: f"config {path}" for key in values}
        for key in (values.get("switches") or {}) if isinstance(values.get("switches"), dict) else {}:
            sources[f"switches.{key}"] = f"config {path}"
    for key, value in given.items():
        if key == "switches" and isinstance(value, dict) and isinstance(values.get("switches"), dict):
            value = {**values["switches"], **value}
        values[key] = str(value) if isinstance(value, Path) else value
        sources[key] = f"argument {key}={value!r}"
        for switch in value if key == "switches" and isinstance(value, dict) else ():
            sources[f"switches.{switch}"] = f"argument switches={{'{switch}': {value[switch]!r}}}"
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("switches."):
            if not isinstance(values.get("switches"), dict):
                values["switches"] = {}
            values["switches"][key.split(".", 1)[1]] = value
            sources[key] = f"override '{text}'"
        else:
            values[key] = value
            sources[key] = f"override '{text}'"
    config = config_from_dict(values, sources)
    smallest = _smallest_image_size(config)
    if smallest is not None and config.image_size < smallest:
        where = sources.get("image_size", "the config") if isinstance(sources, dict) else sources
        raise ConfigError(f"{where}: image_size={config.image_size} is too small for the {config.model} model (size "
                          f"{config.size}, variant {config.variant}): its backbone needs image_size >= {smallest}; use "
                          f"image_size={smallest} or more")
    return config


def check_device(config: TrainConfig) -> None:
    """The config's device must exist on this machine: checked when a run starts (``avs train``,
    ``train``), before any data work. Not when a config is read: a GPU config (configs/*_b5_*.yaml)
    or a checkpoint trained on a GPU is still read, and evaluated, on a CPU."""
    if not config.device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(config.device[5:]) if config.device.startswith("cuda:") else 0
    if index >= count:
        have = f"{count} CUDA device(s)" if count else f"no CUDA (torch {torch.__version__})"
        raise ConfigError(f"device={config.device!r}, but this machine has {have}; use device=cpu (or device=auto, "
                          "which takes a GPU when there is one)")


def _smallest_image_size(config: TrainConfig) -> int | None:
    """The smallest image_size the configured model's MiT backbone takes (None: another backbone)."""
    from dataclasses import replace

    from avs_lib.models.mit import MIT_SIZES, smallest_input_size

    switches = config.switches or {}
    if switches.get("backbone", "mit") != "mit" or config.size not in MIT_SIZES:
        return None
    released = config.model != "avsac" and config.variant == "released"
    stride = (switches.get("first_stride") or (2 if released else 4)) if config.model != "avsac" else 4
    return smallest_input_size(replace(MIT_SIZES[config.size], first_stride=stride))
