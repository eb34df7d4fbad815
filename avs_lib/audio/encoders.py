"""Audio encoders: one F_a per 1 s frame.

* ``SmallAudioEncoder``: a 4-block CNN over one 0.96 s VGGish log-mel example, then frozen. For a
  composed world it is pretrained on the world's stream of mixtures (``avs_lib.audio.pretrain``); for a
  dataset without the world's asset library (AVSBench) it is trained on the S4 training clips. It plays the role of
  the paper's "pre-trained foundation model" in the default world, where no real checkpoint exists.
* ``VGGish``: the architecture of torchvggish; ``load_vggish(path)`` reads a local
  ``vggish-10086976.pth``-style state dict (keys ``features.N``/``embeddings.N``), strictly.
  Output: the 128-d embedding before PCA post-processing (pass ``pca_path`` to a
  ``vggish_pca_params-*.pth`` file to apply the PCA rotation; the 8-bit quantisation is not applied).
* HTS-AT: ``load_htsat(path)`` reads an ``HTSAT_AudioSet_Saved_*.ckpt`` into ``avs_lib.audio.htsat.HTSAT``
  (a 28M-parameter Swin audio transformer over the raw waveform; ``avs embed --encoder htsat:PATH``).
* ``PrecomputedEmbeddings``: embeddings computed elsewhere, one ``{clip}.npy`` or ``{clip}.pkl`` per
  clip holding [T, d] (one row per frame).
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avs_lib.audio.htsat import load_htsat as _load_htsat
from avs_lib.core.errors import CheckpointError
from avs_lib.core.files import atomic_write
from avs_lib.models.weights import load_weights
from avs_lib.training.checkpoints import content_checksum, read_torch_file


class SmallAudioEncoder(nn.Module):
    """log-mel [B, 96, 64] -> embedding [B, dim]; ``classify`` adds the training head.

    ``channels``: the conv widths of the 4 blocks (default ``(w, 2w, 4w, 4w)`` for ``width`` w).
    ``normalise=True`` (the pretrained encoder): the embedding is L2-normalised and the head is a
    cosine classifier (``scale * cos(e, w_c) + b_c``), so classes sit as directions on the sphere and
    Euclidean distances between embeddings (Eq. 5's nearest centres) mean angles.
    """

    def __init__(self, dim: int = 128, num_classes: int = 12, width: int = 32, channels: tuple[int, ...] | None = None,
                 normalise: bool = False, scale: float = 16.0):
        super().__init__()
        channels = [1, *(channels or (width, width * 2, width * 4, width * 4))]
        layers = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.embedding = nn.Linear(channels[-1], dim)
        self.classifier = nn.Linear(dim, num_classes)
        self.dim = dim
        self.channels = tuple(channels[1:])
        self.normalise = normalise
        self.scale = scale

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        # per-example standardisation: loudness differences must not dominate the embedding
        x = log_mel[:, None]  # [B, 1, 96, 64]
        x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-5)
        x = self.features(x).mean(dim=(2, 3))  # [B, C]
        x = self.embedding(x)  # [B, dim]
        return F.normalize(x, dim=-1) if self.normalise else x

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class logits of embeddings from ``forward``."""
        if self.normalise:
            return self.scale * embedding @ F.normalize(self.classifier.weight, dim=-1).t() + self.classifier.bias
        return self.classifier(F.relu(embedding))

    def classify(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.logits(self(log_mel))

    def arch(self) -> dict:
        """What ``SmallAudioEncoder(**arch)`` needs to rebuild this network (saved with the weights)."""
        return {"dim": self.dim, "num_classes": self.classifier.out_features, "channels": list(self.channels),
                "normalise": self.normalise, "scale": self.scale}


def train_small_audio_encoder(examples: np.ndarray, labels: np.ndarray, num_classes: int, dim: int = 128,
                              epochs: int = 15, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                              device: str = "cpu", progress: bool = False) -> tuple[SmallAudioEncoder, list[dict]]:
    """Train on single-source examples [N, 96, 64] with class labels [N]; return the frozen encoder
    (eval mode, no gradients) and the per-epoch loss/accuracy history."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallAudioEncoder(dim, num_classes).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    x = torch.as_tensor(examples, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    history = []
    for epoch in tqdm(range(epochs), desc="audio encoder", disable=not progress):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            # a random time shift (shared by the batch); gain needs no augmentation: forward standardises
            # every example
            xb = torch.roll(xb, int(torch.randint(0, 96, (1,), generator=generator)), dims=1)
            logits = model.classify(xb)
            loss = F.cross_entropy(logits, yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        history.append({"epoch": epoch, "loss": total / len(x), "accuracy": correct / len(x)})
    model.eval().requires_grad_(False)
    return model, history


def save_audio_encoder(model: SmallAudioEncoder, path: str | Path, class_names: list[str], meta: dict | None = None) -> None:
    """One torch file with the weights, the architecture, the class names, ``meta`` and a checksum
    over all of them (``avs_lib.training.checkpoints.content_checksum``)."""
    state = {"state_dict": model.state_dict(), "dim": model.dim, "arch": model.arch(), "class_names": class_names,
             "meta": meta or {}}
    state["checksum"] = content_checksum(state)
    atomic_write(path, lambda fh: torch.save(state, fh))


def read_audio_encoder_file(path: str | Path, device: str = "cpu") -> dict:
    """The verified contents of a file of ``save_audio_encoder``. A missing, empty, truncated or
    damaged file is one ``CheckpointError`` naming it; these files are caches, so the way out is to
    delete it and let the command that wrote it write it again."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio encoder {path} does not exist; `avs pretrain-audio` (or `avs train`, notebook 01) writes it")
    advice = (f"delete {path} and run again: `avs train` (or `avs pretrain-audio`, notebook 01) trains the encoder "
              "again and caches it there")
    blob = read_torch_file(path, "cached audio encoder", advice, map_location=device)
    if not isinstance(blob, dict) or "state_dict" not in blob or "class_names" not in blob:
        raise CheckpointError(f"cached audio encoder {path} is not a file of save_audio_encoder; {advice}")
    # files written before the checksum existed are read with their structure checked only
    if "checksum" in blob and blob["checksum"] != content_checksum(blob):
        raise CheckpointError(f"cached audio encoder {path} fails its checksum (changed or damaged after it was "
                              f"written); {advice}")
    return blob


def load_audio_encoder(path: str | Path, device: str = "cpu") -> tuple[SmallAudioEncoder, list[str]]:
    """(frozen encoder, class names) from a file of ``save_audio_encoder``, verified."""
    blob = read_audio_encoder_file(path, device)
    return audio_encoder_from_blob(blob, device), blob["class_names"]


def audio_encoder_from_blob(blob: dict, device: str = "cpu") -> SmallAudioEncoder:
    """The frozen encoder held by the contents of a ``save_audio_encoder`` file."""
    # files written before the architecture was saved hold the default network
    arch = blob.get("arch") or {"dim": blob["dim"], "num_classes": len(blob["class_names"])}
    model = SmallAudioEncoder(**arch)
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- VGGish
class VGGish(nn.Module):
    """torchvggish's VGGish: log-mel [B, 96, 64] -> [B, 128]."""

    def __init__(self):
        super().__init__()
        cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]
        layers, c_in = [], 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))
        self.register_buffer("pca_eigen_vectors", torch.eye(128))
        self.register_buffer("pca_means", torch.zeros(128, 1))
        self.use_pca = False

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.features(log_mel[:, None])  # [B, 512, 6, 4]
        # the TF original flattens in (H, W, C) order; the weights expect that order
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        x = self.embeddings(x)  # [B, 128]
        if self.use_pca:
            x = (self.pca_eigen_vectors @ (x.t() - self.pca_means)).t()
        return x


def load_vggish(path: str | Path, pca_path: str | Path | None = None) -> VGGish:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGGish checkpoint {path} does not exist; download vggish-10086976.pth "
                                "(torchvggish release) and pass its local path")
    model = VGGish()
    # the PCA buffers are optional in the released file: they come from pca_path
    model.load_report = load_weights(model, path, new_markers=(".pca_",), what="VGGish checkpoint")
    if model.load_report.unexpected:
        raise ValueError(f"{path} is not a VGGish state dict: unexpected {model.load_report.unexpected[:6]}")
    if pca_path is not None:
        pca = torch.load(pca_path, map_location="cpu", weights_only=True)
        model.pca_eigen_vectors.copy_(torch.as_tensor(pca["pca_eigen_vectors"]).float())
        model.pca_means.copy_(torch.as_tensor(pca["pca_means"]).float().reshape(-1, 1))
        model.use_pca = True
    return model.eval()


def load_htsat(path: str | Path):
    """HTS-AT (``avs_lib.audio.htsat``) from a local ``HTSAT_AudioSet_Saved_*.ckpt``, loaded strictly."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"HTS-AT checkpoint {path} does not exist; download HTSAT_AudioSet_Saved_1.ckpt (the HTS-AT authors' "
            "release) and pass its local path, or train on embeddings computed elsewhere with "
            "audio_encoder=precomputed:DIR")
    return _load_htsat(path)


# ----------------------------------------------------------------------------- precomputed
class PrecomputedEmbeddings:
    """``root/{clip}.npy`` or ``root/{clip}.pkl`` with one [T, d] array (or tensor) per clip."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"embedding folder {self.root} does not exist")

    def __call__(self, clip: str) -> np.ndarray:
        for suffix in (".npy", ".pkl"):
            path = self.root / f"{clip}{suffix}"
            if path.exists():
                if suffix == ".npy":
                    array = np.load(path)
                else:
                    with open(path, "rb") as fh:
                        array = pickle.load(fh)
                array = np.asarray(array.numpy() if isinstance(array, torch.Tensor) else array, dtype=np.float32)
                if array.ndim != 2:
                    raise ValueError(f"{path}: expected [frames, dim], got shape {array.shape}")
                return array
        raise FileNotFoundError(f"no embedding for clip {clip!r} in {self.root} (looked for {clip}.npy and {clip}.pkl)")


def encoder_id(model: torch.nn.Module) -> str:
    buffer = io.BytesIO()
    for name, tensor in sorted(model.state_dict().items()):
        buffer.write(name.encode())
        buffer.write(tensor.detach().cpu().numpy().tobytes())
    return "small-" + hashlib.sha256(buffer.getvalue()).hexdigest()[:16]
