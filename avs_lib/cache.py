"""An on-disk cache of embeddings, keyed by a hash of the inputs and of the encoder.

``EmbeddingCache(root).get_or_compute(encoder_id, inputs, compute)`` returns the cached array for
(encoder_id, inputs) or calls ``compute()`` once and stores its result. ``encoder_id`` must change
whenever the encoder's weights or settings change (e.g. include a checkpoint hash); ``inputs`` is
any array (a waveform, a batch) whose bytes, dtype and shape form the key.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from avs_lib.files import atomic_write


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
