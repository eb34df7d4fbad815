"""Training checkpoints that say what they are: a format tag, the run's config and a checksum.

A checkpoint is still one ``torch.save`` file (``torch.load(path)["model"]`` works as before), a dict
with these keys besides the training state:

* ``format`` = ``"avs-checkpoint"`` and ``format_version``: a file without them is not a checkpoint
  of this workbench (a plain state dict, a memory ``.npz``, another project's file) and is named as
  such;
* ``config``: the ``TrainConfig`` of the run, from which ``load_trained`` rebuilds the model;
* ``checksum``: SHA-256 over everything else in the file (``content_checksum``: the model's and the
  optimiser's tensors, the config, the epoch, the log), so a file damaged after it was written (not
  only a torn one) is caught on load, wherever the damage is. Version-1 files, whose checksum
  covered the model, the config and the epoch only, are still read and checked so.

``read_checkpoint`` turns every way a file can be unusable (missing, 0 bytes, truncated, damaged,
another kind of file, a newer format) into one ``CheckpointError`` that names the file and says what
to do; ``read_torch_file`` is its first step, shared with the cached audio encoders. Files are
written with ``avs_lib.core.files.atomic_write``, so a crash leaves the previous one.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from avs_lib.core.errors import CheckpointError
from avs_lib.core.files import atomic_write

CHECKPOINT_FORMAT = "avs-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the checksum covers the whole state (optimiser included)


def _update_tensor(digest, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    # bf16 and friends have no numpy dtype: hash the raw bytes through a uint8 view
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def state_checksum(model_state: dict, config: dict, epoch: int) -> str:
    """Version 1's checksum: SHA-256 over the model's tensors (in name order), the config (as sorted
    JSON) and the epoch. Kept to verify files written before version 2."""
    digest = hashlib.sha256()
    for name in sorted(model_state):
        tensor = model_state[name]
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            _update_tensor(digest, tensor)
        else:
            digest.update(repr(tensor).encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(epoch).encode())
    return digest.hexdigest()


def _update_value(digest, value) -> None:
    """Feed a nested value to ``digest``: mappings in key order, sequences in order, tensors and arrays
    by dtype, shape and bytes, anything else by its repr (the same after a torch.save round trip)."""
    if isinstance(value, torch.Tensor):
        digest.update(b"T")
        _update_tensor(digest, value)
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        digest.update(f"A{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _update_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _update_value(digest, item)
    else:
        digest.update(repr(value).encode())


def content_checksum(state: dict, leave_out: str = "checksum") -> str:
    """SHA-256 over every entry of ``state`` but ``leave_out`` (tensors of the model, the optimiser's
    moments and step counts, the config, the log), so that no byte of what is loaded goes unchecked."""
    digest = hashlib.sha256()
    _update_value(digest, {k: v for k, v in state.items() if k != leave_out})
    return digest.hexdigest()


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` (needs ``model``, ``config`` and ``epoch``) atomically with the format header
    and the checksum."""
    state = dict(state, format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_VERSION)
    state.pop("checksum", None)  # a state read from a file carries its old one
    state["checksum"] = content_checksum(state)
    return atomic_write(path, lambda fh: torch.save(state, fh))


def _what_is_it(path: Path) -> str:
    """A guess at what a file that torch cannot read is, for the error message."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "it is truncated or damaged"
    if any(n.endswith(".npy") for n in names):
        return "it is a NumPy .npz archive (a semantic memory?), not a checkpoint"
    return "it is a zip archive torch cannot read (truncated or damaged)"


def read_torch_file(path: Path, what: str, advice: str, map_location="cpu"):
    """``torch.load(path)``, with an empty, truncated or foreign file one CheckpointError naming it,
    what it seems to be and ``advice`` (what to do), instead of torch's traceback."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): the process that wrote it was killed or the disk "
                              f"was full; {advice}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # RuntimeError (zip central directory), EOFError, UnpicklingError, ...
        said = (str(error).splitlines() or [""])[0].split(". ")[0][:120]  # torch's first sentence
        raise CheckpointError(f"{what} {path} ({size} bytes) cannot be read: {_what_is_it(path)} "
                              f"({type(error).__name__}: {said}); {advice}") from None


def read_checkpoint(path: str | Path, map_location="cpu", what: str = "checkpoint") -> dict:
    """The verified contents of a checkpoint written by ``save_checkpoint`` (or by ``avs train``
    before the format header existed: then only its structure is checked)."""
    path = Path(path)
    advice = (f"resume from {path.with_name('best.pt')} (copy it to last.pt) or start the run again"
              if path.name == "last.pt" else "train it again or pass another checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; pass the best.pt or last.pt of a run written by "
                              "`avs train`")
    state = read_torch_file(path, what, advice, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} holds a {type(state).__name__}, not a checkpoint written by `avs train`; "
                              "pass the best.pt or last.pt of a run")
    if "model" not in state or "config" not in state:
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            names = ", ".join(list(state)[:3])
            raise CheckpointError(f"{what} {path} is a plain state dict ({len(state)} tensors: {names}, ...), not a "
                                  "checkpoint written by `avs train`: it has no config to rebuild the model from. Pass "
                                  "the best.pt of a run, or load the weights into a model you build "
                                  "(avs_lib.models.weights.load_weights)")
        raise CheckpointError(f"{what} {path} lacks the keys {sorted({'model', 'config'} - set(state))} (it has "
                              f"{sorted(state)[:8]}); it was not written by `avs train`: pass the best.pt of a run")
    if "format" in state:
        if state["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{what} {path} has format {state['format']!r}, not {CHECKPOINT_FORMAT!r}")
        version = state.get("format_version")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(f"{what} {path} has format version {version}; this workbench reads up to "
                                  f"{CHECKPOINT_VERSION}: update the workbench (git pull) to read it")
        expected = (state_checksum(state["model"], state["config"], state["epoch"]) if version == 1
                    else content_checksum(state))
        if state.get("checksum") != expected:
            raise CheckpointError(f"{what} {path} fails its checksum (the file was changed or damaged after it was "
                                  f"written); {advice}")
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict, path: str | Path, config: dict) -> None:
    """``model.load_state_dict(state_dict)`` strictly; a mismatch is one CheckpointError that says how
    the weights differ from the model the checkpoint's config describes (not torch's list of every
    tensor)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing from the file", missing), ("not in the model", unexpected),
                            ("of another shape (file vs model)", shapes)):
            if keys:
                parts.append(f"{len(keys)} tensor(s) {label}, e.g. {keys[0]}")
        described = ", ".join(f"{k}={config.get(k)!r}" for k in ("model", "size", "variant", "ablation") if k in config)
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model its config describes "
                              f"({described}): {'; '.join(parts)}. The config inside the file was edited or the file "
                              "mixes two runs: use the checkpoint the run wrote, unchanged")
    model.load_state_dict(state_dict)
