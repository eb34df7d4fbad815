"""One way to load pretrained weights into any module of the workbench: read the file, remap its
keys explicitly, load strictly, and return a report of what did not match (never print it).

Every weight file the workbench reads goes through ``load_weights``: MiT / PVT-v2 backbones
(``avs_lib.models.mit``), EfficientNet-Lite0 (``avs_lib.models.efficientnet``), VGGish
(``avs_lib.audio.encoders``) and the encoders added later. A caller states, per model,
which prefixes to strip, which of the model's tensors are new by design (fusion blocks, an
optional PCA) and which of the file's tensors are dropped on purpose (a classification head).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class LoadReport:
    """What a load matched: ``ok`` when nothing the model needs is missing or mis-shaped."""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected by the model, absent from the file
    new_in_model: list[str] = field(default_factory=list)  # new by design (e.g. fusion), trained from scratch
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model (not dropped on purpose)
    shape_mismatches: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.shape_mismatches)

    def __str__(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors; {len(self.new_in_model)} are new in the model "
                 "(trained from scratch)"]
        for name, keys in (("missing from the file", self.missing), ("unused from the file", self.unexpected),
                           ("shape mismatches", self.shape_mismatches)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"{name}: {shown}")
        return "\n".join(lines)


def read_state_dict(source, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a path or a dict, unwrapping the usual ``state_dict``/``model``/``module``
    nesting. A missing or unreadable file is an error that names it."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist; download it (see the README, "
                                    "'Models') and pass its local path")
        try:
            source = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError for broken files
            raise ValueError(f"{what} {path} cannot be read ({type(error).__name__}: {error}); "
                             "the file is truncated or not a PyTorch checkpoint: download it again") from error
    for key in ("state_dict", "model", "module"):
        if isinstance(source, dict) and key in source and isinstance(source[key], dict):
            source = source[key]
    if not isinstance(source, dict):
        raise ValueError(f"{what}: expected a state dict (a mapping of names to tensors), got {type(source).__name__}")
    return dict(source)


def strip_prefixes(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove the prefixes training frameworks add (``module.``, ``backbone.``, ``sed_model.``...)."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_weights(module: nn.Module, source, *, prefixes: tuple[str, ...] = (), rename=None,
                 new_markers: tuple[str, ...] = (), drop: tuple[str, ...] = (), strict: bool = True,
                 what: str = "checkpoint") -> LoadReport:
    """Load ``source`` (a path or a state dict) into ``module`` and report what matched.

    ``prefixes`` are stripped from the file's keys, then ``rename`` (a callable key -> key) maps
    the remaining names to the module's. A module tensor whose name contains one of
    ``new_markers`` is new by design and never counts as missing; file tensors starting with one
    of ``drop`` are dropped silently. ``strict``: a missing or mis-shaped tensor raises a
    ValueError carrying the report; otherwise the matching tensors load and the report says the rest.
    """
    incoming = strip_prefixes(read_state_dict(source, what), prefixes)
    if rename is not None:
        incoming = {rename(k): v for k, v in incoming.items()}
    own = module.state_dict()
    report, to_load = LoadReport(source=str(source) if isinstance(source, (str, Path)) else what), {}
    for key, value in own.items():
        if key not in incoming:
            (report.new_in_model if any(m in f".{key}" for m in new_markers) else report.missing).append(key)
        elif tuple(incoming[key].shape) != tuple(value.shape):
            report.shape_mismatches.append(f"{key}: file {tuple(incoming[key].shape)} vs model {tuple(value.shape)}")
        else:
            to_load[key] = incoming[key]
            report.loaded.append(key)
    report.unexpected = [k for k in incoming if k not in own and not k.startswith(drop)]
    if strict and not report.ok:
        raise ValueError(f"{what} does not match the model:\n{report}")
    module.load_state_dict(to_load, strict=False)
    return report
