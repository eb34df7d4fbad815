"""An on-disk cache of embeddings, keyed by a hash of the inputs and of the encoder.

``EmbeddingCache(root).get_or_compute(encoder_id, inputs, compute)`` returns the cached array for
(encoder_id, inputs) or calls ``compute()`` once and stores its result. ``encoder_id`` must change
whenever the encoder's weights or settings change (e.g. include a checkpoint hash); ``inputs`` is
any array (a waveform, a batch) whose bytes, dtype and shape form the key.

``data_identity(root)`` names what a dataset root holds (a hash of its ``world.json`` and metadata
tables): derived files that are keyed by a name rather than by their inputs' bytes (a memory, the
per-clip embeddings of a cache folder, an encoder trained on the S4 clips) record it and are rebuilt
when it changes, so a world rebuilt in place never trains on the old world's derived files.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from avs_lib.core.files import atomic_write

# What a dataset root is made of, relative to it: a composed world's configuration and the metadata
# tables (and true-source sidecars) of every layout, at a world's root and under its AVSS/ and VPO/.
IDENTITY_FILES = ("world.json", "Single-source/s4_meta_data.csv", "Single-source/s4_sources.jsonl",
                  "Multi-sources/ms3_meta_data.csv", "Multi-sources/ms3_sources.jsonl", "metadata.csv",
                  "metadata_w_silent.csv", "sources.jsonl", "label2idx.json", "AVSS/metadata.csv",
                  "AVSS/sources.jsonl", "AVSS/label2idx.json", *(f"{folder}vpo_{subset}_{kind}"
                  for folder in ("", "VPO/") for subset in ("ss", "ms", "msmi")
                  for kind in ("data_stereo.csv", "sources.jsonl")))


def data_identity(root: str | Path) -> str:
    """SHA-256 (16 hex digits) over the names and bytes of the ``IDENTITY_FILES`` under ``root`` that
    exist. A composed world is a function of its world.json; the tables cover a dataset without one
    (AVSBench) and a table edited by hand. Media files are not read: that would cost a full pass."""
    root = Path(root)
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        path = root / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def array_key(encoder_id: str, inputs: np.ndarray) -> str:
    arr = np.ascontiguousarray(inputs)
    digest = hashlib.sha256()
    digest.update(encoder_id.encode())
    digest.update(str(arr.dtype).encode())
    digest.update(str(arr.shape).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get_or_compute(self, encoder_id: str, inputs: np.ndarray, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.path(array_key(encoder_id, inputs))
        if path.exists():
            try:
                value = np.load(path, allow_pickle=False)
                self.hits += 1
                return value
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn write from a killed run: recompute
        self.misses += 1
        value = np.asarray(compute())
        atomic_write(path, lambda fh: np.save(fh, value, allow_pickle=False))
        return value


def note_rebuild(path: Path, root: str | Path) -> None:
    """Say, in one line, that a cache file built from other data is rebuilt (it is overwritten atomically)."""
    print(f"note: {path} was built from another version of {root} (its world.json or metadata tables changed since); "
          "building it again", file=sys.stderr, flush=True)
