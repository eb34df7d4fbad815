"""DDESeg Fig. 6 on any model: the audio representation a model carries into its last stage,
2-D maps of it (t-SNE, UMAP), and a linear probe that asks how well it names the class.

The representation of a frame is the mean of the audio tokens entering the last stage (the
projected F_a for the baseline). Under DDESeg's default ``elimination_apply="log_bias"`` those are
the enhanced tokens, unscaled (elimination acts on the fusion's attention logits); under
``"scale"`` they are multiplied by the scores S, which can make them tiny without removing
information. Every feature is standardised before the maps and the probe, so that neither depends
on scale.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from avs_lib.models.hooks import run_with_cache


def last_stage_representation(model, frames, batch_size: int = 64) -> np.ndarray:
    """[N, d]: per frame, the mean of the audio tokens that enter the model's last stage
    (``stage4.audio``, one ``run_with_cache`` pass)."""
    cache = run_with_cache(model, frames, names=["stage4.audio"], batch_size=batch_size)
    return cache["stage4.audio"].mean(dim=1).float().numpy()


def class_labels(frames, class_names: list[str]) -> np.ndarray:
    """[N] class index of each single-source frame (its category)."""
    return np.array([class_names.index(c) for c in frames.categories])


def linear_probe_f1(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Macro-F1 on the test set of a logistic regression fitted on standardised training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
    return float(f1_score(test_y, probe.predict(test_x), average="macro"))


def maps_2d(features: dict[str, np.ndarray], perplexity: float, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{"t-SNE": {name: [N, 2]}, "UMAP": {...}} of standardised features (openTSNE, umap-learn)."""
    from openTSNE import TSNE
    from sklearn.preprocessing import StandardScaler
    from umap import UMAP

    scaled = {name: StandardScaler().fit_transform(f) for name, f in features.items()}
    tsne = {n: np.asarray(TSNE(perplexity=perplexity, random_state=seed).fit(f)) for n, f in scaled.items()}
    with warnings.catch_warnings():
        # a seeded UMAP runs on one thread and says so on every call; the seed is the point here
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
        umap = {n: UMAP(random_state=seed, n_jobs=1).fit_transform(f) for n, f in scaled.items()}
    return {"t-SNE": tsne, "UMAP": umap}
