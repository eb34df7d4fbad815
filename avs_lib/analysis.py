"""Analyses only a world with known sources allows.

* ``derivation_recall``: do the K class centres that derivation picks (Eq. 5's neighbours) cover
  the classes that truly sound in the frame (on screen or off)? It depends on the frozen audio
  encoder, the memory and K, not on training.
* ``elimination_auc``: do the elimination scores separate tokens whose class is a sounding on-screen
  source from tokens whose class only sounds off-screen? ROC AUC over all such tokens.
* ``true_classes``: the per-frame ground truth both use.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from avs_lib.features import FrameSet
from avs_lib.models.derivation import nearest_centres
from avs_lib.data.transforms import normalise_images


def true_classes(frames: FrameSet, index: int) -> tuple[set[int], set[int]]:
    """(classes sounding on screen, classes sounding only off screen) in frame ``index``."""
    record = frames.sources.get(frames.clips[index])
    if record is None:
        raise ValueError(f"clip {frames.clips[index]} has no sources record (real datasets do not know their sources)")
    on = {s["class_index"] for s in record["sources"] if s["sounding"] and s["on_screen"]}
    off = {s["class_index"] for s in record["sources"] if s["sounding"] and not s["on_screen"]} - on
    return on, off


def derivation_recall(frames: FrameSet, centroids: torch.Tensor, k: int) -> dict:
    """Mean over frames of |top-K classes & sounding classes| / |sounding classes|, overall and for
    on-screen / off-screen sources separately."""
    indices, _ = nearest_centres(frames.audio, centroids, k)
    overall, on_recall, off_recall = [], [], []
    for i in range(len(frames)):
        on, off = true_classes(frames, i)
        chosen = set(indices[i].tolist())
        if on | off:
            overall.append(len(chosen & (on | off)) / len(on | off))
        if on:
            on_recall.append(len(chosen & on) / len(on))
        if off:
            off_recall.append(len(chosen & off) / len(off))
    return {"K": k, "recall": float(np.mean(overall)), "recall_on_screen": float(np.mean(on_recall)),
            "recall_off_screen": float(np.mean(off_recall)) if off_recall else None, "frames": len(overall)}


@torch.no_grad()
def token_scores(model, frames: FrameSet, device: str = "cpu", batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(class indices [N, K], cumulative elimination scores [N, K]) of a DDESeg model in eval mode."""
    model.eval()
    classes, scores = [], []
    for start in range(0, len(frames), batch_size):
        out = model(normalise_images(frames.images[start:start + batch_size].to(device)),
                    frames.audio[start:start + batch_size].to(device))
        if out.derivation is None or out.scores is None:
            raise ValueError("the model has no derivation or no elimination: nothing to score")
        classes.append(out.derivation.class_indices.cpu())
        scores.append(out.scores.float().cpu())
    return torch.cat(classes), torch.cat(scores)


def elimination_auc(model, frames: FrameSet, device: str = "cpu") -> dict:
    """ROC AUC of the scores: positives are tokens of on-screen sounding classes, negatives tokens of
    classes that sound only off screen. Tokens of silent classes are left out."""
    classes, scores = token_scores(model, frames, device)
    labels, values = [], []
    for i in range(len(frames)):
        on, off = true_classes(frames, i)
        for c, s in zip(classes[i].tolist(), scores[i].tolist()):
            if c in on or c in off:
                labels.append(int(c in on))
                values.append(s)
    labels, values = np.array(labels), np.array(values)
    auc = float(roc_auc_score(labels, values)) if 0 < labels.sum() < len(labels) else None
    return {"auc": auc, "positives": int(labels.sum()), "negatives": int((1 - labels).sum()),
            "labels": labels.tolist(), "scores": values.tolist()}
