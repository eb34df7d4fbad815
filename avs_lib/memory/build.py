"""DDESeg's semantic memory (Step 1 of the Dynamic Derivation Module, Eq. 2-4).

From single-source audio features of each class c:

* Eq. 2: the class centroid mu^c, the mean of the class's features;
* Eq. 3: k-means partitions the class into k sub-clusters with centroids mu_j^c;
* Eq. 4: in each sub-cluster, the m features nearest its centroid are the class's
  discriminative features x_rep_j^c.

The k-means runs for all classes at once on padded [C, N_max, d] tensors, on the caller's device,
deterministically for a seed (k-means++ seeding from a ``torch.Generator``, best of ``n_init``
restarts by inertia).

Choices where the paper is silent (also in the README's notes):

* a sub-cluster with fewer than m members fills its m slots by repeating its members, nearest
  first (the paper assumes |C_j^c| >= m);
* a class with fewer than k features is an error naming the class, not a silent shrink of k.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avs_lib.core.files import atomic_write

MEMORY_FORMAT_VERSION = 2  # 2: the header names the format and holds a checksum of the arrays


@dataclass
class SemanticMemory:
    centroids: torch.Tensor  # [C, d]        Eq. 2
    subcentroids: torch.Tensor  # [C, k, d]  Eq. 3
    features: torch.Tensor  # [C, k, m, d]   Eq. 4, the discriminative features
    class_names: list[str]
    inertia: torch.Tensor  # [C] sum of squared distances to the assigned sub-centroid
    meta: dict = field(default_factory=dict)  # encoder, source-data hash, ...

    @property
    def k(self) -> int:
        return self.subcentroids.shape[1]

    @property
    def m(self) -> int:
        return self.features.shape[2]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def to(self, device: torch.device | str) -> "SemanticMemory":
        return SemanticMemory(self.centroids.to(device), self.subcentroids.to(device), self.features.to(device),
                              list(self.class_names), self.inertia.to(device), dict(self.meta))


# ----------------------------------------------------------------------------- batched k-means
def _squared_distances(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """[C, N, d] x [C, k, d] -> [C, N, k]; ``x_sq`` [C, N, 1] (the rows' squared norms) when known."""
    x_sq = x.pow(2).sum(-1, keepdim=True) if x_sq is None else x_sq
    return (x_sq - 2 * x @ centres.transpose(1, 2) + centres.pow(2).sum(-1).unsqueeze(1)).clamp_min(0)


def _kmeans_plus_plus(x: torch.Tensor, valid: torch.Tensor, k: int, generator: torch.Generator,
                      x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """k-means++ seeding per class: each new centre drawn with probability proportional to D^2."""
    C, N, d = x.shape
    batch = torch.arange(C, device=x.device)
    weights = valid.float()
    first = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(x.device)
    centres = [x[batch, first]]
    closest = _squared_distances(x, centres[0].unsqueeze(1), x_sq).squeeze(-1)
    for _ in range(1, k):
        probs = (closest * valid).cpu()
        # all-duplicate classes have zero D^2 everywhere: fall back to uniform over valid rows
        probs = torch.where(probs.sum(1, keepdim=True) > 0, probs, weights.cpu())
        pick = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(x.device)
        centres.append(x[batch, pick])
        closest = torch.minimum(closest, _squared_distances(x, centres[-1].unsqueeze(1), x_sq).squeeze(-1))
    return torch.stack(centres, dim=1)


CHUNK_BYTES = 1 << 25  # classes are clustered in groups of about this many bytes of features


def batched_kmeans(x: torch.Tensor, valid: torch.Tensor, k: int, seed: int = 0, n_init: int = 4,
                   max_iter: int = 100, tol: float = 1e-4, chunk_bytes: int = CHUNK_BYTES
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on every class at once, in groups of classes.

    x [C, N, d] (rows beyond a class's count are padding), valid [C, N] bool.
    Returns centres [C, k, d], assignment [C, N] (-1 on padding) and inertia [C].

    A restart stops when no class of its group changes an assignment, or when every class's summed
    squared centre shift is at most ``tol`` times its mean per-dimension variance (scikit-learn's
    rule). Why groups: Lloyd's iterations read all features twice and are bound by memory
    bandwidth; a group of ~``chunk_bytes`` stays in the CPU's cache, and a group stops at its own
    slowest class instead of the slowest of all C. The grouping depends only on the shapes, so a CPU
    and a GPU draw the same random numbers. One generator runs through the groups in order.
    """
    generator = torch.Generator().manual_seed(seed)
    per_class = x.shape[1] * x.shape[2] * x.element_size()
    step = max(1, chunk_bytes // max(per_class, 1))
    parts = [_kmeans_group(x[i:i + step], valid[i:i + step], k, generator, n_init, max_iter, tol)
             for i in range(0, x.shape[0], step)]
    return tuple(torch.cat(p) for p in zip(*parts))


def _kmeans_group(x: torch.Tensor, valid: torch.Tensor, k: int, generator: torch.Generator, n_init: int,
                  max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batched_kmeans`` on one group of classes. The rows' squared norms are computed once:
    recomputing them each iteration cost more than the distance product itself on a CPU."""
    C = x.shape[0]
    best_centres, best_assign, best_inertia = None, None, torch.full((C,), float("inf"), device=x.device, dtype=x.dtype)
    valid_f = valid.to(x.dtype)
    x_sq = x.pow(2).sum(-1, keepdim=True)  # [C, N, 1]
    counts_all = valid_f.sum(1).clamp_min(1)  # [C]
    mean = (x * valid_f.unsqueeze(-1)).sum(1) / counts_all.unsqueeze(-1)
    variance = ((x_sq.squeeze(-1) * valid_f).sum(1) / counts_all - mean.pow(2).sum(-1)).clamp_min(0) / x.shape[-1]
    threshold = tol * variance  # [C]
    for _ in range(n_init):
        centres = _kmeans_plus_plus(x, valid, k, generator, x_sq)
        assign = None
        for _ in range(max_iter):
            new_assign = _squared_distances(x, centres, x_sq).argmin(-1)  # [C, N]
            if assign is not None and bool(((new_assign == assign) | ~valid).all()):
                break  # a fixed point: the centres are the means of these assignments
            assign = new_assign
            one_hot = torch.nn.functional.one_hot(assign, k).to(x.dtype) * valid_f.unsqueeze(-1)  # [C, N, k]
            counts = one_hot.sum(1)  # [C, k]
            sums = one_hot.transpose(1, 2) @ x  # [C, k, d]
            # an empty cluster keeps its centre rather than collapsing to zero
            new = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1).unsqueeze(-1), centres)
            shift = (new - centres).pow(2).sum((1, 2))  # [C]
            centres = new
            if bool((shift <= threshold).all()):
                break
        distances = _squared_distances(x, centres, x_sq)
        assign = distances.argmin(-1)
        inertia = (distances.min(-1).values * valid_f).sum(1)
        better = inertia < best_inertia
        if best_centres is None:
            best_centres, best_assign = centres.clone(), assign.clone()
        best_centres[better], best_assign[better] = centres[better], assign[better]
        best_inertia = torch.where(better, inertia, best_inertia)
    best_assign = torch.where(valid, best_assign, torch.full_like(best_assign, -1))
    return best_centres, best_assign, best_inertia


# ----------------------------------------------------------------------------- the memory
def source_hash(features: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(features.detach().cpu().float().numpy().tobytes())
    digest.update(labels.detach().cpu().long().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_semantic_memory(features: torch.Tensor, labels: torch.Tensor, k: int, m: int, seed: int = 0,
                          class_names: list[str] | None = None, n_init: int = 4, encoder: str = "unknown") -> SemanticMemory:
    """Eq. 2-4 from single-source features [N, d] and class labels [N] in 0..C-1."""
    features = features.float()
    labels = labels.long().to(features.device)
    n_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
    class_names = class_names or [f"class_{c}" for c in range(n_classes)]
    counts = torch.bincount(labels, minlength=n_classes)
    short = [f"{class_names[c]} ({int(counts[c])})" for c in range(n_classes) if counts[c] < k]
    if short:
        raise ValueError(f"k={k} sub-clusters need at least {k} features per class; too few for: {', '.join(short)}")
    d = features.shape[1]
    n_max = int(counts.max())
    # Pad each class's features into one [C, N_max, d] tensor, in their original order.
    order = torch.argsort(labels, stable=True)
    position = torch.arange(len(labels), device=features.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    padded = features.new_zeros(n_classes, n_max, d)
    valid = torch.zeros(n_classes, n_max, dtype=torch.bool, device=features.device)
    padded[labels[order], position] = features[order]
    valid[labels[order], position] = True

    centroids = (padded * valid.unsqueeze(-1)).sum(1) / counts.unsqueeze(-1).to(features.dtype)  # Eq. 2, [C, d]
    subcentroids, assign, inertia = batched_kmeans(padded, valid, k, seed=seed, n_init=n_init)  # Eq. 3

    # Eq. 4: the m members of each sub-cluster nearest its centroid.
    distances = _squared_distances(padded, subcentroids).sqrt()  # [C, N, k]
    member = assign.unsqueeze(-1) == torch.arange(k, device=features.device)  # [C, N, k]
    masked = torch.where(member, distances, torch.full_like(distances, float("inf")))
    sorted_dist, sorted_index = masked.sort(dim=1)  # nearest first along N
    size = member.sum(1)  # [C, k]
    slots = torch.arange(m, device=features.device)
    # slots beyond a small cluster's size repeat its members, nearest first
    take = slots.view(1, m, 1) % size.clamp_min(1).unsqueeze(1)  # [C, m, k]
    chosen = torch.gather(sorted_index, 1, take)  # [C, m, k]
    batch = torch.arange(n_classes, device=features.device).view(-1, 1, 1)
    discriminative = padded[batch, chosen].permute(0, 2, 1, 3).contiguous()  # [C, k, m, d]
    meta = {"encoder": encoder, "source_hash": source_hash(features, labels), "seed": seed, "n_init": n_init,
            "counts": counts.tolist()}
    return SemanticMemory(centroids, subcentroids, discriminative, list(class_names), inertia, meta)


# ----------------------------------------------------------------------------- file format
MEMORY_FORMAT = "avs-semantic-memory"
MEMORY_ARRAYS = ("centroids", "subcentroids", "features", "inertia")


class MemoryFileError(ValueError):
    """A memory file that cannot be used; the message names it and says how to rebuild it."""


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
