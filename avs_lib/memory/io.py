"""The semantic memory's files: a memory saved and verified when read (``save_memory`` / ``load_memory``), DDESeg's released bank, and a world's memory built once and cached.

* ``save_memory`` / ``load_memory``: an ``.npz`` with a header (format, version, checksum of the
  arrays); a damaged or foreign file is one ``MemoryFileError`` that says how to rebuild it.
* ``load_released_bank``: DDESeg's released ``.npy`` feature bank (k = 1).
* ``build_world_memory``: Eq. 2-4 (``avs_lib.memory.build``) on the single-source S4 training
  embeddings, saved to and reused from ``<cache>/memory_*.npz``.
* ``load_memory_file``: the memory a config names (``memory_file``), checked against the config.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from avs_lib.analysis.truth import sounds_in
from avs_lib.audio.registry import frame_embeddings
from avs_lib.core.cache import data_identity, note_rebuild
from avs_lib.core.errors import ConfigError, MemoryFileError
from avs_lib.core.files import atomic_write
from avs_lib.data.datasets import AVSDataset, load_sources, world_classes
from avs_lib.memory.build import SemanticMemory, build_semantic_memory


MEMORY_FORMAT_VERSION = 2  # 2: the header names the format and holds a checksum of the arrays


# ----------------------------------------------------------------------------- file format
MEMORY_FORMAT = "avs-semantic-memory"


MEMORY_ARRAYS = ("centroids", "subcentroids", "features", "inertia")


def _rebuild(path: Path) -> str:
    return (f"rebuild the memory: delete {path} and run again (a memory in a cache folder is rebuilt by `avs train` "
            "and prepare()), or write a new one with build_semantic_memory + save_memory")


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays in MEMORY_ARRAYS order: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in MEMORY_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def save_memory(memory: SemanticMemory, path: str | Path) -> Path:
    """One .npz: the tensors, plus a JSON header written first: format and version, the memory's
    config (classes, k, m, dim, meta: encoder, seed, source hash) and a SHA-256 of the arrays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(memory, name).detach().cpu().numpy() for name in MEMORY_ARRAYS}
    header = {"format": MEMORY_FORMAT, "format_version": MEMORY_FORMAT_VERSION, "class_names": memory.class_names,
              "k": memory.k, "m": memory.m, "dim": memory.dim, "meta": memory.meta,
              "arrays": {n: {"dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()},
              "checksum": arrays_checksum(arrays)}
    encoded = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    # the header is the archive's first member, so a reader checks it before touching the arrays
    atomic_write(path, lambda fh: np.savez(fh, header=encoded, **arrays))
    return path


def _read_header(path: Path, data) -> dict:
    names = set(data.files)
    if "header" not in names:
        if any(n.endswith("data.pkl") for n in names):
            raise MemoryFileError(f"{path} is a training checkpoint (torch.save), not a semantic memory; pass the "
                                  "memory .npz (memory_*.npz in the world's cache folder), or "
                                  "load the checkpoint with avs_lib.training.loop.load_trained")
        raise MemoryFileError(f"{path} has no header (arrays: {sorted(names)}): it was not written by save_memory; "
                              f"{_rebuild(path)}")
    try:
        header = json.loads(bytes(data["header"]).decode())
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise MemoryFileError(f"{path}: its header cannot be read ({type(error).__name__}); the file is damaged; "
                              f"{_rebuild(path)}") from None
    if not isinstance(header, dict):
        raise MemoryFileError(f"{path}: its header is not a JSON object; {_rebuild(path)}")
    return header


def load_memory(path: str | Path, class_names: list[str] | None = None, dim: int | None = None,
                device: torch.device | str = "cpu", drop_background: bool = False) -> SemanticMemory:
    """Load a memory file, verified: the header (format, version, the memory's config) is read and
    checked before any array, then the arrays against the header's shapes and checksum. When the
    model's classes or feature size are given, they must match. Every way the file can be unusable
    is one ``MemoryFileError`` (a ValueError) that names the file and says how to rebuild it.
    Version 1 files (before the checksum) are read with their structure checked.
    A ``.npy`` file is DDESeg's released bank (``load_released_bank``, with ``label2idx.json``;
    ``drop_background`` leaves its background row out; the workbench's own files have none)."""
    path = Path(path)
    if path.suffix == ".npy":
        return load_released_bank(path, class_names=class_names, dim=dim, device=device, drop_background=drop_background)
    if not path.exists():
        raise FileNotFoundError(f"{path}: semantic memory file not found; build one with build_semantic_memory and save_memory")
    if path.stat().st_size == 0:
        raise MemoryFileError(f"{path} is empty (0 bytes): the process writing it was killed; {_rebuild(path)}")
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise MemoryFileError(f"{path} is not a readable .npz archive (truncated, damaged or another kind of file: "
                              f"{type(error).__name__}); {_rebuild(path)}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise MemoryFileError(f"{path} holds a single array, not a memory archive (.npz); {_rebuild(path)}")
    with data:
        header = _read_header(path, data)
        version = header.get("format_version")
        if header.get("format", MEMORY_FORMAT) != MEMORY_FORMAT:
            raise MemoryFileError(f"{path} has format {header.get('format')!r}, not a semantic memory; {_rebuild(path)}")
        if not isinstance(version, int) or not 1 <= version <= MEMORY_FORMAT_VERSION:
            newer = isinstance(version, int) and version > MEMORY_FORMAT_VERSION
            raise MemoryFileError(f"{path}: memory format version {version} ({'newer than' if newer else 'unknown to'} "
                                  f"this workbench, which reads 1 to {MEMORY_FORMAT_VERSION}); {_rebuild(path)}"
                                  + (", or update the workbench (git pull)" if newer else ""))
        for key in ("class_names", "k", "m", "dim"):
            if key not in header:
                raise MemoryFileError(f"{path}: its header lacks '{key}'; {_rebuild(path)}")
        missing = [n for n in MEMORY_ARRAYS if n not in data.files]
        if missing:
            raise MemoryFileError(f"{path} lacks the array(s) {missing} (it has {sorted(set(data.files) - {'header'})}); "
                                  f"{_rebuild(path)}")
        if class_names is not None and list(class_names) != header["class_names"]:
            missing_c = sorted(set(class_names) - set(header["class_names"]))
            extra = sorted(set(header["class_names"]) - set(class_names))
            raise MemoryFileError(f"{path}: the memory's classes do not match the model's (missing {missing_c}, extra "
                                  f"{extra}, or another order); rebuild the memory for this class list")
        if dim is not None and dim != header["dim"]:
            raise MemoryFileError(f"{path}: memory features are {header['dim']}-d but the model expects {dim}-d "
                                  f"(memory built with encoder '{header.get('meta', {}).get('encoder')}')")
        try:
            arrays = {name: data[name] for name in MEMORY_ARRAYS}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise MemoryFileError(f"{path}: its arrays cannot be read ({type(error).__name__}: the file is damaged); "
                                  f"{_rebuild(path)}") from None
    C, k, m, d = len(header["class_names"]), header["k"], header["m"], header["dim"]
    expected = {"centroids": (C, d), "subcentroids": (C, k, d), "features": (C, k, m, d), "inertia": (C,)}
    wrong = [f"{n} {arrays[n].shape} (expected {expected[n]})" for n in MEMORY_ARRAYS if arrays[n].shape != expected[n]]
    if wrong:
        raise MemoryFileError(f"{path}: arrays do not match its header ({'; '.join(wrong)}); {_rebuild(path)}")
    if version >= 2 and header.get("checksum") != arrays_checksum(arrays):
        raise MemoryFileError(f"{path} fails its checksum (changed or damaged after it was written); {_rebuild(path)}")
    tensors = {name: torch.from_numpy(arrays[name].copy()).to(device) for name in MEMORY_ARRAYS}
    return SemanticMemory(tensors["centroids"], tensors["subcentroids"], tensors["features"], header["class_names"],
                          tensors["inertia"], header.get("meta", {}))


# ----------------------------------------------------------------------------- the authors' released bank
def _bank_error(path: Path, what: str) -> MemoryFileError:
    return MemoryFileError(f"{path}: {what}")


def load_released_bank(path: str | Path, label2idx: str | Path | None = None, class_names: list[str] | None = None,
                       dim: int | None = None, device: torch.device | str = "cpu",
                       drop_background: bool = False) -> SemanticMemory:
    """DDESeg's released audio memory bank as a ``SemanticMemory`` in the released layout.

    The file (``aud_memory/1s_k5_feabank.npy``) holds [C, m, d]: for each class, in the order of
    ``label2idx.json`` (1-indexed, ``background`` = 1 first), m HTS-AT features (d = 768). The
    authors' code (``models/aud_enhancer.py``) takes each class's centre as the mean over m and uses
    the m features as one flat bank, so the memory here has k = 1: ``features`` [C, 1, m, d],
    ``subcentroids`` [C, 1, d] and ``centroids`` [C, d] both that mean, ``inertia`` the summed
    squared distance of the m features to it (the ``released`` derivation variant reads this).

    ``label2idx``: the class list (default: ``label2idx.json`` beside the bank or one folder up).
    ``drop_background``: leave the background row out (the workbench's own memories have no
    background class). ``class_names``/``dim``: the model's, checked against the bank.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: memory bank not found (DDESeg's release: aud_memory/1s_k5_feabank.npy)")
    if label2idx is None:
        candidates = [path.parent / "label2idx.json", path.parent.parent / "label2idx.json"]
        label2idx = next((c for c in candidates if c.is_file()), None)
        if label2idx is None:
            raise MemoryFileError(f"{path}: no label2idx.json beside it or one folder up ({', '.join(map(str, candidates))}); "
                                  "pass label2idx=PATH (DDESeg's repository has it at its root)")
    label2idx = Path(label2idx)
    try:
        mapping = json.loads(label2idx.read_text())
    except (OSError, ValueError) as error:
        raise MemoryFileError(f"{label2idx}: cannot be read as JSON ({type(error).__name__}: {error})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise MemoryFileError(f"{label2idx}: expected a JSON object of class name -> 1-based index")
    indices = sorted(mapping.values())
    if indices != list(range(1, len(mapping) + 1)):
        raise MemoryFileError(f"{label2idx}: indices must be 1..{len(mapping)} without gaps or repeats "
                              f"(got {indices[:3]}...{indices[-3:]})")
    names = [name for name, _ in sorted(mapping.items(), key=lambda item: item[1])]
    if names[0] != "background":
        raise MemoryFileError(f"{label2idx}: index 1 is {names[0]!r}; the released bank puts 'background' first")
    try:
        bank = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise MemoryFileError(f"{path}: not a readable .npy array ({type(error).__name__}: {error})") from None
    if bank.ndim != 3:
        raise _bank_error(path, f"expected [classes, m, dim], got shape {bank.shape}")
    if bank.shape[0] != len(names):
        raise _bank_error(path, f"{bank.shape[0]} class rows but {label2idx} lists {len(names)} classes; "
                                "use the label2idx.json released with this bank")
    if not np.isfinite(bank).all():
        raise _bank_error(path, "holds NaN or infinite values; download it again")
    if drop_background:
        bank, names = bank[1:], names[1:]
    if dim is not None and bank.shape[2] != dim:
        raise _bank_error(path, f"features are {bank.shape[2]}-d but the model expects {dim}-d (the released bank "
                                "holds HTS-AT features: train with audio_dim=768 on HTS-AT embeddings)")
    if class_names is not None and list(class_names) != names:
        missing, extra = sorted(set(class_names) - set(names)), sorted(set(names) - set(class_names))
        hint = " (only 'background' differs: pass drop_background=True)" if extra == ["background"] and not missing else ""
        raise _bank_error(path, f"its classes do not match the model's: missing {missing}, extra {extra}"
                                f"{', or another order' if not missing and not extra else ''}{hint}")
    features = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)).to(device)  # [C, m, d]
    centroids = features.mean(1)  # aud_enhancer.py: fea_bank.mean(dim=1)
    inertia = (features - centroids[:, None]).pow(2).sum((1, 2))
    meta = {"encoder": "released-bank", "source": str(path), "label2idx": str(label2idx), "layout": "released",
            "drop_background": drop_background}
    return SemanticMemory(centroids, centroids[:, None].clone(), features[:, None].contiguous(), names, inertia, meta)


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
        note_rebuild(path, root)
    s4 = AVSDataset(root, "s4", "train")
    features = frame_embeddings(s4, encoder, encoder_id, cache_dir, progress)
    records, sources = s4.records, load_sources(root, "s4")
    if sources:
        single = np.array([sum(sounds_in(s, r.frame) for s in sources[r.clip]["sources"]) == 1 for r in records])
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
