"""How good is a world's frozen audio encoder? Measurements that only a world with known sources allows.

* ``nearest_centroid``: accuracy of the nearest class centroid (Eq. 2) on single-source frames,
  with a bootstrap 95 % interval over clips (the frames of one clip share a recording, so clips,
  not frames, are the independent units), split into seen and held-out members.
* ``mixture_recall``: for multi-source frames, the share of the truly sounding classes among the K
  nearest centroids (derivation's Eq. 5 candidates), beside the same share among the encoder's own
  top-K class logits (the ceiling: what the encoder knows about the mixture), and the same two for
  the sources whose member was held out of training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avs_lib.analysis.stats import bootstrap_ci
from avs_lib.analysis.truth import class_roles, sounds_in
from avs_lib.audio.clips import frame_log_mels
from avs_lib.audio.embed import HEADER
from avs_lib.audio.encoders import PrecomputedEmbeddings
from avs_lib.core.errors import DataError
from avs_lib.core.files import read_json
from avs_lib.data.datasets import AVSDataset, layout_records, load_sources, world_classes


@dataclass
class FrameAudio:
    """The frames of one subset/split with their log-mels and true sounding sources."""

    log_mels: np.ndarray  # [N, 96, 64]
    clips: list[str]
    frames: list[int]
    sounding: list[list[tuple[int, str]]]  # per frame: (class index, member) of every sounding source
    dataset: AVSDataset


def frame_audio(root: str | Path, layout: str, split: str, progress: bool = False) -> FrameAudio:

    dataset = AVSDataset(root, layout, split)
    sources = load_sources(root, layout)
    sounding = [[(s["class_index"], s["member"]) for s in sources[r.clip]["sources"] if sounds_in(s, r.frame)]
                for r in dataset.records]
    return FrameAudio(frame_log_mels(dataset, progress), [r.clip for r in dataset.records],
                      [r.frame for r in dataset.records], sounding, dataset)


@torch.no_grad()
def encode(encoder, log_mels: np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeddings [N, d], class logits [N, C] or None when the encoder has no head)."""
    embeddings, logits = [], []
    encoder.eval()
    for i in range(0, len(log_mels), batch_size):
        e = encoder(torch.from_numpy(log_mels[i:i + batch_size]))
        embeddings.append(e)
        if hasattr(encoder, "logits"):
            logits.append(encoder.logits(e))
    return torch.cat(embeddings), (torch.cat(logits) if logits else None)


def nearest_centroid(embeddings: torch.Tensor, audio: FrameAudio, centroids: torch.Tensor,
                     heldout: set[str] = frozenset()) -> dict:
    """Nearest-centroid accuracy on single-source frames (each frame's one sounding class)."""
    keep = [i for i, s in enumerate(audio.sounding) if len(s) == 1]
    truth = np.array([audio.sounding[i][0][0] for i in keep])
    predicted = torch.cdist(embeddings[keep], centroids).argmin(1).numpy()
    correct = (predicted == truth).astype(float)
    clips = [audio.clips[i] for i in keep]
    held = np.array([audio.sounding[i][0][1] in heldout for i in keep])
    out = {"accuracy": float(correct.mean()), "ci95": bootstrap_ci(correct, clips), "frames": len(keep),
           "clips": len(set(clips)), "multi_source_frames_left_out": len(audio.sounding) - len(keep)}
    if held.any():
        out["accuracy_seen_members"] = float(correct[~held].mean())
        out["accuracy_heldout_members"] = float(correct[held].mean())
        out["heldout_frames"] = int(held.sum())
    return out


def mixture_recall(embeddings: torch.Tensor, logits: torch.Tensor | None, audio: FrameAudio, centroids: torch.Tensor,
                   k: int = 5, heldout: set[str] = frozenset()) -> dict:
    """Recall@K of the sounding classes by nearest centroid and by the encoder's top-K logits."""
    by_centroid = torch.cdist(embeddings, centroids).topk(k, largest=False).indices.tolist()
    by_logit = logits.topk(k).indices.tolist() if logits is not None else None
    rows = {"centroid": [], "logit": [], "centroid_heldout": [], "logit_heldout": []}
    for i, sources in enumerate(audio.sounding):
        truth = {c for c, _ in sources}
        if not truth:
            continue
        rows["centroid"].append(len(truth & set(by_centroid[i])) / len(truth))
        if by_logit is not None:
            rows["logit"].append(len(truth & set(by_logit[i])) / len(truth))
        for c, member in sources:  # held-out members: per source, was its class among the K?
            if member in heldout:
                rows["centroid_heldout"].append(float(c in by_centroid[i]))
                if by_logit is not None:
                    rows["logit_heldout"].append(float(c in by_logit[i]))
    n_classes = centroids.shape[0]
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"K": k, "recall": mean(rows["centroid"]), "ceiling_logit_recall": mean(rows["logit"]),
            "chance": k / n_classes, "frames": len(rows["centroid"]),
            "recall_heldout_sources": mean(rows["centroid_heldout"]),
            "ceiling_heldout_sources": mean(rows["logit_heldout"]), "heldout_sources": len(rows["centroid_heldout"])}


def recall_curve(embeddings: torch.Tensor, logits: torch.Tensor | None, audio: FrameAudio,
                 centroids: torch.Tensor) -> list[dict]:
    """``mixture_recall`` for every K from 1 to the number of classes."""
    return [mixture_recall(embeddings, logits, audio, centroids, k) for k in range(1, centroids.shape[0] + 1)]


def centre_basis(centroids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], axes [2, d]): the 2-D PCA of the class centres, fixed for an explorer."""
    x = centroids.double().numpy()
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2]


def token_view(derivation, frames, index: int, k: int, class_names: list[str], basis=None) -> dict:
    """Everything the token map of notebook 02 draws for frame ``index`` at K = ``k``: 2-D positions
    of the class centres, F_a and each token before/after enhancement; each token's class, distance
    (Eq. 5), fusion weight (Eq. 6) and nearest class; every class's role; the true sounding classes
    that were not derived ("missed"), with their distance."""
    mean, axes = basis if basis is not None else centre_basis(derivation.centroids)
    project = lambda t: (np.asarray(t, dtype=np.float64) - mean) @ axes.T  # noqa: E731
    audio = frames.audio[index:index + 1]
    with torch.no_grad():  # K is a what-if on a model trained at its own num_tokens (an argument, not a mutation)
        out = derivation(audio, num_tokens=k)
    classes = out.class_indices[0].tolist()
    final = out.tokens[0]
    token_nearest = torch.cdist(final.float(), derivation.centroids.float()).argmin(1).tolist()
    roles = class_roles(frames.sources.get(frames.clips[index]), len(class_names), frames.frames[index])
    all_distances = torch.cdist(audio.float(), derivation.centroids.float())[0]
    missed = [(c, float(all_distances[c])) for c, r in enumerate(roles)
              if r in ("on screen", "off screen") and c not in classes]
    return {"clip": frames.clips[index], "frame": frames.frames[index], "K": k, "class_names": list(class_names),
            "centres_xy": project(derivation.centroids.numpy()), "fa_xy": project(audio.numpy())[0],
            "derived_xy": project(out.derived[0].numpy()),
            "enhanced_xy": project(final.numpy()) if out.scale_offsets is not None else None,
            "classes": classes, "distances": out.distances[0].tolist(), "weights": out.fusion_weights[0].tolist(),
            "token_nearest": token_nearest, "roles": roles, "missed": sorted(missed, key=lambda x: x[1])}


def logit_recall_curve(logits: torch.Tensor, frames) -> list[float]:
    """For K = 1..C: mean over frames of the share of sounding classes among the K highest logits
    (the encoder's own ceiling for derivation recall; ``frames`` is a ``FrameSet``)."""
    order = logits.argsort(dim=1, descending=True).tolist()
    truths = [{c for c, r in enumerate(class_roles(frames.sources.get(clip), logits.shape[1], frame))
               if r in ("on screen", "off screen")} for clip, frame in zip(frames.clips, frames.frames)]
    curve = []
    for k in range(1, logits.shape[1] + 1):
        values = [len(t & set(o[:k])) / len(t) for t, o in zip(truths, order) if t]
        curve.append(float(np.mean(values)))
    return curve


# ----------------------------------------------------------------------------- how good are the embeddings?
def split_clips(root: str | Path, layout: str, split: str) -> list[str]:
    return sorted({r.clip for r in layout_records(root, layout, split)})


def encoder_quality(root: str | Path, folder: str | Path, k: int = 5) -> dict:
    """For a composed world (known sources) and a folder of embeddings (``avs embed``): the Eq. 2
    centroids from the single-source s4 training frames, then nearest-centroid accuracy on the
    single-source s4 test frames and the recall at K of the sounding classes among the K nearest
    centroids on the MS3 test frames (derivation's Eq. 5 candidates), with ``avs_lib.audio.quality``.
    Needs the files of the s4 train/test and MS3 test clips."""
    embeddings = PrecomputedEmbeddings(folder)
    classes = world_classes(root)

    def frames(layout: str, split: str) -> tuple[torch.Tensor, FrameAudio]:
        dataset, sources = AVSDataset(root, layout, split), load_sources(root, layout)
        if not sources:
            raise DataError(f"{root}: no sources sidecar for {layout}; encoder_quality needs a composed world")
        rows = torch.from_numpy(np.stack([embeddings(r.clip)[r.frame] for r in dataset.records]))
        sounding = [[(s["class_index"], s["member"]) for s in sources[r.clip]["sources"] if sounds_in(s, r.frame)]
                    for r in dataset.records]
        return rows, FrameAudio(np.empty(0), [r.clip for r in dataset.records], [r.frame for r in dataset.records],
                                sounding, dataset)

    train_x, train = frames("s4", "train")
    single = [i for i, s in enumerate(train.sounding) if len(s) == 1]
    labels = torch.tensor([train.sounding[i][0][0] for i in single])
    counts = torch.bincount(labels, minlength=len(classes))
    if (counts == 0).any():
        raise DataError(f"classes without single-source s4 training frames: {[classes[c] for c in torch.where(counts == 0)[0]]}")
    centroids = torch.zeros(len(classes), train_x.shape[1]).index_add_(0, labels, train_x[single]) / counts[:, None]
    s4_x, s4 = frames("s4", "test")
    ms3_x, ms3 = frames("ms3", "test")
    header = read_json(Path(folder) / HEADER) if (Path(folder) / HEADER).exists() else {}
    return {"encoder": header.get("encoder"), "dim": int(train_x.shape[1]), "classes": len(classes),
            "centroid_frames": len(single), "s4_nearest_centroid": nearest_centroid(s4_x, s4, centroids),
            "ms3_recall": mixture_recall(ms3_x, None, ms3, centroids, k)}
